"""The Si-Blurry digits results table: every method x seed, mean +- std, written to docs/results.md.

    python benchmarks/run_results.py [--seeds 1 2 3 4 5] [--only mvp er ...] [--jobs 2]

All methods share the headline's stream (T=5, N=50, M=10, batch 16, 3 online iterations) and the
shipped frozen backbone (``clplat/weights/vit_glyphs32.safetensors``); the baselines train only a
linear head on it. Each run is ``python -m clplat.run`` on a config derived from
``experiments/si_blurry_mvp.yaml`` (written next to the run), one torch thread per process and
``--jobs`` processes at a time (on a 2-core machine two single-thread runs beat one two-thread run).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "si_blurry_mvp.yaml"
RUNS = ROOT / "runs" / "results"
DOC = ROOT / "docs" / "results.md"
MEMORY = 200

# label -> (strategy, its section)
METHODS: dict[str, tuple[str, dict]] = {
    "finetune": ("finetune", {}),
    "er": ("er", {"memory_size": MEMORY, "memory_batch": 16}),
    "l2p": ("l2p", {}),
    "dualprompt": ("dualprompt", {}),
    "mvp": ("mvp", {}),
    "mvp_r": ("mvp", {"memory_size": MEMORY, "memory_batch": 16}),
    "mvp_no_mask": ("mvp", {"use_mask": False}),
    "mvp_no_cvpt": ("mvp", {"use_cvpt": False}),
    "mvp_no_afs": ("mvp", {"use_afs": False}),
    "mvp_no_gsf": ("mvp", {"use_gsf": False}),
}
LABELS = {
    "finetune": "Finetune (head only)", "er": f"ER (head only, memory {MEMORY})", "l2p": "L2P",
    "dualprompt": "DualPrompt", "mvp": "**MVP**", "mvp_r": f"**MVP-R** (memory {MEMORY})",
    "mvp_no_mask": "MVP − instance mask", "mvp_no_cvpt": "MVP − L_CVPT (pull loss, no count penalty)",
    "mvp_no_afs": "MVP − AFS", "mvp_no_gsf": "MVP − GSF",
}
METRICS = ("A_auc", "A_avg", "A_last", "F_last")


def method_config(method: str, seed: int) -> dict:
    """The headline config with this method's strategy section swapped in."""
    raw = yaml.safe_load(BASE.read_text())
    strategy, section = METHODS[method]
    raw = copy.deepcopy(raw)
    raw.pop("mvp", None)
    raw["strategy"] = strategy
    if section:
        raw[strategy] = dict(section)
    raw["name"] = f"{method}_s{seed}"
    raw["seed"] = seed
    raw["logging"] = {"wandb": "disabled", "progress": False, "runs_dir": str(RUNS)}
    return raw


def run_one(method: str, seed: int) -> dict:
    run_dir = RUNS / f"{method}_s{seed}"
    done = run_dir / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg_path = RUNS / "configs" / f"{method}_s{seed}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(method_config(method, seed), sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "clplat.run", str(cfg_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not done.is_file():
        raise RuntimeError(f"{method} seed {seed} failed:\n{proc.stderr[-2000:]}")
    print(f"{method:>12} seed {seed}: {time.time() - t:.0f}s", flush=True)
    return json.loads(done.read_text())


def table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    head = "| method | " + " | ".join(f"{m} (%)" for m in METRICS) + " |\n|---|" + "---:|" * len(METRICS)
    rows = []
    for method, runs in results.items():
        cells = []
        for m in METRICS:
            v = 100 * np.array([r["metrics"][m] for r in runs], dtype=float)
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
        rows.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


def per_seed(results: dict[str, list[dict]]) -> str:
    lines = ["| method | seed | A_auc | A_last | F_last | wall (s) |", "|---|---:|---:|---:|---:|---:|"]
    for method, runs in results.items():
        for r in runs:
            m = r["metrics"]
            lines.append(f"| {method} | {r['seed']} | {100 * m['A_auc']:.2f} | {100 * m['A_last']:.2f} | "
                         f"{100 * m['F_last']:.2f} | {r.get('wall_time_s', 0):.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--only", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--print-only", action="store_true", help="print the table, do not write docs")
    args = p.parse_args()
    jobs = [(m, s) for m in args.only for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda ms: run_one(*ms), jobs))
    results: dict[str, list[dict]] = {m: [] for m in args.only}
    for (m, _), r in zip(jobs, done):
        results[m].append(r)
    text = table(results, args.seeds)
    print(text)
    if not args.print_only:
        body = DOC.read_text() if DOC.exists() else ""
        marker = "<!-- table: benchmarks/run_results.py -->"
        block = f"{marker}\n{text}\n\nPer seed:\n\n{per_seed(results)}\n{marker}"
        if body.count(marker) == 2:
            a, _, rest = body.partition(marker)
            _, _, b = rest.partition(marker)
            body = a + block + b
        else:
            body = body.rstrip("\n") + "\n\n" + block + "\n"
        DOC.write_text(body)


if __name__ == "__main__":
    main()
