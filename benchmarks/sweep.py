"""Local sweep runner costs: what ``python -m clplat.sweep`` adds per trial beyond the run itself,
and the throughput of K trials run in parallel (``--jobs K``) vs one after another (``--jobs 1``).

* **overhead per trial**: each trial's wall time as the study records it (Optuna's start -> tell,
  i.e. argv building, process start, polling, reading results, the SQLite writes) minus the wall
  time of the very same argv run directly (``subprocess.run``, fresh run name), the two
  interleaved trial by trial. Target: <= 1 s. The runner's fixed cost per sweep (imports, storage,
  report and plots) is given separately.
* **throughput**: wall time of a K-trial sweep with ``--jobs K`` vs ``--jobs 1`` (the runner's
  default threads: CPUs // jobs), trials per minute.

The trial is the tiny ER run of the tests (``tests/fixtures/sweeps/tiny_er.yaml``: 8 px digits, an
MLP; ~1 s of training), so process start and imports dominate: a worst case for the overhead.

    python benchmarks/sweep.py                       # 6 trials for the overhead, K = 2
    python benchmarks/sweep.py --quick               # smoke run (2 trials, K = 2)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "tests/fixtures/sweeps/tiny_random.yaml"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}


def run_sweep(sweep_dir: Path, trials: int, jobs: int, threads: int | None = None) -> float:
    cmd = [sys.executable, "-m", "clplat.sweep", str(SWEEP), "--trials", str(trials), "--jobs", str(jobs),
           "--dir", str(sweep_dir), "--seed", "0"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"sweep failed: {res.stderr[-2000:]}")
    return wall


def trials_of(sweep_dir: Path) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=SWEEP.stem, storage=f"sqlite:///{sweep_dir / 'study.db'}")
    return [t for t in study.get_trials() if t.state.name == "COMPLETE"]


def direct_wall(command: list[str], name: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([*command, f"name={name}"], cwd=REPO, env=ENV, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"direct run failed: {res.stderr[-2000:]}")
    return time.perf_counter() - t0


def overhead(root: Path, trials: int) -> dict:
    """Per-trial runner overhead (trial by trial: the sweep's record vs the same argv run directly)."""
    sweep_dir = root / "overhead"
    sweep_wall = run_sweep(sweep_dir, trials, jobs=1)
    rows = []
    for t in trials_of(sweep_dir):
        in_sweep = (t.datetime_complete - t.datetime_start).total_seconds()
        direct = direct_wall(t.user_attrs["command"], f"direct_{t.number:04d}")
        rows.append({"trial": t.number, "in_sweep_s": round(in_sweep, 3), "direct_s": round(direct, 3),
                     "overhead_s": round(in_sweep - direct, 3)})
    per_trial = [r["overhead_s"] for r in rows]
    fixed = sweep_wall - sum(r["in_sweep_s"] for r in rows)
    return {"trials": rows, "overhead_median_s": round(statistics.median(per_trial), 3),
            "overhead_mean_s": round(statistics.mean(per_trial), 3),
            "fixed_per_sweep_s": round(fixed, 3), "target_s": 1.0,
            "verdict": "met" if max(per_trial) <= 1.0 else ("MISSED" if min(per_trial) > 1.0 else "inconclusive")}


def throughput(root: Path, k: int, threads: int | None) -> dict:
    seq = run_sweep(root / "sequential", k, jobs=1, threads=threads)
    par = run_sweep(root / "parallel", k, jobs=k, threads=threads)
    return {"k": k, "threads_per_trial": threads or "cpus // jobs", "sequential_s": round(seq, 2),
            "parallel_s": round(par, 2), "speedup": round(seq / par, 2),
            "trials_per_min_sequential": round(60 * k / seq, 2), "trials_per_min_parallel": round(60 * k / par, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6, help="trials for the overhead measurement")
    p.add_argument("--k", type=int, default=2, help="parallel jobs in the throughput comparison")
    p.add_argument("--threads", type=int, default=None, help="threads per trial (default: the runner's)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 trials")
    p.add_argument("--out", help="write the JSON here too")
    a = p.parse_args()
    trials = 2 if a.quick else a.trials
    with tempfile.TemporaryDirectory(prefix="clplat_sweep_bench_") as tmp:
        root = Path(tmp)
        out = {"cpus": len(os.sched_getaffinity(0)), "overhead": overhead(root, trials),
               "throughput": throughput(root, a.k, a.threads)}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
