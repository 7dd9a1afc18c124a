"""The PFNR results table of ``docs/results.md``: PFNR (c = 30 %, 50 %), WSN (no FSO), a fine-tuned
NeRV and one NeRV per video on the built-in videos, seeds 1-3, each a normal ``python -m clplat.run``.

    nice -n 10 python benchmarks/run_pfnr.py --jobs 3         # runs/pfnr_results/, skips finished runs
    python benchmarks/run_pfnr.py --seeds 1 --epochs 5        # a quick look
    python benchmarks/run_pfnr.py --report-only               # table from the finished runs

Writes ``runs/pfnr_results/summary.md`` (mean +- std over seeds) and ``summary.json`` (per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = {  # name -> (config, overrides)
    "PFNR c=30%": ("experiments/pfnr_videos.yaml", ["pfnr.c=30"]),
    "PFNR c=50%": ("experiments/pfnr_videos.yaml", ["pfnr.c=50"]),
    "PFNR c=50%, FSO replaces the conv": ("experiments/pfnr_videos.yaml",
                                          ["pfnr.c=50", "backbone.kwargs.fso_mode=replace"]),
    "WSN c=50% (no FSO)": ("experiments/pfnr_videos_wsn.yaml", []),
    "NeRV fine-tuned": ("experiments/pfnr_videos_finetune.yaml", []),
    "one NeRV per video": ("experiments/pfnr_videos_per_video.yaml", []),
}


def run_name(method: str, seed: int) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in method.lower()).strip("_") + f"_s{seed}"


def run_one(method: str, seed: int, out: Path, extra: list[str]) -> dict:
    name = run_name(method, seed)
    result = out / name / "results.json"
    if not result.is_file():
        config, overrides = METHODS[method]
        cmd = [sys.executable, "-m", "clplat.run", config, *overrides, f"seed={seed}", f"name={name}",
               f"logging.runs_dir={out}", "logging.progress=false", "threads=1", *extra]
        if (out / name / "checkpoints" / "last.pt").is_file():  # a run this script started and lost
            cmd = [sys.executable, "-m", "clplat.run", "--resume", str(out / name)]
        print("$", " ".join(cmd[1:]), flush=True)
        done = subprocess.run(cmd, cwd=REPO, env={**__import__("os").environ, "WANDB_MODE": "disabled"})
        if done.returncode != 0 or not result.is_file():
            raise SystemExit(f"{name} failed (exit {done.returncode})")
    return json.loads(result.read_text())


def mean_std(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(runs: dict[str, list[dict]]) -> str:
    names = next(iter(runs.values()))[0]["videos"]
    head = ["method", "seeds", "PSNR avg (dB)", *[f"PSNR {n}" for n in names], "MS-SSIM avg", "BWT (dB)",
            "re-decode identical", "bpp", "model bits (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rs in runs.items():
        per_video = [mean_std([r["psnr_final"][j] for r in rs], ".2f") for j in range(len(names))]
        lines.append("| " + " | ".join([
            method, str(len(rs)), mean_std([r["metrics"]["psnr_avg"] for r in rs], ".2f"), *per_video,
            mean_std([r["metrics"]["msssim_avg"] for r in rs], ".4f"), mean_std([r["bwt"] for r in rs], ".3f"),
            f"{sum(all(r['redecode_identical']) for r in rs)}/{len(rs)}", mean_std([r["bpp"] for r in rs], ".2f"),
            f"{round(statistics.mean(r['model_bits'] for r in rs)):,}"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if "replaces" not in m], choices=list(METHODS),
                   help="default: all but the FSO-replace ablation")
    p.add_argument("--out", default=str(REPO / "runs" / "pfnr_results"))
    p.add_argument("--epochs", type=int, help="override the epochs per session (quick looks only)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time (each uses one thread)")
    args = p.parse_args()
    out = Path(args.out)
    extra = [f"sessions.base.epochs={args.epochs}", f"sessions.incremental.epochs={args.epochs}"] if args.epochs else []
    todo = [(m, seed) for seed in args.seeds for m in args.methods  # seed-major: a partial table covers all methods
            if not args.report_only or (out / run_name(m, seed) / "results.json").is_file()]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own 1-thread process
        done = list(pool.map(lambda ms: run_one(ms[0], ms[1], out, extra), todo))
    runs: dict[str, list[dict]] = {}
    for (method, _), r in zip(todo, done, strict=True):
        runs.setdefault(method, []).append(r)
    text = table(runs)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({m: [{k: r[k] for k in ("seed", "psnr_final", "msssim_final", "bwt",
                                                                         "bpp", "model_bits", "wall_time_s",
                                                                         "redecode_identical")}
                                                      for r in rs] for m, rs in runs.items()}, indent=2))


if __name__ == "__main__":
    main()
