"""GPU check of the streaming runtime: equivalence on CUDA, batch-1 latency, multi-stream throughput.

    python benchmarks/gpu_bench.py [--device cuda] [--json out.json] [--budget 240]
    python benchmarks/gpu_bench.py --device cpu --tiny          # smoke run of every code path

For X3D-S (``x3d_s``) and torchvision's ``r2plus1d_18`` (random seeded weights, randomised BN
statistics, eval; networks and baselines from ``benchmarks/stream_step.py``) it runs:

1. **Equivalence**: a stream of frames through each variant against the offline network's
   per-position outputs on the same device (fp32 with TF32 off; bf16 against the fp32 reference
   with a stated tolerance), and continual-inference 1.2.4 on its steady-state outputs.
2. **Latency, batch 1**: per-frame time, each frame synchronised (CUDA events around one step:
   host launch gaps included); medians over the timed frames, after warm-up and capture.
3. **Throughput, many streams** (``--streams``, 64): one batched step per frame, timed over whole
   stride periods without synchronising; frames/s summed over the streams.

Variants: ``eager`` (``stream.step``: cuDNN convs and the Triton conv epilogue), ``graph`` /
``graph-bf16`` (``clplat.streaming.cuda_graph``), ``graph+inductor`` (Inductor phases replayed as
CUDA graphs), ``sliding`` (the offline net recomputed on the last ``--window`` frames every frame;
BN folded, as for every contender), ``sliding-graph`` (the same recompute captured as one CUDA
graph: the strongest form of that baseline) and ``co`` (continual-inference 1.2.4, if importable).
Each section is guarded: a failure is recorded and the rest runs. The JSON is rewritten after
every measurement; a short table is printed last. On CPU (``--device cpu``) graph capture is
emulated (the recorded step re-runs), so only the code paths, not the timings, mean anything.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stream_step as ss  # noqa: E402  (networks, offline references, co builders)

from clplat.streaming import compile_step  # noqa: E402
from clplat.streaming.cuda_graph import CudaGraphStep  # noqa: E402

# stream_step.py names the sliding window's work ``last_position_logits`` (``clip_logits`` before)
_window_logits = getattr(ss, "last_position_logits", None) or ss.clip_logits
BF16_TOL = 5e-2  # bf16 vs fp32 offline: max |diff| / max |ref| (8 mantissa bits through ~60 layers)
FP32_TOL = 1e-4


class _EmulatedGraphStep(CudaGraphStep):
    """CPU smoke runs only: "capture" keeps the function, "replay" runs it again."""

    def _pick_device(self, module: nn.Module) -> torch.device:
        return torch.device("cpu")

    def _warm(self, fn: Any) -> Any:
        with torch.inference_mode():
            out, data, key = fn()
        return (None if out is None else out.clone()), [d.clone() for d in data], key

    def _record(self, fn: Any) -> Any:
        return fn


# ---------------------------------------------------------------- contenders


def fold_bn(model: nn.Module) -> nn.Module:
    """Every ``Conv3d`` followed (in registration order, possibly as the last leaf of a preceding
    container) by a ``BatchNorm3d`` gets the BN folded in; the BN becomes ``Identity``. Covers
    torchvision's video ResNets and clplat's X3D."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def last_conv(m: nn.Module) -> tuple[nn.Module, str, nn.Conv3d] | None:
        kids = list(m.named_children())
        if not kids:
            return None
        name, child = kids[-1]
        if isinstance(child, nn.Conv3d):
            return m, name, child
        return last_conv(child) if isinstance(child, nn.Sequential) else None

    for parent in list(model.modules()):
        kids = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(kids, kids[1:]):
            if not isinstance(b, nn.BatchNorm3d):
                continue
            owner, conv_name, conv = (parent, name_a, a) if isinstance(a, nn.Conv3d) else (last_conv(a) or (None,) * 3)
            if conv is None:
                continue
            setattr(owner, conv_name, fuse_conv_bn_eval(conv, b))
            setattr(parent, name_b, nn.Identity())
    return model


class Runner:
    """``run(frame) -> logits (B, K) | None`` with its own stream state, plus what it was built from."""

    def __init__(self, fn: Any, step: Any = None, period: int = 1) -> None:
        self.fn, self.step, self.period = fn, step, period

    def __call__(self, frame: Tensor) -> Tensor | None:
        return self.fn(frame)


def make_runner(variant: str, name: str, model: nn.Module, dev: torch.device, window: int) -> Runner:
    if variant in ("eager", "compiled") or variant.startswith("graph"):
        stream = ss.build_clplat(name, model).to(dev)
        if variant == "eager":
            step: Any = stream.step
        elif variant == "compiled":
            step = compile_step(stream)
        else:
            cls = CudaGraphStep if dev.type == "cuda" else _EmulatedGraphStep
            dtype = torch.bfloat16 if variant.endswith("bf16") else None
            step = cls(stream, dtype=dtype, compile="inductor" in variant)
        box: list[Any] = [None]

        def run(frame: Tensor) -> Tensor | None:
            y, box[0] = step(frame, box[0])
            return None if y is None else y.reshape(y.shape[0], -1)

        return Runner(run, step, stream.temporal_stride)
    if variant == "co":
        net = ss.build_co(name, model).to(dev)

        def run_co(frame: Tensor) -> Tensor | None:
            y = net.forward_step(frame)
            return y.reshape(y.shape[0], -1) if isinstance(y, Tensor) else None

        return Runner(run_co)
    if variant == "sliding":
        frames: collections.deque[Tensor] = collections.deque(maxlen=window)

        def run_sliding(frame: Tensor) -> Tensor | None:
            frames.append(frame)
            return _window_logits(name, model, torch.stack(list(frames), 2)) if len(frames) == window else None

        return Runner(run_sliding)
    if variant == "sliding-graph":
        return _sliding_graph(name, model, dev, window)
    raise ValueError(variant)


def _sliding_graph(name: str, model: nn.Module, dev: torch.device, window: int) -> Runner:
    """The window recompute as one CUDA graph: shift the static window, append the frame, run the net."""
    box: dict[str, Any] = {"seen": 0}

    def body() -> Tensor:
        win = box["win"]
        win.copy_(torch.cat([win[:, :, 1:], box["frame"].unsqueeze(2)], 2))
        return _window_logits(name, model, win)

    def run(frame: Tensor) -> Tensor | None:
        if "win" not in box:
            box["win"] = torch.zeros(frame.shape[0], frame.shape[1], window, *frame.shape[2:], device=dev)
            box["frame"] = torch.empty_like(frame)
        box["frame"].copy_(frame)
        box["seen"] += 1
        if box["seen"] < window:
            body()
            return None
        if "replay" not in box:
            if dev.type == "cuda":
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                saved = box["win"].clone()
                with torch.cuda.stream(side):
                    body()  # warm-up (cuDNN plans) ...
                torch.cuda.current_stream().wait_stream(side)
                box["win"].copy_(saved)  # ... then undo its shift
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = body()
                box["replay"] = lambda: (graph.replay(), out)[1]
                box["graph"] = graph
            else:
                box["replay"] = body
        return box["replay"]()

    return Runner(run)


# ---------------------------------------------------------------- timing


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _settle(runner: Runner, frames: Tensor, start: int) -> int:
    """Step on until two whole periods pass with no capture/compilation/eager step; returns the
    next frame index (new phases keep appearing after the delay behind temporal strides)."""
    step = runner.step
    if step is None or not hasattr(step, "eager_steps"):
        return start
    quiet, t, period = 0, start, runner.period
    count = lambda: (getattr(step, "captures", 0), getattr(step, "compilations", 0), step.eager_steps)  # noqa: E731
    while quiet < 2 * period and t - start < 60 * period:
        before = count()
        runner(frames[t % frames.shape[0]])
        quiet = quiet + 1 if count() == before else 0
        t += 1
    return t


def time_runner(runner: Runner, frames: Tensor, warm: int, n: int, dev: torch.device, sync_each: bool) -> dict:
    """Per-frame ms: each frame synchronised (latency) or ``n`` frames back to back (throughput)."""
    with torch.inference_mode():
        for t in range(warm):
            runner(frames[t % frames.shape[0]])
        t0 = _settle(runner, frames, warm)
        n = -(-n // runner.period) * runner.period  # whole stride periods
        _sync(dev)
        ms: list[float] = []
        if sync_each:
            for t in range(t0, t0 + n):
                ms.append(_elapsed(dev, lambda t=t: runner(frames[t % frames.shape[0]])))
            return {"p50": statistics.median(ms), "mean": statistics.fmean(ms), "max": max(ms), "n": n}
        total = _elapsed(dev, lambda: [runner(frames[t % frames.shape[0]]) for t in range(t0, t0 + n)])
        return {"mean": total / n, "n": n}


def _elapsed(dev: torch.device, fn: Any) -> float:
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


# ---------------------------------------------------------------- sections


def check_equivalence(name: str, model: nn.Module, dev: torch.device, variants: list[str], a: argparse.Namespace,
                      out: dict) -> None:
    """Max |diff| / max |ref| of every emitted output vs the offline network, per variant."""
    delay = ss.build_clplat(name, model).delay
    stride = ss.build_clplat(name, model).temporal_stride
    frames = delay + stride * a.outputs
    clip = torch.randn(1, 3, frames, a.size, a.size, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.inference_mode():
        ref = ss.offline_positions(name, model, clip)[0].T  # (P, K)
    scale = float(ref.abs().max())
    for v in variants:
        entry = out.setdefault(v, {})
        try:
            runner = make_runner(v, name, model, dev, a.window)
            with torch.inference_mode():
                got = [y.clone() for y in (runner(clip[:, :, t]) for t in range(frames)) if y is not None]
            if v == "co":  # its last outputs are the stream's last positions, past the head's window warm-up
                m = min(len(got), a.outputs - ss.HEAD_WINDOW[name] + 1)
                if m <= 0:
                    raise RuntimeError(f"co emitted {len(got)} outputs, none past its head's warm-up")
                got, want = torch.cat(got[-m:]), ref[a.outputs - m: a.outputs]
            else:
                want = ref[: len(got)]
                got = torch.cat(got)
            err = float((got.float() - want).abs().max()) / scale
            tol = BF16_TOL if v.endswith("bf16") else FP32_TOL
            top1 = float((got.float().argmax(-1) == want.argmax(-1)).float().mean())
            entry.update(rel_err=err, tol=tol, ok=err <= tol, outputs=len(want), top1_agree=top1)
            print(f"  {name:12s} {v:15s} rel err {err:.2e} (tol {tol:g}) over {len(want)} outputs, "
                  f"top-1 agree {top1:.2f} {'ok' if err <= tol else 'FAIL'}")
        except Exception as err:  # recorded, the rest goes on
            entry["error"] = f"{type(err).__name__}: {err}"[:500]
            print(f"  {name:12s} {v:15s} ERROR {entry['error']}")
            traceback.print_exc()


def measure(name: str, model: nn.Module, dev: torch.device, variants: list[str], batch: int, a: argparse.Namespace,
            out: dict, deadline: float) -> None:
    gen = torch.Generator().manual_seed(2)
    frames = torch.randn(a.pool, batch, 3, a.size, a.size, generator=gen).to(dev)
    stream = ss.build_clplat(name, model)
    warm = stream.delay + 2 * stream.temporal_stride + 2
    key = "b1" if batch == 1 else f"b{batch}"
    for v in variants:
        entry = out.setdefault(v, {})
        if time.monotonic() > deadline:
            entry[key] = {"skipped": "time budget"}
            continue
        try:
            if dev.type == "cuda":
                gc.collect()  # the previous variant's graphs and buffers (closures hold cycles)
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            runner = make_runner(v, name, model, dev, a.window)
            w = a.window + 2 if v.startswith("sliding") else warm
            n = a.steps if batch == 1 else a.steps_multi
            r = time_runner(runner, frames, w, n, dev, sync_each=batch == 1)
            if dev.type == "cuda":
                r["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            r["frames_per_s"] = batch * 1e3 / r["mean"]
            entry[key] = r
            print(f"  {name:12s} {v:15s} batch {batch:3d}: {r['mean']:.3f} ms/frame "
                  + (f"(p50 {r['p50']:.3f}) " if "p50" in r else "") + f"{r['frames_per_s']:.0f} frames/s")
            del runner
        except Exception as err:
            entry[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
            print(f"  {name:12s} {v:15s} batch {batch}: ERROR {entry[key]['error']}")
            traceback.print_exc()


def profile_kernels(name: str, model: nn.Module, dev: torch.device, a: argparse.Namespace, out: dict) -> None:
    """GPU kernels per frame (count, summed kernel time, by kind) of the eager step and of one
    sliding-window recompute at batch 1: a graph replay costs about these kernels back to back, so
    the count times the per-kernel floor bounds it from below."""
    from torch.profiler import ProfilerActivity, profile

    frames = torch.randn(8, 1, 3, a.size, a.size, device=dev)
    for v in ("eager", "sliding"):
        runner = make_runner(v, name, model, dev, a.window)
        stream = ss.build_clplat(name, model)
        n = stream.temporal_stride * 2 if v == "eager" else 2  # whole periods / two recomputes
        with torch.inference_mode():
            for t in range(stream.delay + 2 * stream.temporal_stride + a.window):
                runner(frames[t % 8])
            _sync(dev)
            activity = ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU  # CPU: smoke only
            with profile(activities=[activity]) as prof:
                for t in range(n):
                    runner(frames[t % 8])
                _sync(dev)
        kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        for e in prof.events():
            if str(getattr(e, "device_type", "")).endswith("CUDA"):
                us = float(getattr(e, "device_time", 0.0) or getattr(e, "cuda_time", 0.0))
                low = e.name.lower()
                kind = ("triton" if "triton" in low or "epilogue" in low else
                        "conv/gemm" if any(k in low for k in ("conv", "gemm", "xmma", "sm90", "cudnn", "implicit",
                                                              "cutlass", "wgrad", "dgrad", "fprop")) else
                        "copy" if "copy" in low or "memcpy" in low or "cat" in low else "other")
                kinds[kind][0] += 1 / n
                kinds[kind][1] += us / n
        total = [sum(k[0] for k in kinds.values()), sum(k[1] for k in kinds.values())]
        out.setdefault(v, {})["kernels_per_frame"] = {"total": total, **{k: list(x) for k, x in kinds.items()}}
        print(f"  {name:12s} {v:8s} {total[0]:.0f} kernels/frame, {total[1]:.0f} us of kernel time/frame; "
              + ", ".join(f"{k} {x[0]:.0f} ({x[1]:.0f} us)" for k, x in sorted(kinds.items())))
        del runner


def ceilings(dev: torch.device) -> dict[str, float]:
    """Measured matrix-product rates (bf16; fp32 with TF32 off) on this device, TFLOP/s."""
    res = {}
    n = 8192 if dev.type == "cuda" else 256
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(n, n, device=dev, dtype=dtype)
        y = torch.randn(n, n, device=dev, dtype=dtype)
        x @ y
        reps = 10 if dev.type == "cuda" else 2
        ms = _elapsed(dev, lambda x=x, y=y, reps=reps: [x @ y for _ in range(reps)]) / reps
        res[f"matmul_{str(dtype).split('.')[-1]}_tflops"] = 2 * n**3 / ms / 1e9
    return res


# ---------------------------------------------------------------- main


def _write(path: str | None, report: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(tmp, path)


def _table(report: dict, streams: int) -> None:
    print(f"\n# GPU check summary ({report['env'].get('device', '?')})")
    print(f"| model | variant | rel err | batch-1 ms/frame p50 | mean | {streams}-stream frames/s "
          f"| peak MiB ({streams}) |")
    print("|---|---|---|---|---|---|---|")
    for name, per in report["models"].items():
        for v, e in per.items():
            b1, bn = e.get("b1", {}), e.get(f"b{streams}", {})
            err = f"{e['rel_err']:.1e}" if "rel_err" in e else ("err" if "error" in e else "-")
            p50 = f"{b1['p50']:.3f}" if "p50" in b1 else ("err" if "error" in b1 else "-")
            mean = f"{b1['mean']:.3f}" if "mean" in b1 else "-"
            fps = f"{bn['frames_per_s']:.0f}" if "frames_per_s" in bn else ("err" if "error" in bn else "-")
            print(f"| {name} | {v} | {err} | {p50} | {mean} | {fps} | {bn.get('peak_mib', '-')} |")
        best = min(((e["b1"]["p50"], v) for v, e in per.items() if "p50" in e.get("b1", {}) and not v.startswith(
            ("sliding", "co")) and not v.endswith("bf16")), default=None)
        for base in ("sliding", "sliding-graph", "co"):
            if best and "p50" in per.get(base, {}).get("b1", {}):
                print(f"{name}: {best[1]} vs {base} at batch 1: {per[base]['b1']['p50'] / best[0]:.1f}x faster (p50)")
        fps = [(e[f"b{streams}"]["frames_per_s"], v) for v, e in per.items()
               if "frames_per_s" in e.get(f"b{streams}", {})]
        if fps:
            top = max(fps)
            print(f"{name}: best {streams}-stream throughput {top[0]:.0f} frames/s ({top[1]})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="small frames and counts (smoke run)")
    p.add_argument("--models", nargs="+", default=["x3d_s", "r2plus1d_18"])
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--streams", type=int, default=None)
    p.add_argument("--budget", type=float, default=240.0, help="seconds; later measurements are skipped past it")
    p.add_argument("--no-inductor", action="store_true", help="skip the Inductor variants (compilation time)")
    p.add_argument("--inductor-models", nargs="+", default=["x3d_s"],
                   help="models for the Inductor variants (r2plus1d_18 has 8 phases to compile)")
    p.add_argument("--sections", nargs="+", default=["equivalence", "batch1", "streams", "profile", "inductor"])
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (all contenders)")
    p.add_argument("--json")
    a = p.parse_args()
    a.size = a.size or (32 if a.tiny else 112)
    a.streams = a.streams or (2 if a.tiny else 64)
    a.outputs, a.steps, a.steps_multi, a.pool = (10, 6, 4, 4) if a.tiny else (16, 64, 32, 16)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda requested but CUDA is not available (use --device cpu --tiny)")
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 (equivalence at 1e-4)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    t_start = time.monotonic()
    deadline = t_start + a.budget
    import triton  # noqa: PLC0415

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "size": a.size, "window": a.window,
           "streams": a.streams, "tf32": False, "cudnn_benchmark": a.cudnn_benchmark}
    if dev.type == "cuda":
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = f"CPU ({platform.processor() or 'unknown'}; graph capture emulated)"
    try:
        import continual

        env["continual_inference"] = getattr(continual, "__version__", "?")
        has_co = True
    except ImportError:
        has_co = False
    report: dict[str, Any] = {"env": env, "models": {}}
    with contextlib.suppress(Exception):
        env.update(ceilings(dev))
    print("# env " + json.dumps(env))
    _write(a.json, report)
    base = ["eager", "graph", "graph-bf16"]
    inductor = [] if a.no_inductor else ["graph+inductor", "compiled"]
    baselines = ["sliding", "sliding-graph"] + (["co"] if has_co else [])
    models = {}
    for name in a.models:
        try:
            fold = getattr(ss, "fold_batchnorm", None) or fold_bn  # one folding for every contender
            models[name] = fold(copy.deepcopy(ss.build_offline(name))).to(dev)
            # the folded network must still be the same function
            x = torch.randn(1, 3, 20, a.size, a.size, device=dev)
            with torch.inference_mode():
                d = (ss.offline_positions(name, models[name], x) - ss.offline_positions(name, ss.build_offline(name)
                                                                                       .to(dev), x)).abs().max()
            assert float(d) < 1e-3, f"BN folding changed {name} by {float(d)}"
        except Exception as err:
            report["models"][name] = {"setup": {"error": f"{type(err).__name__}: {err}"[:500]}}
            traceback.print_exc()
    logging.getLogger("continual").setLevel(logging.ERROR)  # its per-layer "temporal stride" notices
    sections = [
        ("equivalence", lambda n, m, out: check_equivalence(n, m, dev, base + ["co"] * has_co, a, out)),
        ("batch1", lambda n, m, out: measure(n, m, dev, base + baselines, 1, a, out, deadline)),
        ("streams", lambda n, m, out: measure(n, m, dev, base + baselines, a.streams, a, out, deadline)),
        ("profile", lambda n, m, out: profile_kernels(n, m, dev, a, out)),
        ("inductor", lambda n, m, out: (check_equivalence(n, m, dev, inductor, a, out),
                                        measure(n, m, dev, inductor, 1, a, out, deadline),
                                        measure(n, m, dev, inductor[:1], a.streams, a, out, deadline))),
    ]
    for title, fn in [(t, f) for t, f in sections if t in a.sections]:
        print(f"\n## {title} ({time.monotonic() - t_start:.0f} s)")
        for name, model in models.items():
            if title == "inductor" and (not inductor or name not in a.inductor_models
                                        or time.monotonic() > deadline - 60):
                print(f"  {name}: inductor variants skipped (time budget or --no-inductor)")
                continue
            try:
                fn(name, model, report["models"].setdefault(name, {}))
            except Exception:
                traceback.print_exc()
            _write(a.json, report)
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    _write(a.json, report)
    try:
        _table(report, a.streams)
    except Exception:
        traceback.print_exc()


if __name__ == "__main__":
    main()
