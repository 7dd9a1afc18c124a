"""Per-block time of the x3d_s step: X3D blocks (and the stem) on the Python step vs the C++ step.

    python benchmarks/x3d_block_step.py [--size 112] [--cpus 0] [--rounds 5] [--steps 20]
    python benchmarks/x3d_block_step.py --size 32 --rounds 1 --steps 4      # smoke

Why: ``stream_step.py`` times whole steps; this shows where a step's time goes block by block,
against each block's arithmetic floor (its multiply-adds at the machine's peak, measured in the
same run). One steady stream (same network and BN folding as ``stream_step.py``) runs ``rounds``
interleaved rounds of ``steps`` frames with the blocks and the stem (``X3DStemStream``) on the
Python step, then on the C++ step (the state carries over between paths); every block's, the
stem's and the head's ``_step`` is timed in the stream (weights and activations as cold as the
real sequence leaves them), medians over all rounds. Also: the whole step, and the part outside
the blocks (stem, head, containers). Pinned, 1 thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_nets import build_clplat, build_network  # noqa: E402
from stream_step import _pin, measure_peak  # noqa: E402

from clplat.kernels import x3d_block_cpu  # noqa: E402
from clplat.streaming.models.x3d import X3DBlockStream  # noqa: E402


def block_macs(block: X3DBlockStream, frame_hw: tuple[int, int]) -> int:
    """Multiply-adds of one block step on an input map ``frame_hw`` (1x1 convs, taps, SE)."""
    conv_a, conv_b, se, conv_c = block._fused_parts()
    h, w = frame_hw
    ho, wo = conv_b._out_hw(h, w)
    k, kh, kw = conv_b.kernel_size
    macs = h * w * conv_a.in_channels * conv_a.out_channels + ho * wo * conv_b.out_channels * k * kh * kw
    macs += ho * wo * conv_c.in_channels * conv_c.out_channels
    shortcut = block._shortcut_conv()
    if shortcut is not None:
        macs += ho * wo * shortcut.in_channels * shortcut.out_channels
    if se is not None:
        macs += 2 * se[0].in_channels * se[0].out_channels
    return macs


def stem_macs(stem: torch.nn.Module, frame_hw: tuple[int, int]) -> int:
    """Multiply-adds of one stem step: the spatial conv, then the depthwise temporal taps."""
    spatial, temporal = stem._mods()
    ho, wo = spatial._out_hw(*frame_hw)
    k, kh, kw = spatial.kernel_size
    return ho * wo * spatial.out_channels * spatial.in_channels * kh * kw + ho * wo * temporal.out_channels * (
        temporal.kernel_size[0])


def _timed_part(step: object, name: str, stem: torch.nn.Module, times: dict) -> object:
    """``step`` timed into ``times[(stem.cpp_step, name)]`` (the blocks follow the stem's switch)."""

    def timed(frame: torch.Tensor, state: object) -> object:
        t0 = time.perf_counter()
        out = step(frame, state)  # type: ignore[operator]
        times[(stem.cpp_step, name)].append(time.perf_counter() - t0)
        return out

    return timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--cpus", type=int, nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    task = {"threads": 1, "cpus": args.cpus or sorted(os.sched_getaffinity(0))[:1]}
    _pin(task)
    if not x3d_block_cpu.available():
        raise SystemExit("the fused X3D block step cannot be built here")
    peak = measure_peak(task)["gemm_gmacs"]
    stream = build_clplat("x3d_s", build_network("x3d_s"))
    blocks = [m for m in stream.modules() if isinstance(m, X3DBlockStream)]
    warm = 40
    frames = torch.randn(1, 3, warm + 2 * args.rounds * args.steps, args.size, args.size,
                         generator=torch.Generator().manual_seed(1))
    times: dict[tuple, list[float]] = defaultdict(list)
    in_hw: dict[int, tuple[int, int]] = {}
    real_step = X3DBlockStream._step

    def timed(self: X3DBlockStream, frame: torch.Tensor, state: object) -> object:
        t0 = time.perf_counter()
        out = real_step(self, frame, state)
        times[(self.cpp_step, id(self))].append(time.perf_counter() - t0)
        in_hw[id(self)] = tuple(frame.shape[2:])
        return out

    X3DBlockStream._step = timed  # type: ignore[method-assign]
    for name in ("stem", "head"):  # instance attributes shadow the class's _step in the chain walk
        module = getattr(stream, name)
        module._step = _timed_part(module._step, name, stream.stem, times)
    t = 0
    with torch.inference_mode():
        state = None
        for t in range(warm):
            _, state = stream.step(frames[:, :, t], state)
        t = warm
        for _ in range(args.rounds):
            for cpp in (False, True):
                for b in (*blocks, stream.stem):
                    b.cpp_step = cpp
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    _, state = stream.step(frames[:, :, t], state)
                    times[(cpp, "step")].append(time.perf_counter() - t0)
                    t += 1
    X3DBlockStream._step = real_step  # type: ignore[method-assign]
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(f"# x3d_block_step: torch {torch.__version__}, 1 thread pinned to CPUs {task['cpus']}, batch 1, "
          f"{args.size}x{args.size}, {args.rounds} rounds x {args.steps} frames per path, load avg "
          f"{os.getloadavg()[0]:.1f}; GEMM peak {peak:.1f} GMAC/s")
    print("| block | channels in/inner/out | map | SE | M MACs | floor µs | Python µs | fused µs | Python / fused "
          "| fused x floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = defaultdict(float)
    for i, b in enumerate(blocks):
        conv_a, conv_b, se, conv_c = b._fused_parts()
        macs = block_macs(b, in_hw[id(b)])
        floor = macs / peak / 1e3
        py, cpp = med[(False, id(b))], med[(True, id(b))]
        totals["floor"] += floor
        totals["py"] += py
        totals["cpp"] += cpp
        print(f"| {i} | {conv_a.in_channels}/{conv_a.out_channels}/{conv_c.out_channels} | "
              f"{in_hw[id(b)][0]}x{in_hw[id(b)][1]}/s{conv_b.stride[1]} | {'yes' if se else 'no'} | {macs / 1e6:.2f} | "
              f"{floor:.0f} | {py:.0f} | {cpp:.0f} | {py / cpp:.2f} | {cpp / floor:.2f} |")
    print(f"| all blocks | | | | | {totals['floor']:.0f} | {totals['py']:.0f} | {totals['cpp']:.0f} | "
          f"{totals['py'] / totals['cpp']:.2f} | {totals['cpp'] / totals['floor']:.2f} |")
    stem_floor = stem_macs(stream.stem, (args.size, args.size)) / peak / 1e3
    print(f"stem: floor {stem_floor:.0f} µs, Python {med[(False, 'stem')]:.0f} µs, C++ {med[(True, 'stem')]:.0f} µs "
          f"({med[(False, 'stem')] / med[(True, 'stem')]:.2f}x); head {med[(False, 'head')]:.0f} / "
          f"{med[(True, 'head')]:.0f} µs")
    step_py, step_cpp = med[(False, "step")], med[(True, "step")]
    print(f"whole step (median): Python blocks and stem {step_py / 1e3:.3f} ms, C++ {step_cpp / 1e3:.3f} ms "
          f"({step_py / step_cpp:.2f}x); outside the blocks {(step_py - totals['py']) / 1e3:.3f} / "
          f"{(step_cpp - totals['cpp']) / 1e3:.3f} ms")


if __name__ == "__main__":
    main()
