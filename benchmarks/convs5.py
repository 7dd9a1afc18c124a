"""ConvS5 vs ConvLSTM stacks at the same parameter count: training step, per-frame step, memory.

    python benchmarks/convs5.py [--lengths 16 64 256] [--channels 32] [--grid 16] [--layers 2]
                                [--batch 2] [--threads 2] [--rounds 3] [--device cpu|cuda]
                                [--scan chunked|assoc|both] [--json out.json]

The stacks are the recurrent part of ``clplat.streaming.models.convs5_predictor`` (``layers``
post-norm ``PredictorLayer`` blocks on a ``grid`` x ``grid`` latent with ``channels`` channels),
without the frame encoder/decoder, which costs the same for both. ConvLSTM has hidden =
``channels``; ConvS5's ``state_channels`` P is chosen so both stacks have the same number of
parameters (within 1 %), unless ``--state-channels`` fixes it.

- (a) training step: forward over a ``(batch, channels, T, grid, grid)`` clip + backward of a
  mean loss, for each ``T`` (ConvS5: parallel scan, ``--scan`` picks the solver, ``both`` times
  each as its own row; ConvLSTM: its recurrence over time);
- (b) per-frame step latency at batch 1 under ``torch.no_grad`` (what a stream pays per frame);
- (c) memory: on CPU the rise of the peak resident set (``VmHWM``, reset before the measured
  first call) in a fresh child process per measurement; on CUDA ``torch.cuda.max_memory_allocated``.

Before timing, each stack's parallel form is checked against its step-by-step form. Medians of
``rounds`` repetitions are reported; variants alternate within each round so a noisy machine
hurts them alike. Figures taken on a busy machine mean nothing: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, installed or not

from clplat.streaming.models.convs5_predictor import PredictorLayer, count_parameters  # noqa: E402

KINDS = ("convs5", "convlstm")


def build_stack(kind: str, channels: int, layers: int, state_channels: int, scan: str = "chunked") -> nn.ModuleList:
    """``kind`` is ``convs5``, ``convlstm`` or ``convs5-assoc`` (ConvS5 with the associative scan)."""
    torch.manual_seed(0)
    core = "convs5" if kind.startswith("convs5") else kind
    stack = nn.ModuleList(PredictorLayer(channels, core, state_channels) for _ in range(layers))  # type: ignore[arg-type]
    for layer in stack:
        if core == "convs5":
            layer.core.scan = "assoc" if kind == "convs5-assoc" else scan
    return stack


def matched_state_channels(channels: int, layers: int) -> int:
    """The even P whose ConvS5 stack is closest in size to the ConvLSTM stack."""
    target = count_parameters(build_stack("convlstm", channels, layers, 2))
    return min(range(2, 16 * channels + 1, 2),
               key=lambda p: abs(count_parameters(build_stack("convs5", channels, 1, p)) * layers - target))


def _run_stack(stack: nn.ModuleList, clip: torch.Tensor) -> torch.Tensor:
    for layer in stack:
        clip = layer(clip)
    return clip


def _step_stack(stack: nn.ModuleList, frame: torch.Tensor, states: list) -> torch.Tensor:
    for i, layer in enumerate(stack):
        frame, states[i] = layer.step(frame, states[i])
    return frame


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> int:
    """Reset the peak-memory counter; returns the current level (bytes)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _vm("VmHWM")


def _peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else _vm("VmHWM")


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One (stack, length) measurement; runs in a fresh process (its own peak memory)."""
    torch.set_num_threads(job["threads"])
    dev, c, g = job["device"], job["channels"], job["grid"]
    stack = build_stack(job["kind"], c, job["layers"], job["state_channels"], job["scan"]).to(dev)
    clip = torch.randn(job["batch"], c, job["length"], g, g, device=dev)
    if job["mode"] == "train":
        base = _reset_peak(dev)
        _run_stack(stack, clip).mean().backward()  # warm-up (allocator, oneDNN plans); its peak counts
        peak = _peak(dev) - base
        stack.zero_grad()
        times = []
        for _ in range(job["repeats"]):
            _sync(dev)
            t0 = time.perf_counter()
            _run_stack(stack, clip).mean().backward()
            _sync(dev)
            times.append(time.perf_counter() - t0)
            stack.zero_grad()
        return {"seconds": statistics.median(times), "peak_bytes": peak}
    frame = torch.randn(1, c, g, g, device=dev)
    states = [None] * len(stack)
    with torch.no_grad():
        for _ in range(5):
            _step_stack(stack, frame, states)
        times = []
        for _ in range(job["repeats"]):
            _sync(dev)
            t0 = time.perf_counter()
            _step_stack(stack, frame, states)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times)}


def check_equivalence(args: argparse.Namespace, p: int) -> dict[str, float]:
    """Max |parallel form - step-by-step form| of each stack on a short clip."""
    out = {}
    for kind in _kinds(args):
        stack = build_stack(kind, args.channels, args.layers, p, args.scan).to(args.device)
        clip = torch.randn(1, args.channels, 9, args.grid, args.grid, device=args.device)
        with torch.no_grad():
            full = _run_stack(stack, clip)
            states: list = [None] * len(stack)
            steps = torch.stack([_step_stack(stack, clip[:, :, t], states) for t in range(9)], 2)
        out[kind] = float((full - steps).abs().max())
        if out[kind] > 1e-4:
            raise SystemExit(f"{kind}: parallel and step forms differ by {out[kind]:.2e}")
    return out


def _kinds(args: argparse.Namespace) -> tuple[str, ...]:
    return ("convs5", "convs5-assoc", "convlstm") if args.scan == "both" else KINDS


def _in_child(job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(measure, (job,))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--state-channels", type=int, default=None, help="ConvS5 P (default: matched size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-repeats", type=int, default=50)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--scan", choices=["chunked", "assoc", "both"], default="chunked",
                   help="ConvS5 parallel solver (both: 'convs5' is chunked, 'convs5-assoc' the associative scan)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pstate = args.state_channels or matched_state_channels(args.channels, args.layers)
    sizes = {k: count_parameters(build_stack(k, args.channels, args.layers, pstate)) for k in KINDS}
    diffs = check_equivalence(args, pstate)
    print(f"stacks: {args.layers} layers, {args.channels} ch, {args.grid}x{args.grid}, batch {args.batch}; "
          f"parameters ConvS5 (P={pstate}) {sizes['convs5']}, ConvLSTM {sizes['convlstm']}; "
          f"parallel vs step max|diff| {diffs}")
    base = {"device": args.device, "channels": args.channels, "grid": args.grid, "layers": args.layers,
            "batch": args.batch, "state_channels": pstate, "threads": args.threads,
            "scan": "chunked" if args.scan == "both" else args.scan}
    results: dict[str, Any] = {"config": base, "parameters": sizes, "equivalence": diffs, "train": {}, "step": {}}
    for t in args.lengths:
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in _kinds(args)}
        for _ in range(args.rounds):
            for kind in _kinds(args):
                runs[kind].append(_in_child({**base, "kind": kind, "mode": "train", "length": t, "repeats": 1}))
        row = {k: {"seconds": statistics.median(r["seconds"] for r in v),
                   "peak_mb": statistics.median(r["peak_bytes"] for r in v) / 2**20} for k, v in runs.items()}
        row["speedup"] = row["convlstm"]["seconds"] / row["convs5"]["seconds"]
        results["train"][t] = row
        print(f"train T={t:4d}: ConvS5 {row['convs5']['seconds'] * 1e3:9.1f} ms {row['convs5']['peak_mb']:8.1f} MB | "
              f"ConvLSTM {row['convlstm']['seconds'] * 1e3:9.1f} ms {row['convlstm']['peak_mb']:8.1f} MB | "
              f"ConvLSTM/ConvS5 time {row['speedup']:.2f}x")
        if "convs5-assoc" in row:
            row["speedup_assoc"] = row["convlstm"]["seconds"] / row["convs5-assoc"]["seconds"]
            print(f"             ConvS5 associative scan {row['convs5-assoc']['seconds'] * 1e3:9.1f} ms "
                  f"{row['convs5-assoc']['peak_mb']:8.1f} MB | ConvLSTM/ConvS5-assoc time {row['speedup_assoc']:.2f}x")
    for kind in KINDS:
        r = [_in_child({**base, "kind": kind, "mode": "step", "length": 1, "repeats": args.step_repeats})
             for _ in range(args.rounds)]
        results["step"][kind] = {"ms_per_frame": statistics.median(x["seconds"] for x in r) * 1e3}
        print(f"step {kind}: {results['step'][kind]['ms_per_frame']:.3f} ms/frame (batch 1)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
