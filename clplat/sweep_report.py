"""The end of a sweep: a table of every trial, the best configuration as a ready experiment YAML,
and Optuna's matplotlib plots (optimisation history, parallel coordinates, parameter importance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clplat.io import atomic_write_text
from clplat.sweep_space import Sweep


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def trial_table(sweep: Sweep, study: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    names = [p.name for p in sweep.params]
    table = Table(title=f"sweep {sweep.path.stem}: {sweep.metric} ({sweep.goal})")
    for col in ("trial", "state", *names, sweep.metric, "s"):
        table.add_column(col, justify="right")
    for t in study.get_trials(deepcopy=False):
        args = t.user_attrs.get("args", {})
        state = "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower()
        table.add_row(str(t.number), state, *[_cell(args.get(n)) for n in names], _cell(t.value),
                      _cell(t.user_attrs.get("seconds")))
    import sys

    # a log file or pipe gets the full width (rich would fold the parameter names at 80 columns)
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def write_best(sweep: Sweep, study: Any, sweep_dir: Path) -> Path | None:
    """``best.yaml``: the experiment config with the best trial's values, fully resolved, so
    ``python -m clplat.run DIR/best.yaml`` re-runs it (into runs/, not the sweep's trial folder)."""
    from optuna.trial import TrialState

    from clplat.config import load_config

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    config, fixed = sweep.base_run()
    args = best.user_attrs.get("args", {})
    cfg = load_config(config, fixed + [f"--{k}={v}" for k, v in args.items()]).to_dict()
    head = (f"# best trial {best.number} of sweep {sweep.path} ({sweep.metric} = {best.value:.6g});\n"
            f"# its run directory: {best.user_attrs.get('run_dir')}\n")
    path = sweep_dir / "best.yaml"
    atomic_write_text(path, head + yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_plots(study: Any, sweep_dir: Path) -> list[Path]:
    """Each plot that the finished trials allow (importance needs two or more varied trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = []
    for name, fn in (("history", ovm.plot_optimization_history), ("parallel", ovm.plot_parallel_coordinate),
                     ("importance", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            print(f"plot {name} skipped: {err}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        path = sweep_dir / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        out.append(path)
    return out


def report(sweep: Sweep, study: Any, sweep_dir: Path) -> None:
    trial_table(sweep, study)
    best = write_best(sweep, study, sweep_dir)
    plots = write_plots(study, sweep_dir) if best is not None else []
    if best is not None:
        print(f"best config: {best}   (python -m clplat.run {best})")
    else:
        print("no trial completed: no best config")
    if plots:
        print("plots: " + ", ".join(str(p) for p in plots))
