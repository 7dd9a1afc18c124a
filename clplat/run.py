"""``python -m clplat.run CONFIG [key=value ...]`` — run one continual-learning experiment.

Also ``python -m clplat.run --resume runs/<name>`` to continue a killed or interrupted run, and
``--key.sub=value`` overrides, the form W&B sweep agents pass. Errors a user can cause print one
line ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from clplat.errors import UserError, main_guard

METRICS = ("A_auc", "A_avg", "A_last", "F_last", "BWT")


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m clplat.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment YAML (e.g. experiments/si_blurry_er.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, rest = p.parse_known_args(argv)
    overrides = []
    for item in rest:
        if "=" not in item:
            raise UserError(f"unexpected argument '{item}' (overrides look like key.sub=value)")
        overrides.append(item)
    # a sweep agent passes the config as --config=... too
    if args.config is None and not args.resume:
        for o in list(overrides):
            if o.startswith(("--config=", "config=")):
                args.config = o.split("=", 1)[1]
                overrides.remove(o)
    return args, overrides


def print_summary(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    if results.get("task") == "video":  # PFNR-style runs: PSNR/MS-SSIM per video, not accuracy
        from clplat.pfnr.report import print_video_summary

        return print_video_summary(results)
    if results.get("regime") == "sessions":
        return print_session_summary(results)
    table = Table(title=f"{results['name']} — {results['strategy']} (seed {results['seed']})")
    for m in METRICS:
        table.add_column(m, justify="right")
    table.add_row(*[_pct(results["metrics"].get(m)) for m in METRICS])
    console = Console()
    console.print(table)
    console.print(f"run directory: {results['run_dir']}   wall time: {results['wall_time_s']:.1f} s")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def print_session_summary(results: dict[str, Any]) -> None:
    """Per-session accuracy (all seen / base / novel classes, harmonic mean), then A_avg, last, PD."""
    from rich.console import Console
    from rich.table import Table

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = Table(title=f"{results['name']} — {results['strategy']} (seed {results['seed']}), accuracy %")
    for col in ("session", "classes", "all seen", "base", "novel", "HM"):
        table.add_column(col, justify="right")
    seen = 0
    for k, acc in enumerate(results["session_acc"]):
        seen += len(results["session_classes"][k])
        table.add_row(str(k), str(seen), cell(acc), cell(results["base_acc"][k]), cell(results["novel_acc"][k]),
                      cell(results["hm"][k]))
    console = Console()
    console.print(table)
    console.print(f"A_avg {cell(results['a_avg'])}   A_last {cell(results['a_last'])}   "
                  f"PD {cell(results['pd'])}")
    if "architecture_summary" in results:  # senn: the grown network
        console.print(f"final architecture: {results['architecture_summary']} ({results['backbone_params']} "
                      f"backbone parameters, {len(results['growth'])} growth events)")
    console.print(f"run directory: {results['run_dir']}   wall time: {results['wall_time_s']:.1f} s")


@main_guard
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = _parse(argv)
    if args.resume:
        if args.config or overrides:
            raise UserError("--resume takes only the run directory (its config is fixed)")
        from clplat.engine.experiment import resume_experiment

        results = resume_experiment(args.resume)
    else:
        if not args.config:
            raise UserError("no config given: python -m clplat.run CONFIG [key=value ...]")
        from clplat.config import load_config

        cfg = load_config(args.config, overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from clplat.engine.experiment import run_experiment

        results = run_experiment(cfg)
    if results.get("interrupted"):
        where = results.get("where") or f"{results['samples_seen']} stream samples"
        print(f"interrupted after {where}; checkpoint written. "
              f"Continue with: python -m clplat.run --resume {results['run_dir']}", file=sys.stderr)
        return 130
    print_summary(results)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
