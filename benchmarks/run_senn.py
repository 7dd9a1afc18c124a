"""The self-expanding CNN table (issue 10): SENN, SECNN mode and three baselines, several seeds.

For each seed: ``senn`` (the experiment as configured), ``secnn`` (SECNN's decision rule on the
same score), ``fixed_small`` (the starting network, never grows), ``fixed_large`` (SENN's final
architecture of that seed, from its ``architecture.json``, trained from scratch) and ``random``
(as many width/depth events as SENN made in that seed, spread over as many decision opportunities,
at random places). Every run is an ordinary ``python -m clplat.run`` (threads 1, niced); a run
whose ``results.json`` exists is reused, so the script resumes.

    python benchmarks/run_senn.py --experiment experiments/senn_digits.yaml --seeds 1 2 3 4 5
    python benchmarks/run_senn.py --experiment experiments/senn_glyphs_ci.yaml --seeds 1 2 3 4 5
    python benchmarks/run_senn.py --smoke        # one seed, 3 epochs: checks the pipeline

Writes ``runs/senn_results/<experiment>/table.md`` (mean +- std of final accuracy and backbone
parameters, paired per-seed differences against SENN) and ``acc_vs_params.png``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("senn", "secnn", "fixed_small", "fixed_large", "random")


def run(config: Path, name: str, runs_dir: Path, overrides: list[str]) -> dict[str, Any]:
    out = runs_dir / name / "results.json"
    if not out.is_file():
        cmd = ["nice", "-n", "10", sys.executable, "-m", "clplat.run", str(config), f"name={name}",
               f"logging.runs_dir={runs_dir}", "logging.progress=false", "logging.wandb=disabled", "threads=1",
               *overrides]
        print("+", " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def seed_runs(config: Path, seed: int, runs_dir: Path, extra: list[str]) -> dict[str, dict[str, Any]]:
    stem = config.stem
    base = [f"seed={seed}", *extra]
    res = {"senn": run(config, f"{stem}_senn_s{seed}", runs_dir, [*base, "senn.mode=senn"])}
    res["secnn"] = run(config, f"{stem}_secnn_s{seed}", runs_dir, [*base, "senn.mode=secnn"])
    res["fixed_small"] = run(config, f"{stem}_fixed_small_s{seed}", runs_dir, [*base, "senn.mode=fixed"])
    arch = runs_dir / f"{stem}_senn_s{seed}" / "architecture.json"
    res["fixed_large"] = run(config, f"{stem}_fixed_large_s{seed}", runs_dir,
                             [*base, "senn.mode=fixed", f"backbone.kwargs.arch_file={arch}"])
    kinds = [e["kind"] for e in res["senn"]["growth"]]
    res["random"] = run(config, f"{stem}_random_s{seed}", runs_dir,
                        [*base, "senn.mode=random", f"senn.random_width={kinds.count('width')}",
                         f"senn.random_depth={kinds.count('depth')}",
                         f"senn.random_span={max(1, res['senn']['decisions'])}"])
    return res


def stats(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(all_runs: dict[int, dict[str, dict[str, Any]]]) -> str:
    seeds = sorted(all_runs)
    acc = {m: [all_runs[s][m]["a_last"] for s in seeds] for m in METHODS}
    avg = {m: [all_runs[s][m]["a_avg"] for s in seeds] for m in METHODS}
    par = {m: [all_runs[s][m]["backbone_params"] for s in seeds] for m in METHODS}
    sessions = len(all_runs[seeds[0]]["senn"]["session_acc"]) > 1
    lines = ["| method | final accuracy % |" + (" A_avg % |" if sessions else "")
             + " backbone parameters | Δ final accuracy vs SENN (paired) | per seed Δ |",
             "|---|---|" + ("---|" if sessions else "") + "---|---|---|"]
    for m in METHODS:
        diff = [a - b for a, b in zip(acc[m], acc["senn"], strict=True)]
        lines.append(f"| {m} | {stats(acc[m])} |" + (f" {stats(avg[m])} |" if sessions else "")
                     + f" {stats([float(p) for p in par[m]])} | "
                     f"{'-' if m == 'senn' else stats(diff)} | "
                     f"{'-' if m == 'senn' else ', '.join(f'{d:+.2f}' for d in diff)} |")
    arch = "; ".join(f"s{s}: {all_runs[s]['senn']['architecture_summary']} "
                     f"({len(all_runs[s]['senn']['growth'])} events)" for s in seeds)
    secnn = "; ".join(f"s{s}: {all_runs[s]['secnn']['architecture_summary']}" for s in seeds)
    return "\n".join(lines) + f"\n\nSENN final architectures: {arch}.\nSECNN mode: {secnn}.\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="experiments/senn_digits.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--runs-dir", default="runs/senn_results")
    p.add_argument("--smoke", action="store_true", help="seed 1, 3 epochs, separate directory")
    a = p.parse_args()
    config = (ROOT / a.experiment).resolve()
    extra: list[str] = []
    runs_dir = ROOT / a.runs_dir / config.stem
    if a.smoke:
        a.seeds, runs_dir = [1], ROOT / a.runs_dir / f"{config.stem}_smoke"
        extra = ["sessions.base.epochs=3", "sessions.incremental.epochs=1", "senn.warmup=1", "senn.cooldown=0"]
    all_runs = {s: seed_runs(config, s, runs_dir, extra) for s in a.seeds}
    text = table(all_runs)
    (runs_dir / "table.md").write_text(text)
    from clplat.strategies.senn_report import plot_acc_vs_params

    points = {m: [(all_runs[s][m]["backbone_params"], all_runs[s][m]["a_last"]) for s in a.seeds] for m in METHODS}
    plot_acc_vs_params(runs_dir / "acc_vs_params.png", points, f"{config.stem}: accuracy vs parameters")
    print(text)
    print(f"written: {runs_dir / 'table.md'}, {runs_dir / 'acc_vs_params.png'}")


if __name__ == "__main__":
    main()
