"""DDP throughput: the same run with 1 process and with ``trainer.strategy=ddp trainer.devices=N``.

Each variant runs ``python -m clplat.run CONFIG`` ``--repeats`` times (fresh run names, interleaved)
and the script prints, from ``results.json``, the run's wall time (``wall_time_s``: Trainer setup,
process start of the other ranks and the process group included), the training time (the fit from
its first batch, ``fit_time_s``, minus evaluation, ``eval_time_s``) and stream samples per second of
training, then the ratio N processes / 1 process. It also prints the A_auc of both (they should
agree; docs/distributed.md). Online configs only.

Every update of a DDP run makes a few collectives (gather of the stream rows, of the augmented rows,
one gradient all-reduce, one stop-flag all-reduce per batch), so small models on few CPU cores are
a worst case; the split pays off when the forward/backward of a share dominates.

    python benchmarks/ddp.py                                   # experiments/si_blurry_er.yaml, N = 2
    python benchmarks/ddp.py --config CFG --devices 4 --repeats 3 threads=1
    python benchmarks/ddp.py --quick                           # smoke run (tiny MLP, 1 repeat)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["data.image_size=8", "backbone.name=mlp", "backbone.kwargs={hidden: [32]}", "scenario.n_tasks=2"]


def run_once(config: str, overrides: list[str], runs: Path, name: str) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "clplat.run", config, f"name={name}", f"logging.runs_dir={runs}",
           "logging.progress=false", "logging.wandb=disabled", *overrides]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return json.loads((runs / name / "results.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/si_blurry_er.yaml")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny MLP, one repeat (a smoke run)")
    ap.add_argument("overrides", nargs="*", help="key=value for both variants (e.g. threads=1)")
    args = ap.parse_args()
    over = [*(QUICK if args.quick else []), *args.overrides]
    repeats = 1 if args.quick else args.repeats
    variants = {"1 process": [], f"ddp x{args.devices}": ["trainer.strategy=ddp", f"trainer.devices={args.devices}"]}
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for k, extra in variants.items():
                rows[k].append(run_once(args.config, [*over, *extra], Path(tmp), f"v{len(rows[k])}_{i}_{k[:3]}"))
    print(f"{args.config} {' '.join(over)}: median of {repeats}")
    print(f"{'variant':>12} {'wall s':>8} {'train s':>8} {'samples/s':>10} {'A_auc':>7}")
    rate = {}
    for k, rs in rows.items():
        wall = statistics.median(r["wall_time_s"] for r in rs)
        train = statistics.median(r["fit_time_s"] - r["eval_time_s"] for r in rs)
        rate[k] = rs[0]["total_samples"] / train
        print(f"{k:>12} {wall:8.2f} {train:8.2f} {rate[k]:10.1f} {100 * rs[0]['metrics']['A_auc']:7.2f}")
    one, many = rate.values()
    print(f"ddp x{args.devices} / 1 process, training samples/s: {many / one:.2f}")


if __name__ == "__main__":
    main()
