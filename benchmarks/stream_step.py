"""Per-frame cost of streaming video inference on CPU: clplat ``step`` vs two baselines.

    python benchmarks/stream_step.py [--models x3d_s r2plus1d_18] [--size 112] [--window 16]
                                     [--threads 2] [--rounds 3] [--json out.json]

For each network (X3D-S-like ``x3d_s`` and torchvision ``r2plus1d_18``, random weights from one
seed, eval mode) it measures, at batch 1, ``size`` x ``size`` RGB frames:

- ``clplat``: ``clplat.streaming.convert(model).step`` once per frame (explicit state).
- ``compiled``: the same step through ``clplat.streaming.compile_step`` (Inductor, C++ on CPU);
  its one-off compilation happens during warm-up and is reported apart (``warm-up s``).
- ``sliding``: the offline model recomputed on the last ``window`` frames at every frame.
  For r2plus1d_18 (temporal stride 8, so a stream emits every 8th frame) it also reports
  ``sliding/8``: the recompute only every 8th frame, i.e. the same output rate as the stream.
- ``co``: continual-inference 1.2.4 ``forward_step`` on the same network built from ``co.Conv3d``,
  ``co.Residual``/``co.BroadcastReduce``, ``co.AdaptiveAvgPool3d`` and ``co.forward_stepping``,
  with the same weights.

Outputs are checked before timing, on one stream of frames: every clplat output equals the
offline network's output for its position (warm-up included), co's steady-state outputs equal
the same positions, and the sliding window's first full window equals them too. Each variant
runs in a fresh child process so its peak memory (rise of the resident set over the loaded
model, read from ``/proc/self/status`` after resetting the high-water mark) is its own. Rounds
alternate the variants so a noisy machine hurts them alike; medians are reported, and the
ratios compare numbers measured in this same run. Also reported: 8 streams stepped as one
batch (frames/s over all streams).
"""

from __future__ import annotations

import argparse
import copy
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

SEED = 0
NUM_CLASSES = 400
HEAD_WINDOW = {"x3d_s": 8, "r2plus1d_18": 2}  # positions the per-frame head averages


# ---------------------------------------------------------------- the networks (offline form)


def build_offline(name: str) -> nn.Module:
    """Seeded random weights and randomised BN statistics (so BN folding is really exercised)."""
    torch.manual_seed(SEED)
    if name == "x3d_s":
        from clplat.streaming.models import x3d_s

        model = x3d_s(NUM_CLASSES, head_window=HEAD_WINDOW[name], dropout=0.0)
    elif name == "r2plus1d_18":
        from torchvision.models.video import r2plus1d_18

        model = r2plus1d_18(weights=None, num_classes=NUM_CLASSES)
    else:
        raise ValueError(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
    return model.eval()


def offline_positions(name: str, model: nn.Module, clip: Tensor) -> Tensor:
    """The offline network's per-position logits ``(B, K, P)``: what a stream emits, position by position.

    x3d_s: ``forward_frames`` (causal window head). r2plus1d_18: the torchvision backbone, then the
    spatial mean, a causal average over the last ``HEAD_WINDOW`` positions, and ``fc``.
    """
    if name == "x3d_s":
        return model.forward_frames(clip)
    x = clip
    for part in (model.stem, model.layer1, model.layer2, model.layer3, model.layer4):
        x = part(x)
    s = x.mean(dim=(3, 4))  # (B, C, P)
    w = HEAD_WINDOW[name]
    count = torch.arange(1, s.shape[-1] + 1, dtype=s.dtype).clamp(max=w)
    pooled = F.pad(s, (w - 1, 0)).unfold(-1, w, 1).sum(-1) / count
    return model.fc(pooled.transpose(1, 2)).transpose(1, 2)


def clip_logits(name: str, model: nn.Module, clip: Tensor) -> Tensor:
    """The offline prediction for the newest frame of ``clip``: what the sliding window recomputes.

    x3d_s: its per-frame head at the last position. r2plus1d_18: torchvision's clip classifier
    (global average; with T=16 that is the last position of a 2-position window head).
    """
    return model.forward_frames(clip)[..., -1] if name == "x3d_s" else model(clip)


def build_clplat(name: str, model: nn.Module) -> nn.Module:
    from clplat.streaming import convert

    return convert(model, temporal_window=HEAD_WINDOW[name]).eval()


# ---------------------------------------------------------------- continual-inference equivalents


class _PerPositionHead(nn.Module):
    """``(B, C, T, 1, 1) -> (B, K, T)``: a classifier applied at every position (frame-local)."""

    def __init__(self, classify: nn.Module) -> None:
        super().__init__()
        self.classify = classify

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(x.flatten(3).mean(-1).transpose(1, 2)).transpose(1, 2)


def _co_leaf(m: nn.Module) -> nn.Module:
    import continual as co

    if isinstance(m, nn.Conv3d):
        return co.Conv3d.build_from(m, temporal_fill="zeros")
    if isinstance(m, nn.ReLU | nn.SiLU):
        return co.forward_stepping(type(m)())
    return co.forward_stepping(copy.deepcopy(m))  # BN, SE (per-frame scope): frame-local


def _co_chain(mods: list[nn.Module]) -> nn.Module:
    import continual as co

    return co.Sequential(*[_co_leaf(m) for m in mods if not isinstance(m, nn.Identity)])


def _co_residual(main: nn.Module, shortcut: list[nn.Module] | None, act: nn.Module) -> nn.Module:
    """Residual block; a strided shortcut is delayed at the input rate so both branches align."""
    import continual as co

    if not shortcut:
        return co.Sequential(co.Residual(main), _co_leaf(act))
    short = co.Sequential(co.Delay(main.delay), *[_co_leaf(m) for m in shortcut])
    return co.Sequential(co.BroadcastReduce(main, short, reduce="sum", auto_delay=False), _co_leaf(act))


def _leaves(m: nn.Module) -> list[nn.Module]:
    kids = list(m.children())
    if not kids or not isinstance(m, nn.Sequential):
        return [m]
    return [leaf for k in kids for leaf in _leaves(k)]


def build_co(name: str, model: nn.Module) -> nn.Module:
    """The same network and weights in continual-inference modules."""
    import continual as co

    w = HEAD_WINDOW[name]
    if name == "x3d_s":
        layers = [_co_chain(_leaves(model.stem))]
        for stage in model.stages:
            for blk in stage:
                main = _co_chain([m for _, m in blk.main_path()])
                short = None if blk.shortcut is None else list(blk.shortcut)
                layers.append(_co_residual(main, short, blk.act))
        h = model.head
        layers += [_co_chain([h.conv, h.bn, h.act]), co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=w)]
        head = nn.Sequential(h.proj, h.proj_act, h.fc)
    else:
        layers = [_co_chain(_leaves(model.stem))]
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for blk in layer:
                main = _co_chain(_leaves(blk.conv1) + _leaves(blk.conv2))
                short = None if blk.downsample is None else list(blk.downsample)
                layers.append(_co_residual(main, short, blk.relu))
        layers.append(co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=w))
        head = model.fc
    layers.append(co.forward_stepping(_PerPositionHead(copy.deepcopy(head))))
    return co.Sequential(*layers).eval()


# ---------------------------------------------------------------- runners (one output per frame or None)


def make_runner(variant: str, name: str, model: nn.Module, window: int) -> Any:
    """A callable ``frame (B, C, H, W) -> logits (B, K) | None`` holding its own stream state."""
    if variant in ("clplat", "compiled"):
        stream = build_clplat(name, model)
        step = stream.step
        if variant == "compiled":
            from clplat.streaming import compile_step

            step = compile_step(stream)
        box: list[Any] = [None]

        def run(frame: Tensor) -> Tensor | None:
            y, box[0] = step(frame, box[0])
            return None if y is None else y.reshape(y.shape[0], -1)

        run.compiled = step if variant == "compiled" else None  # type: ignore[attr-defined]
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
        return clip_logits(name, model, torch.stack(list(frames), dim=2))

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


def measure(task: dict[str, Any]) -> dict[str, Any]:
    """Child: build one variant, check outputs (batch 1), time steady-state frames, peak memory."""
    torch.set_num_threads(task["threads"])
    name, variant, batch, size = task["model"], task["variant"], task["batch"], task["size"]
    model = build_offline(name)
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


def run_child(task: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(measure, (task,))


# ---------------------------------------------------------------- checks and report


def check_outputs(name: str, size: int, window: int, frames: int, threads: int) -> dict[str, float]:
    """Max |difference| between what each variant computes and the offline network.

    - ``clplat``: every stepped output equals the offline network's output for its position
      (``offline_positions`` on the whole stream so far), warm-up included.
    - ``co``: its steady-state outputs (after its pooling window filled) equal the same positions.
    - ``sliding``: the clip model on a window equals clplat's converted network run offline on that
      window (so the recompute baseline and the stream compute one function with one set of weights).
    """
    torch.set_num_threads(threads)
    model = build_offline(name)
    clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    stream = build_clplat(name, model)
    runners = {v: make_runner(v, name, model, window) for v in ("clplat", "compiled", "co")}
    errs: dict[str, float] = {}

    def close(variant: str, got: Tensor, want: Tensor) -> None:
        if got.shape != want.shape or got.numel() == 0:
            raise AssertionError(f"{name}/{variant}: outputs {tuple(got.shape)} vs {tuple(want.shape)} expected")
        errs[variant] = float((got - want).abs().max())
        if errs[variant] > 1e-3 * float(want.abs().max()) + 1e-6:
            raise AssertionError(f"{name}/{variant}: outputs differ from the offline network by {errs[variant]}")

    with torch.inference_mode():
        ref = offline_positions(name, model, clip)[0].T  # (P, K)
        outs = {v: [o for o in (run(clip[:, :, t]) for t in range(frames)) if o is not None]
                for v, run in runners.items()}
        n = len(outs["clplat"])
        close("clplat", torch.cat(outs["clplat"]), ref[:n])
        close("compiled", torch.cat(outs["compiled"]), ref[: len(outs["compiled"])])
        m = min(len(outs["co"]), n - (HEAD_WINDOW[name] - 1))  # align the ends; skip the head's warm-up
        close("co", torch.cat(outs["co"][-m:]), ref[n - m: n])
        last = clip[:, :, -window:]
        close("sliding", clip_logits(name, model, last), stream.forward(last)[..., -1].reshape(1, -1))
    errs["positions_checked"] = float(n)
    return errs


def _stats(ms: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(ms), "p50": statistics.median(ms), "min": min(ms)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["x3d_s", "r2plus1d_18"])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=24, help="timed steady-state frames for step methods")
    p.add_argument("--variants", nargs="+", default=["clplat", "compiled", "co", "sliding", "sliding/8"],
                   help="clplat, compiled, co, sliding, sliding/8 (r2plus1d_18 only); clplat is the reference")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"# stream_step: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, batch 1, {args.size}x{args.size}, window {args.window}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    report: dict[str, Any] = {"cpu": cpu, "threads": args.threads, "size": args.size, "window": args.window,
                              "models": {}}
    for name in args.models:
        # past the delay (28 / 54 frames) and, for the compiled step, two periods of its phases
        check_frames = 48 if name == "x3d_s" else 80
        errs = check_outputs(name, args.size, args.window, check_frames, args.threads)
        print(f"\n## {name}: outputs equal to the offline network (max |diff|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items() if k != "positions_checked")
              + f"; {int(errs['positions_checked'])} stepped positions)")
        variants = [v for v in args.variants if v != "sliding/8" or name == "r2plus1d_18"]
        warm = 40 if name == "x3d_s" else 72  # past the delay (28 / 54 frames) and two stride periods
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                sliding = v.startswith("sliding")  # its warm-up is one full window (one recompute)
                steps = args.steps if not sliding else (4 if v == "sliding" else 16)
                w0 = args.window if sliding else warm
                task = {"model": name, "variant": v, "batch": 1, "size": args.size, "window": args.window,
                        "frames": w0 + steps, "warmup": w0, "threads": args.threads}
                runs[v].append(run_child(task))
        per = {}
        for v in variants:
            ms = [x for r in runs[v] for x in r["ms"]]
            per[v] = {**_stats(ms), "peak_mib": statistics.median(r["peak_mib"] or 0 for r in runs[v]),
                      "n": len(ms), "warmup_s": statistics.median(r["warmup_s"] for r in runs[v]),
                      "rss_mib": statistics.median(r["model_rss_mib"] for r in runs[v])}
        print("| method | per-frame ms (mean) | p50 | peak extra MiB | process RSS MiB | warm-up s |")
        print("|---|---|---|---|---|---|")
        for v in variants:
            print(f"| {v} | {per[v]['mean']:.2f} | {per[v]['p50']:.2f} | {per[v]['peak_mib']:.1f} "
                  f"| {per[v]['rss_mib']:.0f} | {per[v]['warmup_s']:.1f} |")
        for mine in [v for v in ("clplat", "compiled") if v in variants]:
            for base in [v for v in variants if v not in ("clplat", "compiled")]:
                p50 = per[base]["p50"] / per[mine]["p50"]
                print(f"{mine} vs {base}: {per[base]['mean'] / per[mine]['mean']:.1f}x faster (mean), "
                      + (f"{p50:.1f}x (p50); " if p50 > 0 else "")
                      + f"peak memory {per[base]['peak_mib']:.1f} vs {per[mine]['peak_mib']:.1f} MiB")
        multi = {}
        for v in [v for v in ("clplat", "compiled", "co") if v in variants]:
            task = {"model": name, "variant": v, "batch": 8, "size": args.size, "window": args.window,
                    "frames": warm + max(8, args.steps // 2), "warmup": warm, "threads": args.threads}
            r = run_child(task)
            mean_s = statistics.fmean(r["ms"]) / 1e3
            multi[v] = {"step_ms": mean_s * 1e3, "frames_per_s": 8 / mean_s, "peak_mib": r["peak_mib"]}
        print("8 streams batched: " + ", ".join(
            f"{v} {r['frames_per_s']:.1f} frames/s ({r['step_ms']:.1f} ms per batched step)" for v, r in multi.items())
            + "; 1 stream: " + ", ".join(f"{v} {1e3 / per[v]['mean']:.1f} frames/s" for v in multi))
        report["models"][name] = {"max_abs_diff": errs, "batch1": per, "batch8": multi}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
