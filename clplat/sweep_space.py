"""A W&B sweep YAML read for the local runner (``clplat.sweep``): its parameters as Optuna
suggestions, its ``command`` as the exact argv a ``wandb agent`` would start, its metric as a key of
the run's ``results.json``.

Why a translation and not W&B's own controller: the local runner must work offline, resume from a
file and share one study across machines through any SQL database (Optuna's RDB storage). The
sweep file stays the one W&B reads; W&B's own validator (the ``sweeps`` package, the
``wandb[sweeps]`` extra) is run on it when installed.

Distributions with an Optuna equivalent map to it (so TPE models them natively); the others
(``q_log_uniform*``, ``normal``, ``log_normal``, ``beta`` and their ``q_`` forms, ``categorical``
with ``probabilities``) are sampled as a latent ``u ~ U(0, 1)`` mapped through the distribution's
inverse CDF, exactly as W&B's own ``HyperParameter.ppf`` does.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clplat.errors import UserError

METHODS = ("grid", "random", "bayes")
NATIVE = {"constant", "categorical", "int_uniform", "uniform", "log_uniform", "log_uniform_values",
          "inv_log_uniform", "inv_log_uniform_values"}
LATENT = {"q_uniform", "q_log_uniform", "q_log_uniform_values", "normal", "q_normal", "log_normal",
          "q_log_normal", "beta", "q_beta", "categorical_w_probabilities"}
DISTRIBUTIONS = sorted(NATIVE | LATENT - {"categorical_w_probabilities"})
DEFAULTS = {"mu": 0.0, "sigma": 1.0, "q": 1, "a": 1.0, "b": 1.0}
RUN_MODULE = "clplat.run"


@dataclass
class Param:
    """One sweep parameter: its dotted config key, W&B distribution and that distribution's fields."""

    name: str
    dist: str
    spec: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.spec.get(key, DEFAULTS.get(key))

    @property
    def latent(self) -> bool:
        return self.dist in LATENT

    def ppf(self, u: float) -> Any:
        """The value at quantile ``u`` (W&B's definition of each distribution)."""
        u = min(max(u, 1e-12), 1 - 1e-12)
        d, q = self.dist, self.get("q")
        if d == "categorical_w_probabilities":
            acc = 0.0
            for value, p in zip(self.spec["values"], self.spec["probabilities"], strict=True):
                acc += p
                if u < acc:
                    return value
            return self.spec["values"][-1]
        lo, hi = self.spec.get("min"), self.spec.get("max")
        if d == "q_uniform":
            r = lo + u * (hi - lo)
        elif d in ("q_log_uniform", "q_log_uniform_values"):
            a, b = (lo, hi) if d == "q_log_uniform" else (math.log(lo), math.log(hi))
            r = math.exp(a + u * (b - a))
        elif d in ("normal", "q_normal"):
            r = statistics.NormalDist(self.get("mu"), self.get("sigma")).inv_cdf(u)
        elif d in ("log_normal", "q_log_normal"):
            r = math.exp(statistics.NormalDist(self.get("mu"), self.get("sigma")).inv_cdf(u))
        else:  # beta, q_beta
            try:
                from scipy import stats
            except ModuleNotFoundError:
                raise UserError(f"sweep parameter {self.name}: distribution {d} needs scipy installed") from None
            r = float(stats.beta.ppf(u, a=self.get("a"), b=self.get("b")))
        if d.startswith("q_"):
            r = round(r / q) * q
            return int(r) if isinstance(q, int) else float(r)
        return float(r)

    def grid_values(self) -> list[Any]:
        if self.dist == "constant":
            return [self.spec["value"]]
        if self.dist == "categorical":
            return list(self.spec["values"])
        if self.dist == "int_uniform":
            return list(range(int(self.spec["min"]), int(self.spec["max"]) + 1))
        if self.dist == "q_uniform":
            q, lo, hi = self.get("q"), self.spec["min"], self.spec["max"]
            n = math.floor((hi - lo) / q + 1e-9)
            return [lo + i * q for i in range(n + 1)]
        raise UserError(f"sweep parameter {self.name}: method grid needs 'values' (or int_uniform / "
                        f"q_uniform), not distribution {self.dist}")

    def probe_values(self) -> list[Any]:
        """Values checked against the config schema before any trial starts (ends of ranges)."""
        if self.dist in ("constant", "categorical", "categorical_w_probabilities"):
            return list(self.spec.get("values", [self.spec.get("value")]))
        if self.dist == "int_uniform":
            return [int(self.spec["min"]), int(self.spec["max"])]
        if self.dist in NATIVE:
            lo, hi = self.bounds()
            return [lo, hi]
        return [self.ppf(0.01), self.ppf(0.5), self.ppf(0.99)]

    def bounds(self) -> tuple[float, float]:
        """Value range of a native float distribution (log_uniform's min/max are exponents)."""
        lo, hi = float(self.spec["min"]), float(self.spec["max"])
        if self.dist == "log_uniform":
            return math.exp(lo), math.exp(hi)
        if self.dist == "inv_log_uniform":  # exp(-U(min, max))
            return math.exp(-hi), math.exp(-lo)
        return lo, hi

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter in an Optuna trial; returns the value the run gets."""
        d = self.dist
        if d == "constant":
            return self.spec["value"]
        if d == "categorical":
            return trial.suggest_categorical(self.name, list(self.spec["values"]))
        if d == "int_uniform":
            return trial.suggest_int(self.name, int(self.spec["min"]), int(self.spec["max"]))
        if d == "uniform":
            return trial.suggest_float(self.name, float(self.spec["min"]), float(self.spec["max"]))
        if d in NATIVE:  # the log-uniform family
            lo, hi = self.bounds()
            return trial.suggest_float(self.name, lo, hi, log=True)
        return self.ppf(trial.suggest_float(self.name, 0.0, 1.0))


def _infer(name: str, spec: dict[str, Any]) -> str:
    """W&B's rules for a parameter without ``distribution``."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "min" in spec and "max" in spec:
        ints = isinstance(spec["min"], int) and isinstance(spec["max"], int)
        return "int_uniform" if ints else "uniform"
    raise UserError(f"sweep parameter {name}: needs value, values, or min/max (or a distribution)")


def parse_param(name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise UserError(f"sweep parameter {name}: must be a mapping (value:, values:, min:/max:, distribution:)")
    if "parameters" in spec:
        raise UserError(f"sweep parameter {name}: nested parameters are not supported; use dotted keys "
                        f"('{name}.sub')")
    dist = spec.get("distribution")
    if dist is None:
        dist = _infer(name, spec)
    elif dist not in DISTRIBUTIONS:
        raise UserError(f"sweep parameter {name}: unknown distribution '{dist}' (known: {', '.join(DISTRIBUTIONS)})")
    if dist == "categorical" and "probabilities" in spec:
        dist = "categorical_w_probabilities"
    needs = {"constant": ("value",), "categorical": ("values",), "categorical_w_probabilities": ("values",)}
    for key in needs.get(dist, ("min", "max") if dist not in {"normal", "q_normal", "log_normal", "q_log_normal",
                                                               "beta", "q_beta"} else ()):
        if key not in spec:
            raise UserError(f"sweep parameter {name}: distribution {dist} needs '{key}'")
    if "min" in spec and "max" in spec and not spec["min"] < spec["max"]:
        raise UserError(f"sweep parameter {name}: min must be below max")
    if dist in {"log_uniform_values", "inv_log_uniform_values", "q_log_uniform_values"} and spec["min"] <= 0:
        raise UserError(f"sweep parameter {name}: {dist} needs min > 0")
    return Param(name, dist, dict(spec))


@dataclass
class Sweep:
    """A parsed sweep file."""

    path: Path
    raw: dict[str, Any]
    method: str
    params: list[Param]
    metric: str
    goal: str
    command: list[str]
    early_terminate: dict[str, Any] | None

    @property
    def direction(self) -> str:
        return "maximize" if self.goal == "maximize" else "minimize"

    def base_run(self) -> tuple[str, list[str]]:
        """(config file, fixed overrides) of the command: what every trial shares."""
        tokens = [t for t in self.command if not str(t).startswith("${")]
        if RUN_MODULE in tokens:
            tokens = tokens[tokens.index(RUN_MODULE) + 1:]
        config = [t for t in tokens if "=" not in t and not t.startswith("-")]
        if not config:
            raise UserError(f"sweep {self.path}: its command names no experiment config after {RUN_MODULE}")
        return config[0], [t for t in tokens if "=" in t]


def wandb_violations(raw: dict[str, Any]) -> list[str] | None:
    """W&B's own schema check (package ``sweeps``, the ``wandb[sweeps]`` extra); None if absent."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sweeps
    except ModuleNotFoundError:
        return None
    return list(sweeps.schema_violations_from_proposed_config(raw))


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep YAML; every problem is one :class:`UserError` line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"sweep {p}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"sweep {p}: top level must be a mapping")
    method = raw.get("method")
    if method not in METHODS:
        raise UserError(f"sweep {p}: unknown method {method!r} (known: {', '.join(METHODS)})")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise UserError(f"sweep {p}: no parameters")
    parsed = [parse_param(str(k), v) for k, v in params.items()]
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or "name" not in metric:
        raise UserError(f"sweep {p}: metric.name is required (e.g. final/A_auc)")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise UserError(f"sweep {p}: metric.goal must be minimize or maximize, not {goal!r}")
    command = raw.get("command")
    if not isinstance(command, list) or "${args}" not in command and "${args_no_hyphens}" not in command:
        raise UserError(f"sweep {p}: command must be a list containing ${{args}} (e.g. [${{env}}, ${{interpreter}}, "
                        f"-m, {RUN_MODULE}, experiments/x.yaml, ${{args}}])")
    if RUN_MODULE not in [str(c) for c in command]:
        raise UserError(f"sweep {p}: command must run '-m {RUN_MODULE}'")
    violations = wandb_violations(raw)
    if violations:
        raise UserError(f"sweep {p}: W&B rejects it: {violations[0]}")
    et = raw.get("early_terminate")
    if et is not None and (not isinstance(et, dict) or et.get("type") != "hyperband"):
        raise UserError(f"sweep {p}: early_terminate type must be hyperband")
    return Sweep(p, raw, method, parsed, str(metric["name"]), goal, [str(c) for c in command], et)


def agent_argv(sweep: Sweep, values: dict[str, Any], json_file: Path | None = None) -> list[str]:
    """The argv ``wandb agent`` starts for a run with these parameter values, built by W&B's own
    code (``create_sweep_command`` / ``create_sweep_command_args``) and the agent's macro
    substitution. One difference: ``${interpreter}`` is this Python (the agent writes ``python``,
    whichever the PATH finds), so a virtual environment is respected."""
    import json

    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    args = {k: {"value": v} for k, v in values.items()}
    sweep_vars: dict[str, Any] = create_sweep_command_args({"args": args})
    sweep_vars["interpreter"] = [sys.executable]
    sweep_vars["program"] = [str(sweep.raw.get("program", ""))]
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(sweep_vars["args_json"][0] if "args_json" in sweep_vars else json.dumps(values))
        sweep_vars["args_json_file"] = [str(json_file)]
    if sys.platform != "win32":
        sweep_vars["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for c in create_sweep_command(list(sweep.command)):
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out
