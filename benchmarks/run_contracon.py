"""The ConTraCon results tables of docs/results.md (issue 9): every method x seed on one
task-incremental config, TIL / CIL / task-id accuracy, parameters, paired per-seed differences.

    python benchmarks/run_contracon.py --table digits  [--seeds 1 2 3 4 5] [--only contracon probe] [--jobs 1]
    python benchmarks/run_contracon.py --table glyphs  ...
    python benchmarks/run_contracon.py --table digits --no-run     # tabulate the finished runs only

``digits``: ``experiments/contracon_digits.yaml`` (5 tasks x 2 classes); ``glyphs``:
``experiments/contracon_glyphs.yaml`` (10 tasks x 10 glyph classes). Methods, all on the config's
backbone, tasks and seed (same seed = same data order and initialisation):
- ``contracon``: the config as shipped;
- ``finetune``: the whole network and one shared head trained on every task (``strategy=finetune``),
  later tasks at the task-0 lr;
- ``probe``: the frozen task-0 network, a new linear head per task (``contracon.adapt=probe``);
- ``independent``: one CCT per task from scratch (``strategy=independent_per_task``), every task with
  the task-0 schedule (``sessions.incremental`` = ``sessions.base``).
Every run is ``python -m clplat.run <config>`` with ``threads: 1`` under ``runs/contracon/<table>/``; a
finished run (``results.json``) is reused. The script then rewrites its own block in
docs/results.md (markers ``<!-- results:contracon_<table> -->``) and leaves the rest of the file alone.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_results import _ms, paired_diff  # noqa: E402  (mean +- std, paired t-interval)

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "contracon"
DOC = ROOT / "docs" / "results.md"
CONFIGS = {"digits": "contracon_digits.yaml", "glyphs": "contracon_glyphs.yaml"}
METHODS = {  # label -> row title
    "contracon": "**ConTraCon** (conv re-weighting of task-0 q/k/v, entropy task-id)",
    "finetune": "Finetune (whole network, one shared head)",
    "probe": "Linear probe (frozen task-0 network, head per task)",
    "independent": "Independent CCT per task (upper bound, T x params)",
}
METRICS = {"til_acc": "TIL", "cil_acc": "CIL", "task_id_acc": "task-id"}
SPEC_B21 = {10: 25_315, 20: 27_885, 5: 24_030}  # cct_6, k = 15, per task, by classes per task
SPEC_REWEIGHT = {3: 792, 5: 1_944, 9: 5_976, 15: 16_344}


def method_config(table: str, method: str, seed: int, overrides: list[str] = ()) -> dict:
    """The table's YAML (plus ``--set`` overrides) with the method's changes, one thread, no W&B,
    under ``RUNS``."""
    from clplat.config import apply_overrides

    raw = apply_overrides(yaml.safe_load((ROOT / "experiments" / CONFIGS[table]).read_text()), list(overrides))
    if method == "finetune":
        raw["strategy"] = "finetune"
        raw["sessions"]["incremental"]["optim"]["lr"] = raw["sessions"]["base"]["optim"]["lr"]
    elif method == "probe":
        raw["contracon"] = {**raw.get("contracon", {}), "adapt": "probe"}
    elif method == "independent":
        raw["strategy"] = "independent_per_task"
        raw["sessions"]["incremental"] = copy.deepcopy(raw["sessions"]["base"])
    raw.update(name=f"{method}_s{seed}", seed=seed, threads=1, checkpoint_every=0)
    raw["logging"] = {"wandb": "disabled", "progress": False, "runs_dir": str(RUNS / table)}
    return raw


def run_one(table: str, method: str, seed: int, run: bool, overrides: list[str] = ()) -> dict | None:
    """Run (or reuse) one experiment; None if not finished (``run`` False) or failed."""
    run_dir = RUNS / table / f"{method}_s{seed}"
    done = run_dir / "results.json"
    if not done.is_file() and run:
        cfg_path = RUNS / table / "configs" / f"{method}_s{seed}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(method_config(table, method, seed, overrides), sort_keys=False))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "clplat.run", str(cfg_path)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not done.is_file():
            print(f"FAILED: {table} {method} seed {seed}:\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
            return None
        print(f"{table} {method:>12} seed {seed}: {time.time() - t:.0f}s", flush=True)
    return json.loads(done.read_text()) if done.is_file() else None


# --- tables --------------------------------------------------------------------------------------
def summary_table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = ["| method | seeds | " + " | ".join(f"{n} (%)" for n in METRICS.values())
             + " | parameters, total | added per later task |", "|---|---:|" + "---:|" * (len(METRICS) + 2)]
    for method, runs in results.items():
        n = f"{len(runs)}" if len(runs) == len(seeds) else f"**{len(runs)} of {len(seeds)}**"
        cells = [_ms(np.array([r[k] for r in runs], dtype=float)) for k in METRICS]
        per = runs[0]["params_per_task"]
        later = f"{per[1]:,}" if per and len(per) > 1 else "0 (shared)"
        total = f"{runs[0]['params_total']:,}"
        lines.append(f"| {METHODS[method]} | {n} | " + " | ".join(cells) + f" | {total} | {later} |")
    return "\n".join(lines)


def paired_table(results: dict[str, list[dict]]) -> str:
    lines = ["| difference (same seeds) | metric | mean ± sd (points) | 95 % CI | > 0 on |", "|---|---|---:|---:|---:|"]
    for ref in ("finetune", "probe", "independent"):
        if not results.get("contracon") or not results.get(ref):
            continue
        for k, name in METRICS.items():
            d, ci = paired_diff({r["seed"]: r[k] for r in results["contracon"]},
                                {r["seed"]: r[k] for r in results[ref]})
            if len(d):
                lines.append(f"| contracon − {ref} | {name} | {_ms(d)} | {ci} | {int((d > 0).sum())}/{len(d)} |")
    return "\n".join(lines)


def til_by_task_table(results: dict[str, list[dict]]) -> str:
    """Mean TIL accuracy on each task after the last task (rows: methods)."""
    n = max(len(r["til_matrix"][-1]) for runs in results.values() for r in runs)
    lines = ["| method | " + " | ".join(f"task {t}" for t in range(n)) + " |", "|---|" + "---:|" * n]
    for key, label in (("til_matrix", "TIL"), ("task_id_matrix", "task-id")):
        for method, runs in results.items():
            acc = np.mean([r[key][-1] for r in runs], axis=0)
            lines.append(f"| {method} ({label}) | " + " | ".join(f"{a:.1f}" for a in acc) + " |")
    return "\n".join(lines)


def spec_parameter_table() -> str:
    """ConTraCon's per-task parameters on cct_6 (32 px) against spec B.2.1, computed here."""
    from types import SimpleNamespace

    from clplat.backbones.cct import CCT
    from clplat.strategies.contracon import ConTraCon, ContraconConfig

    lines = ["| cct_6, 32 px | computed here | spec B.2.1 | equal |", "|---|---:|---:|:---:|"]
    for k in (3, 5, 9, 15):
        for c in (SPEC_B21 if k == 15 else {10: None}):
            bb = CCT((3, 32, 32), num_layers=6, num_heads=4, mlp_ratio=2.0, embedding_dim=256)
            s = ConTraCon(ContraconConfig(kernel_size=k), bb, 2 * c, (3, 32, 32))
            for t in range(2):
                s.on_session_start(t, None, SimpleNamespace(n_exposed=c * (t + 1), session=t))
            reweight = sum(p.numel() for p in s.adapters[1].reweight.parameters())
            rows = [(f"k = {k}, re-weighting (conv + gates)", reweight, SPEC_REWEIGHT[k])] if c == 10 else []
            if k == 15:
                rows.append((f"k = 15, per task, C_t = {c}", s.task_parameter_counts()[1], SPEC_B21[c]))
            lines += [f"| {name} | {got:,} | {want:,} | {'yes' if got == want else '**NO**'} |"
                      for name, got, want in rows]
    return "\n".join(lines)


def per_seed_table(results: dict[str, list[dict]]) -> str:
    lines = ["| method | seed | TIL | CIL | task-id |", "|---|---:|---:|---:|---:|"]
    for method, runs in results.items():
        for r in sorted(runs, key=lambda r: r["seed"]):
            lines.append(f"| {method} | {r['seed']} | {r['til_acc']:.2f} | {r['cil_acc']:.2f} | "
                         f"{r['task_id_acc']:.2f} |")
    return "\n".join(lines)


def render(table: str, results: dict[str, list[dict]], seeds: list[int], missing: list[str]) -> str:
    cfg = f"experiments/{CONFIGS[table]}"
    status = ("All cells have every seed." if not missing
              else "**Incomplete**: not run or failed: " + ", ".join(missing) + ".")
    return "\n\n".join([
        f"`{cfg}`, seeds {', '.join(map(str, seeds))}; mean ± sample std (ddof 1), in %, after the last task, "
        "averaged over tasks (the paper's average accuracy). TIL: the true task's head; CIL: the task "
        "inferred (ConTraCon and the probe and independent baselines: lowest entropy over 16 views; "
        "finetune: argmax over all classes of its shared head), class right; task-id: the predicted class "
        f"is in the right task. {status} Command: `python benchmarks/run_contracon.py --table {table}`.",
        summary_table(results, seeds),
        "Paired differences (ConTraCon − baseline, same seed), in points:",
        paired_table(results),
        "Accuracy on each task after the last task, mean over seeds (%):",
        til_by_task_table(results),
        "ConTraCon's parameters per task at paper scale (`cct_6`, 32 px; computed by this script from the "
        "strategy, against spec B.2.1):",
        spec_parameter_table(),
        "Per seed:",
        per_seed_table(results),
    ])


def write_block(table: str, text: str) -> None:
    """Replace (or append) this table's block of docs/results.md; nothing else in the file changes."""
    from clplat.io import atomic_write_text

    begin = f"<!-- results:contracon_{table} (benchmarks/run_contracon.py) -->"
    end = f"<!-- /results:contracon_{table} -->"
    body = DOC.read_text() if DOC.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        a, _, rest = body.partition(begin)
        body = a + block + rest.partition(end)[2]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(DOC, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", choices=sorted(CONFIGS), default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--only", nargs="+", choices=list(METHODS), help="methods, in this order (default: all)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--no-run", action="store_true", help="tables from the finished runs only; start nothing")
    p.add_argument("--print-only", action="store_true", help="print the tables, do not write docs")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every run (smoke tests)")
    p.add_argument("--runs-dir", help="where the runs go (default runs/contracon)")
    a = p.parse_args()
    if a.runs_dir:
        global RUNS
        RUNS = Path(a.runs_dir).resolve()
    methods = a.only or list(METHODS)
    jobs = [(m, s) for s in a.seeds for m in methods]  # seed-major: a cut-short run still pairs seeds
    with ThreadPoolExecutor(a.jobs) as pool:
        done = list(pool.map(lambda ms: run_one(a.table, *ms, run=not a.no_run, overrides=a.set), jobs))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    missing = []
    for (m, s), r in zip(jobs, done):
        if r is None:
            missing.append(f"{m} seed {s}")
        else:
            results[m].append(r)
    results = {m: r for m, r in results.items() if r}
    if not results:
        sys.exit("no finished run to tabulate")
    text = render(a.table, results, a.seeds, missing)
    print(text)
    if not a.print_only:
        write_block(a.table, text)


if __name__ == "__main__":
    main()
