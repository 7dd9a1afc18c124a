"""Typed experiment configs: YAML in, validated pydantic models out.

One YAML file per experiment; every value can be overridden on the command line as
``key.sub=value`` or ``--key.sub=value`` (the form a W&B sweep agent passes). Values are parsed
with ``yaml.safe_load`` (so ``3`` is an int and ``true`` a bool); nothing is ever ``eval``-ed.
Any problem becomes a :class:`UserError` naming the key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from clplat.data.base import DataConfig
from clplat.errors import UserError
from clplat.scenarios.plan import ScenarioConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OnlineConfig(_Section):
    stream_batch: int = Field(16, ge=1, description="new stream samples per step")
    online_iter: int = Field(3, ge=1, description="optimizer updates per incoming batch")
    eval_period: int = Field(100, ge=1, description="anytime eval every this many stream samples")
    eval_at_end: bool = Field(False, description="extra anytime eval after the stream's last step "
                              "(not in the official protocol; raises A_auc)")
    eval_batch: int = Field(256, ge=1)


class BackboneConfig(_Section):
    name: str = "mlp"
    pretrained_file: str | None = None
    freeze: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only, needs momentum > 0")

    @model_validator(mode="after")
    def _nesterov(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd and momentum > 0")
        return self


class SessionPhaseConfig(_Section):
    """How one kind of session trains (``sessions.base`` = session 0, ``sessions.incremental``)."""

    epochs: int = Field(1, ge=0, description="0: no training (e.g. prototype-only methods)")
    batch_size: int = Field(32, ge=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: Literal["none", "cosine"] = Field("none", description="cosine: lr * (1 + cos(pi e / E)) / 2 at epoch e")
    eval_batch: int = Field(256, ge=1, description="batch size of the evaluation after the session")


class SessionsConfig(_Section):
    """``regime: sessions``: each task of the scenario is a session trained for several epochs,
    then evaluated on the test samples of every class seen so far."""

    base: SessionPhaseConfig = Field(default_factory=SessionPhaseConfig)
    incremental: SessionPhaseConfig = Field(default_factory=SessionPhaseConfig)

    def phase(self, session: int) -> SessionPhaseConfig:
        return self.base if session == 0 else self.incremental


class AugmentConfig(_Section):
    random_crop_pad: int = Field(0, ge=0)
    hflip: bool = False
    autoaugment: Literal["cifar10", "imagenet", "svhn"] | None = None
    cutmix_prob: float = Field(0.0, ge=0, le=1, description="CutMix on a whole update batch (strategies that mix)")
    cutmix_alpha: float = Field(1.0, gt=0, description="CutMix Beta(alpha, alpha)")


class TrainerConfig(_Section):
    """Passed through to ``lightning.Trainer``; ``strategy: ddp`` trains with ``devices`` processes per
    node (``engine/distributed.py``, ``docs/distributed.md``)."""

    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = "32-true"
    gradient_clip_val: float | None = None
    strategy: Literal["auto", "ddp"] = Field("auto", description="auto: one process; ddp: devices x num_nodes")
    num_nodes: int = Field(1, ge=1, description="ddp only; launch every node's processes with torchrun")

    @model_validator(mode="after")
    def _processes(self) -> TrainerConfig:
        if self.strategy == "ddp":
            if not isinstance(self.devices, int) or self.devices < 1:
                raise ValueError(f"devices must be a number of processes with strategy: ddp (got {self.devices!r})")
        elif self.num_nodes != 1 or (isinstance(self.devices, int) and self.devices != 1):
            raise ValueError("several devices or nodes need strategy: ddp (docs/distributed.md)")
        return self

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes if self.strategy == "ddp" else 1  # type: ignore[operator]


class LoggingConfig(_Section):
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "clplat"
    entity: str | None = None
    progress: bool = True
    runs_dir: str = "runs"


class Config(BaseModel):
    """A whole experiment. The section named after ``strategy`` holds that strategy's own config."""

    model_config = ConfigDict(extra="allow")

    name: str = "experiment"
    seed: int = 1
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    scenario: ScenarioConfig = Field(default_factory=lambda: ScenarioConfig.model_validate({}))
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    strategy: str = "finetune"
    regime: Literal["online", "sessions"] = Field("online", description="online: one pass over a stream; "
                                                  "sessions: epochs per session (the sessions: section)")
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint_every: int = Field(0, ge=0, description="stream samples between checkpoints; 0 = task ends")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; 1 is fastest on a busy machine")

    @model_validator(mode="after")
    def _strategy_sections(self) -> Config:
        """The chosen strategy's section configures it; sections of other registered strategies
        are validated against their own schema and ignored (a sweep over strategies keeps them)."""
        from clplat.strategies import STRATEGIES

        if self.strategy not in STRATEGIES:
            err = PydanticCustomError("unknown_name", STRATEGIES.unknown_message(self.strategy))
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=err, loc=("strategy",), input=self.strategy)])
        raw = dict(self.model_extra or {})
        raw.setdefault(self.strategy, None)
        sections: dict[str, BaseModel] = {}
        errors: list[InitErrorDetails] = []
        for key, value in raw.items():
            if key != self.strategy and key not in STRATEGIES:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
                continue
            try:
                sections[key] = STRATEGIES.config_model(key).model_validate(value or {})
            except ValidationError as err:
                errors.extend(_prefixed(err, key))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        object.__setattr__(self, "strategy_sections", sections)
        return self

    @model_validator(mode="after")
    def _regime_fits_scenario(self) -> Config:
        allowed = type(self.scenario).regimes
        if self.regime not in allowed:
            err = PydanticCustomError("regime", f"scenario kind '{self.scenario.kind}' runs only with "
                                      f"regime {' or '.join(allowed)}, not '{self.regime}'")
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=err, loc=("regime",), input=self.regime)])
        return self

    @model_validator(mode="after")
    def _sessions_the_strategy_trains(self) -> Config:
        if self.regime == "sessions" and self.sessions.incremental.epochs > 0 \
                and not self.strategy_config.trains_after_session_0():
            raise ValueError(f"strategy '{self.strategy}' trains only in session 0 (later sessions add "
                             "prototypes): set sessions.incremental.epochs=0")
        return self

    @model_validator(mode="after")
    def _batches_split(self) -> Config:
        """DDP splits every full batch into equal shares, one per process (only a task's or an
        epoch's short last batch may not split; it is then trained whole on every process)."""
        w = self.trainer.world_size
        if w == 1:
            return self
        sizes = {"online.stream_batch": self.online.stream_batch} if self.regime == "online" else {
            "sessions.base.batch_size": self.sessions.base.batch_size,
            "sessions.incremental.batch_size": self.sessions.incremental.batch_size}
        for key, n in sizes.items():
            if n % w:
                raise ValueError(f"{key}={n} does not split across {w} DDP processes "
                                 f"(trainer.devices x trainer.num_nodes); use a multiple of {w}")
        return self

    @property
    def strategy_config(self) -> Any:
        """The typed section of the chosen strategy (defaults when the YAML has none)."""
        return self.__dict__["strategy_sections"][self.strategy]

    def to_dict(self) -> dict[str, Any]:
        """Fully resolved config (defaults included), as saved in the run directory."""
        out = self.model_dump(mode="json", exclude=set(self.model_extra or {}))
        for key, section in self.__dict__["strategy_sections"].items():
            out[key] = section.model_dump(mode="json")
        return out


def _prefixed(err: ValidationError, key: str) -> list[InitErrorDetails]:
    """A section's errors re-rooted under ``key`` (messages kept)."""
    return [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"].replace("{", "{{").replace("}", "}}")),
                             loc=(key, *e["loc"]), input=e.get("input"))
            for e in err.errors()]


def format_validation_errors(err: ValidationError, prefix: str = "", union_tags: tuple[str, ...] = ()) -> str:
    """One line naming each bad key path, e.g. ``config: scenario.n_tasks: Input should be ...``.

    ``union_tags`` are discriminated-union tags pydantic puts in the path, which are not keys the
    user wrote (e.g. ``model.x3d.width`` is reported as ``model.width``)."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if str(p) not in union_tags]
        loc = ([prefix] if prefix else []) + loc
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in e and not isinstance(e["input"], dict | list) and e["type"] != "unknown_name":
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "config: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'a.b=3'`` or ``'--a.b=3'`` -> (['a', 'b'], 3)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise UserError(f"override '{text}' is not of the form key.sub=value")
    key, raw = body.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(f"config: {'.'.join(path[: i + 1])}: is a value, cannot set '{text}'")
            node = child
        node[path[-1]] = value
    return raw


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config {p}:{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config {p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


ModelT = TypeVar("ModelT", bound=BaseModel)


def load_model_config(model: type[ModelT], path: str | Path | None, overrides: list[str] | None = None,
                      union_tags: tuple[str, ...] = ()) -> ModelT:
    """A YAML file (``None``: all defaults) plus ``key.sub=value`` overrides, validated into the
    pydantic ``model``; a bad file, key or value is one ``UserError`` line. For the configs of the
    other commands (pretrain, streaming train/predict), which have no cross-section rules here."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_errors(err, union_tags=union_tags)) from None


def build_config(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_errors(err)) from None
    except ValueError as err:
        raise UserError(f"config: {err}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw = load_yaml(path) if path is not None else {}
    return build_config(apply_overrides(raw, list(overrides or [])))
