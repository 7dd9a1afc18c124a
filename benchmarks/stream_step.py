"""Per-frame cost of streaming video inference on CPU: clplat ``step`` vs three baselines, and
every contender against the network's arithmetic floor.

    python benchmarks/stream_step.py [--models x3d_s r2plus1d_18] [--size 112] [--window 16]
                                     [--threads 1] [--cpus 0] [--rounds 3] [--json out.json]

For each network (X3D-S-like ``x3d_s`` and torchvision ``r2plus1d_18``, random weights from one
seed, eval mode) every contender runs the SAME network: BatchNorm folded into the preceding
convs (``stream_nets.fold_batchnorm``, torch's ``fuse_conv_bn_eval``), so no contender pays for
BN at run time. At batch 1, ``size`` x ``size`` RGB frames:

- ``clplat``: ``clplat.streaming.convert(model).step`` once per frame (explicit state).
- ``compiled``: the same step through ``clplat.streaming.compile_step`` (Inductor, C++ on CPU);
  its one-off compilation happens during warm-up and is reported apart (``warm-up s``).
- ``fused`` / ``compiled_fused`` (x3d_s only): ``clplat`` / ``compiled`` with every X3D block
  stepped by the fused C++ block step (``clplat.kernels.x3d_block_cpu``, ``X3DBlockStream.cpp_step``;
  compiled: one extern kernel per block in the Inductor graph) and the stem by its C++ step
  (``X3DStemStream.cpp_step``), built (or loaded from the cache) before the warm-up. It is the
  default; ``clplat`` / ``compiled`` here keep the Python block and stem steps, so the four rows
  separate the two changes.
- ``sliding``: the last ``window`` frames recomputed at every frame, computing only the newest
  position's prediction (``stream_nets.last_position_logits``: the backbone on the whole window,
  whose every position feeds that prediction; the head only where the last prediction reads it).
  For r2plus1d_18 (temporal stride 8: a stream emits every 8th frame) also ``sliding/8``: the
  recompute every 8th frame only, the stream's output rate.
- ``co``: continual-inference 1.2.4 ``forward_step`` on the same folded network built from
  ``co.Conv3d``, ``co.Residual``/``co.BroadcastReduce``, ``co.AdaptiveAvgPool3d`` and
  ``co.forward_stepping``, with the same weights.

Outputs are checked before timing against the UNFOLDED offline network, on one stream of frames:
the folded network per position, every clplat / compiled output for its position (warm-up
included), co's steady-state outputs, and the sliding window's last-position output. Each
variant runs in a fresh child process, pinned to the same CPUs (``--cpus``) with the same
thread count, so its peak memory (rise of the resident set over the loaded model, read from
``/proc/self/status`` after resetting the high-water mark) is its own. Rounds interleave the
variants so a noisy machine hurts them alike; means and medians over all timed frames of all
rounds; ratios compare numbers measured in this same run. Also: 8 streams stepped as one batch.

Arithmetic floor: the network's multiply-adds per input frame in a steady stream (torch's FLOP
counter on the per-position offline network, difference of a 64- and a 32-frame clip on the meta
device), divided by the best fp32 multiply-add rate measured in the same run, in a pinned child
at the start and at the end (a 512^3 GEMM and a 64->64 3x3 conv on 56x56; the faster of the two,
so the floor is a lower bound, unless the conv beats the GEMM by over 1.5x, which means a fast
conv algorithm such as Winograd rather than a multiply-add rate: then the GEMM's). Each
contender's mean step is reported as a multiple of it.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_nets import (  # noqa: E402
    HEAD_WINDOW,
    arithmetic,
    build_clplat,
    build_co,
    build_network,
    build_offline,
    fold_batchnorm,  # noqa: F401  (re-exported: benchmarks/gpu_bench.py folds with it)
    last_position_logits,
    offline_positions,
)

# ---------------------------------------------------------------- the machine's peak


def measure_peak(task: dict[str, Any]) -> dict[str, float]:
    """Child: the best fp32 multiply-add rate of this core on a GEMM (512^3: large enough for
    MKL's peak, short enough to fit between preemptions) and a ResNet-style conv (64->64, 3x3,
    56x56, batch 1), pinned and threaded like the contenders; best of 30 calls each."""
    _pin(task)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    x, w = torch.randn(1, 64, 56, 56), torch.randn(64, 64, 3, 3)
    cases = {"gemm": (lambda: torch.mm(a, b), 512**3),
             "conv": (lambda: F.conv2d(x, w, padding=1), 64 * 64 * 9 * 56 * 56)}
    out = {}
    with torch.inference_mode():
        for key, (fn, macs) in cases.items():
            for _ in range(3):
                fn()
            best = min(_timed(fn) for _ in range(30))
            out[f"{key}_gmacs"] = macs / best / 1e9
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- runners (one output per frame or None)

MINE = ("clplat", "compiled", "fused", "compiled_fused")  # clplat's own steps
FUSED = ("fused", "compiled_fused")  # only for networks with X3D blocks


def _use_fused_blocks(stream: nn.Module, on: bool) -> None:
    """Every X3D block and stem of ``stream`` takes the C++ step (``on``; the extension is built
    first) or the Python step (``clplat`` / ``compiled``: the step as before the C++ one)."""
    from clplat.kernels import x3d_block_cpu
    from clplat.streaming.models.x3d import X3DBlockStream, X3DStemStream

    if on and not x3d_block_cpu.available():
        raise RuntimeError("the fused X3D block step cannot be built here (see the warning above)")
    for block in stream.modules():
        if isinstance(block, (X3DBlockStream, X3DStemStream)):
            block.cpp_step = on



def make_runner(variant: str, name: str, model: nn.Module, window: int) -> Any:
    """A callable ``frame (B, C, H, W) -> logits (B, K) | None`` holding its own stream state."""
    if variant in MINE:
        stream = build_clplat(name, model)
        _use_fused_blocks(stream, variant in FUSED)
        step = stream.step
        if variant.startswith("compiled"):
            from clplat.streaming import compile_step

            step = compile_step(stream)
        box: list[Any] = [None]

        def run(frame: Tensor) -> Tensor | None:
            y, box[0] = step(frame, box[0])
            return None if y is None else y.reshape(y.shape[0], -1)

        run.compiled = step if variant.startswith("compiled") else None  # type: ignore[attr-defined]
        run.period = stream.temporal_stride  # type: ignore[attr-defined]
        return run
    if variant == "co":
        net = build_co(name, model)

        def run(frame: Tensor) -> Tensor | None:
            y = net.forward_step(frame)
            return None if not isinstance(y, Tensor) else y.reshape(y.shape[0], -1)

        return run
    every = 8 if variant == "sliding/8" else 1
    frames: deque[Tensor] = deque(maxlen=window)
    counter = [0]

    def run(frame: Tensor) -> Tensor | None:
        frames.append(frame)
        counter[0] += 1
        if len(frames) < window or counter[0] % every:
            return None
        return last_position_logits(name, model, torch.stack(list(frames), dim=2))

    return run


# ---------------------------------------------------------------- one child process per measurement


def _mem_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0])
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _pin(task: dict[str, Any]) -> None:
    """Same threads and the same cores for every child (no migration between measurements)."""
    torch.set_num_threads(task["threads"])
    if task.get("cpus"):
        os.sched_setaffinity(0, task["cpus"])


def measure(task: dict[str, Any]) -> dict[str, Any]:
    """Child: build one variant, time steady-state frames, peak memory."""
    _pin(task)
    name, variant, batch, size = task["model"], task["variant"], task["batch"], task["size"]
    model = build_network(name)
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(batch, 3, task["frames"], size, size, generator=gen)
    result: dict[str, Any] = {"model": name, "variant": variant, "batch": batch}
    run = make_runner(variant, name, model, task["window"])  # setup (convert) outside the timed region
    with torch.inference_mode():
        outputs = []
        warm = task["warmup"]
        t0 = time.perf_counter()
        for t in range(warm):
            outputs.append(run(frames[:, :, t]))
        compiled = getattr(run, "compiled", None)
        if compiled is not None:
            # Layers behind a temporal stride leave warm-up late (their delays count in their own,
            # slower frames), so new phases keep appearing after the network's delay: step on
            # until two whole periods replay compiled graphs only, so no eager step or
            # compilation lands in the timed frames.
            quiet, t = 0, 0
            while quiet < 2 * run.period and t < 100 * run.period:
                before = (compiled.compilations, compiled.eager_steps)
                run(frames[:, :, t % warm])
                quiet = quiet + 1 if (compiled.compilations, compiled.eager_steps) == before else 0
                t += 1
            result["extra_warmup_frames"] = t
            result["compilations"] = compiled.compilations
        result["warmup_s"] = time.perf_counter() - t0
        if task.get("check"):
            result["outputs"] = [None if o is None else o.tolist() for o in outputs]
        gc.collect()
        base = _mem_kib()["VmRSS"]
        peak_ok = _reset_peak()
        times = []
        for t in range(warm, task["frames"]):
            t0 = time.perf_counter()
            run(frames[:, :, t])
            times.append(time.perf_counter() - t0)
    mem = _mem_kib()
    result["ms"] = [1e3 * x for x in times]
    result["peak_mib"] = round((mem["VmHWM"] - base) / 1024, 1) if peak_ok else None
    result["model_rss_mib"] = round(base / 1024, 1)
    return result


def run_child(task: dict[str, Any], fn: Any = measure) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, (task,))


# ---------------------------------------------------------------- checks and report


def check_outputs(name: str, size: int, window: int, frames: int, threads: int,
                  variants: list[str]) -> dict[str, float]:
    """Max |difference| between what each variant computes and the offline network (BN unfolded).

    - ``folded``: the BN-folded network every contender runs equals the unfolded one, per position;
    - ``clplat`` / ``compiled``: every stepped output equals the offline output for its position
      (``offline_positions`` on the whole stream so far), warm-up included;
    - ``co``: its steady-state outputs (after its pooling window filled) equal the same positions;
    - ``sliding``: its last-position output on a window equals the offline network's last
      position on that window.
    """
    torch.set_num_threads(threads)
    offline, model = build_offline(name), build_network(name)
    clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    runners = {v: make_runner(v, name, model, window) for v in (*MINE, "co")
               if v == "clplat" or v in variants}
    errs: dict[str, float] = {}

    def close(variant: str, got: Tensor, want: Tensor) -> None:
        if got.shape != want.shape or got.numel() == 0:
            raise AssertionError(f"{name}/{variant}: outputs {tuple(got.shape)} vs {tuple(want.shape)} expected")
        errs[variant] = float((got - want).abs().max())
        if errs[variant] > 1e-3 * float(want.abs().max()) + 1e-6:
            raise AssertionError(f"{name}/{variant}: outputs differ from the offline network by {errs[variant]}")

    with torch.inference_mode():
        ref = offline_positions(name, offline, clip)[0].T  # (P, K)
        close("folded", offline_positions(name, model, clip)[0].T, ref)
        outs = {v: [o for o in (run(clip[:, :, t]) for t in range(frames)) if o is not None]
                for v, run in runners.items()}
        n = len(outs["clplat"])
        close("clplat", torch.cat(outs["clplat"]), ref[:n])
        for v in [v for v in MINE[1:] if v in outs]:
            close(v, torch.cat(outs[v]), ref[: len(outs[v])])
        if "co" in outs:
            m = min(len(outs["co"]), n - (HEAD_WINDOW[name] - 1))  # align the ends; skip the head's warm-up
            close("co", torch.cat(outs["co"][-m:]), ref[n - m: n])
        last = clip[:, :, -window:]
        close("sliding", last_position_logits(name, model, last), offline_positions(name, offline, last)[..., -1])
    errs["positions_checked"] = float(n)
    return errs


def _stats(ms: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(ms), "p50": statistics.median(ms), "min": min(ms)}


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["x3d_s", "r2plus1d_18"])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpus", type=int, nargs="+", default=None,
                   help="CPU ids every child is pinned to (default: the first --threads allowed CPUs)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=24, help="timed steady-state frames for step methods")
    p.add_argument("--variants", nargs="+",
                   default=["clplat", "compiled", "fused", "compiled_fused", "co", "sliding", "sliding/8"],
                   help="clplat, compiled, fused, compiled_fused (x3d_s only), co, sliding, sliding/8 "
                        "(r2plus1d_18 only); clplat is the reference")
    p.add_argument("--no-batch8", action="store_true", help="skip the 8-streams-batched measurement")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    if args.cpus is None:
        args.cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    return args


def _peak(args: argparse.Namespace) -> dict[str, float]:
    return run_child({"threads": args.threads, "cpus": args.cpus}, measure_peak)


def _time_variants(name: str, args: argparse.Namespace, variants: list[str]) -> dict[str, dict[str, Any]]:
    """Batch 1: ``rounds`` interleaved rounds (variant order the same each round, every variant in
    its own fresh child), medians/means over all timed frames."""
    warm = 40 if name == "x3d_s" else 72  # past the delay (28 / 54 frames) and two stride periods
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            sliding = v.startswith("sliding")  # its warm-up is one full window (one recompute)
            steps = args.steps if not sliding else (4 if v == "sliding" else 16)
            w0 = args.window if sliding else warm
            task = {"model": name, "variant": v, "batch": 1, "size": args.size, "window": args.window,
                    "frames": w0 + steps, "warmup": w0, "threads": args.threads, "cpus": args.cpus}
            runs[v].append(run_child(task))
    per = {}
    for v in variants:
        ms = [x for r in runs[v] for x in r["ms"]]
        per[v] = {**_stats(ms), "peak_mib": statistics.median(r["peak_mib"] or 0 for r in runs[v]),
                  "n": len(ms), "warmup_s": statistics.median(r["warmup_s"] for r in runs[v]),
                  "rss_mib": statistics.median(r["model_rss_mib"] for r in runs[v])}
    return per


def _batched(name: str, args: argparse.Namespace, variants: list[str]) -> dict[str, dict[str, float]]:
    """8 streams stepped as one batch (frames/s over all streams)."""
    warm = 40 if name == "x3d_s" else 72
    multi = {}
    for v in [v for v in (*MINE, "co") if v in variants]:
        task = {"model": name, "variant": v, "batch": 8, "size": args.size, "window": args.window,
                "frames": warm + max(8, args.steps // 2), "warmup": warm, "threads": args.threads,
                "cpus": args.cpus}
        r = run_child(task)
        mean_s = statistics.fmean(r["ms"]) / 1e3
        multi[v] = {"step_ms": mean_s * 1e3, "frames_per_s": 8 / mean_s, "peak_mib": r["peak_mib"]}
    return multi


def _print_model(name: str, per: dict[str, dict[str, Any]], arith: dict[str, float], floor_ms: float,
                 peak: float) -> None:
    print(f"arithmetic: {arith['step_macs'] / 1e6:.1f} M multiply-adds per input frame (network, steady "
          f"state); floor at this run's peak {peak:.1f} GMAC/s: {floor_ms:.3f} ms. Sliding window: "
          f"{arith['sliding_macs'] / 1e6:.0f} M per output ({arith['sliding_macs'] / arith['step_macs']:.1f}x)")
    print("| method | per-frame ms (mean) | p50 | x floor (mean) | peak extra MiB | process RSS MiB | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for v, r in per.items():
        print(f"| {v} | {r['mean']:.2f} | {r['p50']:.2f} | {r['mean'] / floor_ms:.1f} | {r['peak_mib']:.1f} "
              f"| {r['rss_mib']:.0f} | {r['warmup_s']:.1f} |")
    for mine in [v for v in MINE if v in per]:
        for base in [v for v in per if v not in MINE]:
            p50 = per[base]["p50"] / per[mine]["p50"]
            print(f"{mine} vs {base}: {per[base]['mean'] / per[mine]['mean']:.1f}x faster (mean), "
                  + (f"{p50:.1f}x (p50); " if p50 > 0 else "")
                  + f"peak memory {per[base]['peak_mib']:.1f} vs {per[mine]['peak_mib']:.1f} MiB")


def main() -> None:
    args = _parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"# stream_step: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.threads} threads pinned to CPUs {args.cpus}, batch 1, {args.size}x{args.size}, "
          f"window {args.window}, load avg {os.getloadavg()[0]:.1f}")
    peaks = [_peak(args)]
    report: dict[str, Any] = {"cpu": cpu, "threads": args.threads, "cpus": args.cpus, "size": args.size,
                              "window": args.window, "models": {}}
    results = {}
    for name in args.models:
        # past the delay (28 / 54 frames) and, for the compiled step, two periods of its phases
        check_frames = 48 if name == "x3d_s" else 80
        variants = [v for v in args.variants if (v != "sliding/8" or name == "r2plus1d_18")
                    and (v not in FUSED or name == "x3d_s")]
        errs = check_outputs(name, args.size, args.window, check_frames, args.threads, variants)
        print(f"\n## {name}: outputs equal to the offline network (max |diff|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items() if k != "positions_checked")
              + f"; {int(errs['positions_checked'])} stepped positions)")
        per = _time_variants(name, args, variants)
        multi = {} if args.no_batch8 else _batched(name, args, variants)
        results[name] = (errs, per, multi, arithmetic(name, args.size, args.window))
    peaks.append(_peak(args))  # again at the end: the floor uses the best rate seen in this run
    gemm, conv = max(p["gemm_gmacs"] for p in peaks), max(p["conv_gmacs"] for p in peaks)
    # A conv far above the GEMM rate is doing fewer multiplies than it counts (oneDNN's Winograd):
    # not a multiply-add rate, so the floor keeps the GEMM's then.
    peak = gemm if conv > 1.5 * gemm else max(gemm, conv)
    print(f"\npeak fp32 multiply-adds (best of start/end): GEMM 512^3 {gemm:.1f} GMAC/s, conv 64->64 3x3 "
          f"56x56 {conv:.1f} GMAC/s; the floor uses {peak:.1f}"
          + (" (conv > 1.5x GEMM: a fast conv algorithm, not a multiply-add rate)" if conv > 1.5 * gemm else ""))
    for name, (errs, per, multi, arith) in results.items():
        floor_ms = arith["step_macs"] / (peak * 1e9) * 1e3
        print(f"\n## {name}")
        _print_model(name, per, arith, floor_ms, peak)
        if multi:
            print("8 streams batched: " + ", ".join(
                f"{v} {r['frames_per_s']:.1f} frames/s ({r['step_ms']:.1f} ms per batched step)"
                for v, r in multi.items())
                + "; 1 stream: " + ", ".join(f"{v} {1e3 / per[v]['mean']:.1f} frames/s" for v in multi))
        report["models"][name] = {"max_abs_diff": errs, "batch1": per, "batch8": multi, "arithmetic": arith,
                                  "floor_ms": floor_ms,
                                  "x_floor": {v: per[v]["mean"] / floor_ms for v in per}}
    report["peak"] = {"runs": peaks, "floor_gmacs": peak}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
