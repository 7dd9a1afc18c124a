"""Shape-aware floor of a streaming step: every GEMM / conv one steady step runs, timed alone.

    python benchmarks/stream_floor.py [--models x3d_s r2plus1d_18] [--size 112] [--cpus 0] [--json f]
    python benchmarks/stream_floor.py --size 32 --quick            # smoke

Why: the arithmetic floor of ``stream_step.py`` (multiply-adds / the core's best GEMM rate)
assumes every multiply-add runs at a 512^3 GEMM's rate; a stream step's GEMMs have 16-784 rows.
This script records, with a ``TorchDispatchMode``, every matmul / convolution (and every
``depthwise_taps`` call: clplat's depthwise temporal conv) that one steady-state step executes
with its exact arguments, for the eager step and for the step as recorded for the compiler
(``clplat.kernels.tracing``: what Inductor receives), over one period of the network's temporal
stride (per-frame averages). Each distinct op (same op, shapes, strides) is then timed alone,
pinned, 1 thread, best of N, as recorded and through cheap alternatives (GEMM: the weight in the
other layout, MKL's packed linear as Inductor's freezing uses it, oneDNN's 1x1 conv on
channels-last rows; grouped conv: channels-last, clplat's shifted taps; depthwise taps: clplat's
eager shifted multiply-adds ("recorded", also for the traced step), oneDNN's grouped conv, and
the taps' traced form compiled by Inductor on its own, as the compiled step fuses them).

The *per-op floor* is the sum of count x best time: the step with zero cost between ops, given
the libraries' kernels at those shapes, with everything in cache (best of N). The same sum
with the weights cold (the best kernel timed after writing ``--flush-mib`` MiB, its activations
read back in) shows what a step pays when its weights (X3D-S: ~15 MB a frame) cannot stay in
the caches between frames; the same calls run back to back in the step's order add the real
sequence's cache traffic. The per-op floor can be *below* the peak-rate floor: oneDNN's 3x3 convs
use fast algorithms (Winograd-class: fewer multiplies than counted). Element-wise ops
(everything else but views) are timed the same way and reported apart (their time is mostly the
per-call cost the compiled step removes). Same networks and BN folding as ``stream_step.py``;
the eager and compiled steps (x3d_s: also with the fused C++ X3D blocks, ``fused`` /
``compiled_fused``) are timed by ``stream_step.measure`` in a pinned child.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stream_nets  # noqa: E402
from stream_nets import arithmetic, build_network  # noqa: E402
from stream_step import _pin, measure, measure_peak, run_child  # noqa: E402

import clplat.streaming.conv as stream_conv  # noqa: E402
from clplat.kernels import tracing  # noqa: E402
from clplat.kernels.conv_step_cpu import _taps_out_of_place, depthwise_taps  # noqa: E402

aten = torch.ops.aten
GEMMS = {aten.mm.default: "mm", aten.addmm.default: "addmm", aten.bmm.default: "bmm",
         aten.baddbmm.default: "baddbmm", aten.convolution.default: "conv",
         aten.conv2d.default: "conv", aten.linear.default: "linear"}  # the last two: seen in inference mode
WARMUP = {"x3d_s": 40, "r2plus1d_18": 80}  # past the delay (28 / 54 frames) and late strided phases


def build_clplat(name: str, model: torch.nn.Module) -> Any:
    """``stream_nets.build_clplat`` with X3D blocks and stem on their Python step: the recorder has
    to see each library call (the fused C++ block step is one opaque call; it is timed apart)."""
    from clplat.streaming.models.x3d import X3DBlockStream, X3DStemStream

    stream = stream_nets.build_clplat(name, model)
    for block in stream.modules():
        if isinstance(block, (X3DBlockStream, X3DStemStream)):
            block.cpp_step = False
    return stream


def op_macs(kind: str, args: tuple, out: torch.Tensor) -> int:
    """Multiply-adds of one recorded op, from its shapes."""
    if kind == "conv":  # (x, w, bias, stride, padding, dilation, transposed, ...): see ``_as_convolution``
        assert not args[6], "transposed convolutions are not counted"
        return out.numel() * args[1][0].numel()
    if kind == "linear":
        return out.numel() * args[1].shape[1]
    if kind == "taps":  # out (B, H'W', k, C); one multiply-add per kernel offset per output
        kh, kw = args[3]
        return out.numel() * kh * kw
    a, b = (args[0], args[1]) if kind in ("mm", "bmm") else (args[1], args[2])
    return a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)


class Recorder(TorchDispatchMode):
    """Every non-view aten op (and every ``depthwise_taps`` call as one op) with its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self._in_taps = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not self._in_taps and not func.is_view and func not in (aten.detach.default, aten.lift_fresh.default):
            kind = GEMMS.get(func, "other")
            if func is aten.conv2d.default:
                func, args, kwargs = aten.convolution.default, _as_convolution(args, kwargs or {}), {}
            macs = op_macs(kind, args, out) if kind != "other" else 0
            self.calls.append({"kind": kind, "func": func, "args": args, "kwargs": kwargs or {}, "macs": macs})
        return out

    def taps(self, *args: Any) -> Any:
        self._in_taps += 1
        try:
            out = depthwise_taps(*args)
        finally:
            self._in_taps -= 1
        self.calls.append({"kind": "taps", "func": depthwise_taps, "args": args, "kwargs": {},
                           "macs": op_macs("taps", args, out)})
        return out


def warm_state(stream: Any, frames: torch.Tensor, warm: int) -> Any:
    """The stream's state after ``warm`` eager steps (past its delay: steady state)."""
    state = None
    with torch.inference_mode():
        for t in range(warm):
            _, state = stream.step(frames[:, :, t], state)
    return state


def record(stream: Any, frames: torch.Tensor, warm: int, state: Any, traced: bool) -> tuple[list[dict], int]:
    """The ops of ``stream.temporal_stride`` steps from frame ``warm`` on (``state``: after
    ``warm_state``), and that count; ``traced``: as recorded for the compiler."""
    period = max(1, stream.temporal_stride)
    rec = Recorder()
    stream_conv.depthwise_taps = rec.taps
    try:
        with torch.inference_mode(not traced), torch.no_grad():
            if traced:  # fresh, normal tensors, as CompiledStep records them
                state = torch.utils._pytree.tree_map(lambda x: x.clone(), state)
            ctx = tracing() if traced else torch.inference_mode()
            with ctx, rec:
                for t in range(warm, warm + period):
                    _, state = stream.step(frames[:, :, t], state)
    finally:
        stream_conv.depthwise_taps = depthwise_taps
    return rec.calls, period


def _as_convolution(args: tuple, kwargs: dict) -> tuple:
    """``aten.conv2d``'s arguments (defaults filled) as ``aten.convolution``'s."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    full = dict(zip(names, (None, None, None, [1, 1], [0, 0], [1, 1], 1)))
    full.update(zip(names, args))
    full.update(kwargs)
    pad = full["padding"]
    assert not isinstance(pad, str), "string padding is not supported"
    two = [list(v) if isinstance(v, list | tuple) else [v, v] for v in (full["stride"], pad, full["dilation"])]
    return (full["input"], full["weight"], full["bias"], *two, False, [0, 0], full["groups"])


def _desc(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), a.stride())
    if isinstance(a, list | tuple):
        return tuple(_desc(x) for x in a)
    return a if isinstance(a, int | float | bool | str | type(None)) else str(a)


def group(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identical ops (same function, argument shapes and strides) merged, with their count."""
    groups: dict[Any, dict[str, Any]] = {}
    for c in calls:
        key = (str(c["func"]), _desc(c["args"]), _desc(tuple(sorted(c["kwargs"].items()))))
        g = groups.setdefault(key, {**c, "count": 0, "key": key})
        g["count"] += 1
        c["group"] = g
    return list(groups.values())


_INDUCTOR: dict[Any, Any] = {}  # compiled depthwise taps per shape (shared by the eager and traced groups)


def inductor_taps(x: torch.Tensor, weight: list[torch.Tensor], acc: Any, spatial: tuple) -> Any:
    """The depthwise taps as the compiled step runs them: ``_taps_out_of_place`` (the form the
    step is recorded in) compiled by Inductor on its own, weights as inputs; compiled on first call."""
    w = torch.stack(list(weight))
    x, acc = x.contiguous(), None if acc is None else acc.contiguous()  # the compiled step's buffers are dense
    key = (x.shape, w.shape, None if acc is None else acc.shape, spatial)

    def run() -> Any:
        if key not in _INDUCTOR:
            from torch._inductor.compile_fx import compile_fx
            from torch.fx.experimental.proxy_tensor import make_fx

            def f(x: torch.Tensor, w: torch.Tensor, *acc: torch.Tensor) -> torch.Tensor:
                return _taps_out_of_place(x, list(w.unbind(0)), acc[0] if acc else None, spatial)

            ex = [t.clone() for t in (x, w, *([] if acc is None else [acc]))]
            with torch.inference_mode(False):
                gm = make_fx(f)(*ex)
                for node in gm.graph.nodes:  # as CompiledStep does: Inductor re-derives them
                    node.meta.pop("val", None)
                    node.meta.pop("tensor_meta", None)
                _INDUCTOR[key] = compile_fx(gm, ex, config_patches={"cpp_wrapper": True})
        return _INDUCTOR[key](x, w, *([] if acc is None else [acc]))

    return run


def alternatives(g: dict[str, Any], inductor: bool = True) -> dict[str, Any]:
    """Callables computing the same multiply-adds at this shape: as recorded, and cheap variants."""
    func, args, kw, kind = g["func"], g["args"], g["kwargs"], g["kind"]
    alts = {"recorded": lambda: func(*args, **kw)}
    if kind in ("mm", "addmm", "linear"):
        if kind == "linear":  # (x, w[N, K], bias): rows of x times w.T
            a, b = args[0].reshape(-1, args[1].shape[1]), args[1].t()
            bias = args[2] if len(args) > 2 else None
        else:
            a, b = (args[0], args[1]) if kind == "mm" else (args[1], args[2])
            bias = args[0] if kind == "addmm" and args[0].dim() == 1 else None
        m, k = a.shape
        b_kn, b_nk = b.contiguous(), b.t().contiguous()
        alts["mm_w_kn"] = lambda: torch.mm(a, b_kn)
        alts["mm_w_nk"] = lambda: torch.mm(a, b_nk.t())
        if torch._C.has_mkl:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(b_nk, m)
            alts["mkl_packed"] = lambda: torch.ops.mkl._mkl_linear(a, packed, b_nk, bias, m)
        x_cl = a.contiguous().reshape(1, 1, m, k).permute(0, 3, 1, 2)  # (1, K, 1, M) channels-last
        w11 = b_nk.reshape(*b_nk.shape, 1, 1)
        alts["onednn_1x1_cl"] = lambda: F.conv2d(x_cl, w11, bias)
    elif kind == "conv" and args[0].dim() == 4 and not args[6]:
        x, w, bias, stride, padding, dilation, _, _, groups = args
        x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        alts["onednn_cl"] = lambda: F.conv2d(x_cl, w_cl, bias, stride, padding, dilation, groups)
        if torch.backends.mkldnn.is_available():  # the weight pre-packed, as Inductor's freezing does
            geo = [list(padding), list(stride), list(dilation)]
            try:
                wp = torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), *geo, groups, list(x.shape))
                alts["onednn_packed"] = lambda: torch.ops.mkldnn._convolution_pointwise(
                    x_cl, wp, bias, *geo, groups, "none", [], "")
            except RuntimeError:  # a conv oneDNN does not pre-pack: the other alternatives stand
                pass
        c = x.shape[1]
        if groups == c > 1 and w.shape[0] % c == 0 and w.shape[1] == 1:  # depthwise taps: clplat's shifts
            k = w.shape[0] // c
            x_hwc = x.permute(0, 2, 3, 1).contiguous()
            wt = w.reshape(c, k, -1).permute(2, 1, 0).contiguous()
            spatial = (tuple(w.shape[2:]), tuple(stride), tuple(padding), tuple(dilation))
            alts["clplat_shift"] = lambda: depthwise_taps(x_hwc, list(wt.unbind(0)), None, *spatial)
    elif kind == "taps":
        x, weight, acc, kernel, stride, padding, dilation = args
        k, c = weight[0].shape
        x_nchw, x_cl = x.permute(0, 3, 1, 2).contiguous(), x.contiguous().permute(0, 3, 1, 2)
        wd = torch.randn(c * k, 1, *kernel)
        alts["onednn_grouped"] = lambda: F.conv2d(x_nchw, wd, None, stride, padding, dilation, c)
        alts["onednn_grouped_cl"] = lambda: F.conv2d(x_cl, wd, None, stride, padding, dilation, c)
        if inductor:
            alts["inductor_fused"] = inductor_taps(x, weight, acc, (kernel, stride, padding, dilation))
    return alts


def best_time(fn: Any, reps: int, budget_s: float, before: Any = None) -> float:
    """Best wall time of ``reps`` calls (fewer, at least 3, once ``budget_s`` is spent), each
    after ``before()`` (untimed) if given."""
    fn()
    fn()
    best, start = float("inf"), time.perf_counter()
    for i in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return best


def weight_bytes(g: dict[str, Any]) -> int:
    """Bytes of the op's weights (what a step streams through the caches once per call)."""
    args, kind = g["args"], g["kind"]
    w = {"mm": 1, "addmm": 2, "linear": 1, "conv": 1}.get(kind)
    if kind == "taps":
        return sum(t.numel() * t.element_size() for t in args[1])
    return 0 if w is None else args[w].numel() * args[w].element_size()


def activations(g: dict[str, Any]) -> list[torch.Tensor]:
    """The op's per-frame inputs (not its weights): what a real step has just written, so in cache."""
    args, kind = g["args"], g["kind"]
    if kind in ("mm", "linear", "conv"):
        return [args[0]]
    if kind == "addmm":
        return [args[1]] + ([args[0]] if args[0].dim() == 2 else [])  # a 2-D addend: the residual
    if kind == "taps":
        return [args[0]] + ([args[2]] if args[2] is not None else [])
    return [a for a in args if isinstance(a, torch.Tensor)]


def best_time_weights_cold(fn: Any, acts: list[torch.Tensor], flush: torch.Tensor, reps: int) -> float:
    """Best time after writing ``flush`` and reading the activations back in: the weights come
    from the shared cache or memory, as in a step whose weights (X3D-S: ~15 MB) exceed the L2."""
    return best_time(fn, max(3, reps // 3), 1.0, lambda: (flush.add_(1.0), [a.sum() for a in acts]))


def time_groups(groups: list[dict[str, Any]], reps: int, budget_s: float, flush_mib: tuple[float, ...] = (),
                inductor: bool = False) -> None:
    """Each group's best time per alternative (``g['times']``), the winner, and for each size in
    ``flush_mib`` (GEMMs / convs / taps only) the winner's time after writing that many MiB."""
    flushes = {m: torch.zeros(int(m * 2**18)) for m in flush_mib if m > 0}
    with torch.inference_mode():
        for g in groups:
            g["times"] = {}
            alts = g["alts"] = alternatives(g, inductor)
            for name, fn in alts.items():
                try:
                    g["times"][name] = best_time(fn, reps, budget_s)
                except Exception as err:  # an alternative the library refuses at this shape
                    g["times"][name + " (failed)"] = float("nan")
                    g.setdefault("errors", []).append(f"{name}: {str(err).splitlines()[0][:80]}")
            ok = {k: v for k, v in g["times"].items() if v == v} or {"failed": 0.0}
            g["best_name"], g["best_s"] = min(ok.items(), key=lambda kv: kv[1])
            g["times"].setdefault("recorded", 0.0)
            g["cold_s"] = {m: best_time_weights_cold(alts[g["best_name"]], activations(g), f, reps)
                           for m, f in flushes.items() if g["kind"] != "other" and g["best_name"] in alts}


def sequence_ms(calls: list[dict[str, Any]], reps: int) -> float:
    """Best time of all GEMM / conv / taps calls of the recorded steps run back to back in their
    order, each through its group's best kernel: the per-op floor with the real sequence's cache
    traffic (each op's weights evicted by the ops in between), plus ~1 µs of Python per call."""
    seq = [c["group"]["alts"][c["group"]["best_name"]] for c in calls
           if c["kind"] != "other" and c["group"]["best_name"] in c["group"]["alts"]]
    def run() -> None:
        for fn in seq:  # each output freed at once, as in a step (a list of them all was ~2x slower:
            fn()        # fresh memory for every output, page faults included)

    with torch.inference_mode():
        return best_time(run, max(5, reps // 2), 2.0) * 1e3


def call_overhead(reps: int) -> float:
    """Best time of one trivial aten call from Python (``aten.alias``): the per-call floor of any op."""
    x = torch.zeros(1)
    return best_time(lambda: aten.alias.default(x), reps * 10, 0.2)


def summarize(groups: list[dict[str, Any]], period: int) -> dict[str, Any]:
    """Per-frame sums (counts / period) and the top shapes by time."""
    heavy = [g for g in groups if g["kind"] != "other"]
    rows = sorted(heavy, key=lambda g: -g["count"] * g["best_s"])
    per = defaultdict(float)
    for g in groups:
        part = "other" if g["kind"] == "other" else "ops"
        per[f"{part}_best_ms"] += g["count"] * g["best_s"] * 1e3 / period
        per[f"{part}_recorded_ms"] += g["count"] * g["times"]["recorded"] * 1e3 / period
        per[f"{part}_calls"] += g["count"] / period
        per[f"{part}_weight_mb"] += g["count"] * weight_bytes(g) / 1e6 / period
        for m, t in g["cold_s"].items():
            per[f"{part}_cold{m:g}_ms"] += g["count"] * t * 1e3 / period
        per[f"{g['kind']}_macs"] += g["count"] * g["macs"] / period
    top = [{"op": g["kind"], "shapes": g["key"][1], "count_per_frame": g["count"] / period,
            "macs": g["macs"], "best": g["best_name"], "best_us": g["best_s"] * 1e6,
            "recorded_us": g["times"]["recorded"] * 1e6, "errors": g.get("errors", []),
            "cold_us": {m: t * 1e6 for m, t in g["cold_s"].items()}, "gmacs": g["macs"] / g["best_s"] / 1e9,
            "ms_per_frame": g["count"] * g["best_s"] * 1e3 / period, "times_us":
            {k: v * 1e6 for k, v in g["times"].items()}} for g in rows]
    per["macs"] = sum(g["count"] * g["macs"] for g in heavy) / period
    per["failed"] = sum(g["best_name"] == "failed" for g in groups)
    return {**per, "distinct_ops": len(heavy), "distinct_other": len(groups) - len(heavy), "top": top}


def _step_ms(name: str, variant: str, args: argparse.Namespace) -> float:
    """Mean per-frame time of the eager / compiled step (``stream_step.measure``, pinned child)."""
    warm = 40 if name == "x3d_s" else 72
    task = {"model": name, "variant": variant, "batch": 1, "size": args.size, "window": args.window,
            "frames": warm + args.steps, "warmup": warm, "threads": 1, "cpus": args.cpus}
    return statistics.fmean(run_child(task, measure)["ms"])


def analyse(name: str, args: argparse.Namespace, reps: int, budget: float) -> dict[str, Any]:
    stream = build_clplat(name, build_network(name))
    warm = WARMUP[name]
    frames = torch.randn(1, 3, warm + 8, args.size, args.size, generator=torch.Generator().manual_seed(1))
    out: dict[str, Any] = {"arithmetic": arithmetic(name, args.size, args.window)}
    state = warm_state(stream, frames, warm)
    for mode in ("eager", "traced"):
        calls, period = record(stream, frames, warm, state, traced=mode == "traced")
        groups = group(calls)
        time_groups(groups, reps, budget, tuple(args.flush_mib), not args.no_inductor)
        out[mode] = summarize(groups, period)
        out[mode]["sequence_ms"] = sequence_ms(calls, reps) / period
    if not args.no_steps:
        fused = ("fused", "compiled_fused") if name == "x3d_s" and not args.no_fused else ()
        out["step_ms"] = {v: _step_ms(name, v, args) for v in ("clplat", "compiled", *fused)}
    return out


def report(name: str, r: dict[str, Any], peak: float, overhead_us: float, top_n: int) -> None:
    macs = r["arithmetic"]["step_macs"]
    floor = macs / peak / 1e6
    print(f"\n## {name}: {macs / 1e6:.1f} M multiply-adds per frame; peak-rate floor {floor:.3f} ms "
          f"at {peak:.1f} GMAC/s")
    for mode, label in (("eager", "eager step"), ("traced", "step as compiled (graph given to Inductor)")):
        s = r[mode]
        gemm = s.get("mm_macs", 0) + s.get("addmm_macs", 0) + s.get("linear_macs", 0)
        cold = "".join(f"weights cold after {k[8:-3]} MiB written: {v:.3f} ms ({v / floor:.2f}x); "
                       for k, v in s.items() if k.startswith("ops_cold"))  # ops_cold{MiB}_ms
        print(f"{label}: {s['ops_calls']:.0f} GEMM/conv/taps calls per frame ({s['distinct_ops']} distinct), "
              f"{s['macs'] / 1e6:.1f} M MACs recorded (mm/addmm/linear {gemm / 1e6:.1f} M, conv "
              f"{s.get('conv_macs', 0) / 1e6:.1f} M, depthwise taps {s.get('taps_macs', 0) / 1e6:.1f} M), weights "
              f"read {s['ops_weight_mb']:.1f} MB; per-op floor {s['ops_best_ms']:.3f} ms with the best kernel "
              f"({s['ops_recorded_ms']:.3f} ms as recorded) = {s['ops_best_ms'] / floor:.2f}x the peak-rate floor; "
              f"{cold}all of them back to back in the step's order {s['sequence_ms']:.3f} ms "
              f"({s['sequence_ms'] / floor:.2f}x); other ops {s['other_calls']:.0f} calls, {s['other_best_ms']:.3f} ms "
              f"({s['other_calls'] * overhead_us / 1e3:.3f} ms of it per-call floor)")
    if "step_ms" in r:
        eager, comp = r["step_ms"]["clplat"], r["step_ms"]["compiled"]
        print(f"eager step {eager:.3f} ms = {eager / floor:.2f}x peak floor, {eager / r['eager']['ops_best_ms']:.2f}x "
              f"per-op floor; compiled step {comp:.3f} ms = {comp / floor:.2f}x peak floor, "
              f"{comp / r['traced']['ops_best_ms']:.2f}x per-op floor (2x peak floor = {2 * floor:.3f} ms)")
        for v in [v for v in ("fused", "compiled_fused") if v in r["step_ms"]]:  # the fused C++ X3D blocks
            t = r["step_ms"][v]
            print(f"{v} step (X3D blocks as one C++ call each) {t:.3f} ms = {t / floor:.2f}x peak floor")
    print("| op | shapes (args) | per frame | M MACs | best | best µs | as recorded µs | GMAC/s | ms/frame "
          "| weights-cold µs (MiB written) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in r["traced"]["top"][:top_n]:
        shapes = [s[0] for s in t["shapes"] if isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], tuple)]
        cold = ", ".join(f"{v:.1f} ({m:g})" for m, v in t["cold_us"].items())
        print(f"| {t['op']} | {shapes} | {t['count_per_frame']:.2f} | {t['macs'] / 1e6:.2f} | {t['best']} | "
              f"{t['best_us']:.1f} | {t['recorded_us']:.1f} | {t['gmacs']:.1f} | {t['ms_per_frame']:.3f} | {cold} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["x3d_s", "r2plus1d_18"])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--cpus", type=int, nargs="+", default=None, help="CPU ids (default: the first allowed)")
    p.add_argument("--steps", type=int, default=24, help="timed frames of the eager / compiled step")
    p.add_argument("--no-steps", action="store_true", help="skip timing the eager / compiled steps")
    p.add_argument("--no-fused", action="store_true",
                   help="skip timing the steps with the fused C++ X3D blocks (fused, compiled_fused)")
    p.add_argument("--quick", action="store_true", help="few repetitions (smoke)")
    p.add_argument("--flush-mib", type=float, nargs="*", default=[8.0, 64.0],
                   help="MiB written before each weights-cold timing (> the core's L2 keeps the shared "
                        "cache; > the shared cache: weights from memory); none: skip")
    p.add_argument("--no-inductor", action="store_true",
                   help="skip compiling each depthwise-taps shape with Inductor (a few s per shape)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    args.cpus = args.cpus or sorted(os.sched_getaffinity(0))[:1]
    reps, budget = (3, 0.05) if args.quick else (30, 1.0)
    task = {"threads": 1, "cpus": args.cpus}
    _pin(task)
    torch.set_flush_denormal(True)  # replayed in-place ops drift; keep denormals out of the timings
    print(f"# stream_floor: torch {torch.__version__}, 1 thread pinned to CPUs {args.cpus}, batch 1, "
          f"{args.size}x{args.size}, load avg {os.getloadavg()[0]:.1f}")
    peaks = [measure_peak(task)]
    results = {name: analyse(name, args, reps, budget) for name in args.models}
    peaks.append(measure_peak(task))
    gemm, conv = max(q["gemm_gmacs"] for q in peaks), max(q["conv_gmacs"] for q in peaks)
    peak = gemm if conv > 1.5 * gemm else max(gemm, conv)  # the same rule as stream_step.py
    overhead = call_overhead(reps) * 1e6
    print(f"peak: GEMM 512^3 {gemm:.1f}, conv 3x3 {conv:.1f} GMAC/s (floor uses {peak:.1f}); "
          f"one trivial aten call from Python {overhead:.2f} µs")
    for name, r in results.items():
        report(name, r, peak, overhead, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peaks": peaks, "peak_gmacs": peak, "call_overhead_us": overhead, "size": args.size,
                       "cpus": args.cpus, "models": results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
