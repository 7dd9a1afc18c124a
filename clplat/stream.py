"""The streaming demo: a trained clip model, converted, run frame by frame on a live source.

    python -m clplat.stream [--model NAME_OR_CHECKPOINT] [--source webcam|PATH|synthetic]
                            [--out annotated.mp4] [--stats stats.json] [--max-frames N]
                            [--device cpu|cuda] [--compile]
    python -m clplat.stream train CONFIG.yaml [key.sub=value ...]

With no arguments it plays 300 frames of held-out synthetic moving digits through the shipped
model and prints frames, latency statistics and per-frame accuracy. Each frame goes through the
model's ``step`` once (no clip recomputation). With a display the frames are shown in a window;
headless (or with ``--out``) they are drawn with prediction, confidence and latency into a video
file, and the latency statistics are written as JSON beside it. Anything a user can get wrong
(missing file, corrupt video, no camera, bad config) ends with one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clplat.errors import UserError, report_user_error

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = {
    "stream_x3d_moving_digits": "stream_x3d_moving_digits.safetensors",
    "stream_lrcn_moving_digits": "stream_lrcn_moving_digits.safetensors",
}
DEFAULT_MODEL = "stream_x3d_moving_digits"
DEFAULT_SYNTHETIC_FRAMES = 300


def resolve_model(name_or_path: str) -> Path:
    """A shipped model name or a path to a ``.safetensors`` saved by ``clplat.stream train``."""
    if name_or_path in SHIPPED:
        path = WEIGHTS_DIR / SHIPPED[name_or_path]
        if not path.is_file():
            raise UserError(f"shipped model '{name_or_path}' is missing from {WEIGHTS_DIR} "
                            "(reinstall clplat)")
        return path
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix:
        raise UserError(f"model file not found: {path}")
    raise UserError(f"unknown model '{name_or_path}' (shipped: {', '.join(SHIPPED)}; or a .safetensors path)")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine")
    return torch.device(name)


def _label_text(class_names: list[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def _show(frame: Any, lines: list[str], class_names: list[str], labelled: bool, video: Any,
          window: Any) -> bool:
    """Draw a frame into the video and/or window; False when the user closed the window."""
    from clplat.streaming.sinks import annotate

    if frame.label is not None and labelled:
        lines = [*lines, f"true {_label_text(class_names, frame.label)}"]
    drawn = annotate(frame.image, lines)
    if video is not None:
        video.write(drawn)
    return window is None or window.write(drawn)


@dataclass
class Player:
    """A loaded model ready to step: the converted network, its step function, input spec, header."""

    path: Path
    meta: dict[str, Any]
    stream: torch.nn.Module
    step: Callable[..., tuple[Any, Any]]
    compiled: Any  # CompiledStep | None
    spec: Any  # FrameSpec
    device: torch.device
    class_names: list[str]


def load_player(model: str, device_name: str, use_compile: bool) -> Player:
    """Resolve, load (checked: one-line errors for any mismatch), convert, and optionally compile."""
    from clplat.streaming import compile_step, convert
    from clplat.streaming.sources import FrameSpec
    from clplat.streaming.training.weights import load_trained

    device = resolve_device(device_name)
    path = resolve_model(model)
    net, meta = load_trained(path)
    stream = convert(net).eval().to(device)
    compiled = compile_step(stream) if use_compile else None
    step = compiled if compiled is not None else stream.step
    return Player(path, meta, stream, step, compiled, FrameSpec.from_dict(meta["input"]), device,
                  list(meta.get("class_names") or []))


def open_demo_source(args: argparse.Namespace, player: Player) -> tuple[Any, int | None]:
    """The frame source and the frame limit (synthetic streams stop after 300 by default)."""
    from clplat.data.moving_digits import MovingDigitsSpec
    from clplat.streaming.sources import open_source

    data = player.meta.get("data", {})
    synthetic = MovingDigitsSpec(canvas=data.get("canvas", player.spec.size[0]),
                                 digit_size=data.get("digit_size", 16), label=data.get("label", "digit"))
    source = open_source(args.source, synthetic=synthetic, seed=args.seed)
    if source.class_names and source.class_names != player.class_names:
        source.has_labels = False  # the source's labels are not this model's classes
    max_frames = args.max_frames
    if max_frames is None and args.source == "synthetic":
        max_frames = DEFAULT_SYNTHETIC_FRAMES
    return source, max_frames


def open_sinks(args: argparse.Namespace, source: Any) -> tuple[Any, Any, Path | None]:
    """A window (with a display, unless --out/--no-window), else an annotated video; the stats path."""
    from clplat.streaming.sinks import VideoFileSink, WindowSink, display_available

    out_path = Path(args.out) if args.out else None
    window = None
    if out_path is None and not args.no_window and display_available():
        window = WindowSink(f"clplat.stream - {source.name}")
    elif out_path is None:
        out_path = Path("runs/stream") / "annotated.mp4"
    video = VideoFileSink(out_path, fps=source.fps) if out_path is not None else None
    stats_path = Path(args.stats) if args.stats else (out_path.with_suffix(".json") if out_path else None)
    return video, window, stats_path


def _latency() -> Any:
    from clplat.streaming.sinks import LatencyStats

    return LatencyStats()


@dataclass
class LoopStats:
    """What the frame loop measured."""

    step_lat: Any = field(default_factory=_latency)
    frame_lat: Any = field(default_factory=_latency)
    frames: int = 0
    hits: int = 0
    scored: int = 0
    compile_s: float = 0.0
    stop_reason: str | None = None


def run_loop(player: Player, source: Any, max_frames: int | None, video: Any, window: Any) -> LoopStats:
    """Step every frame once, score emitted predictions against pending labels, time each step
    (a step that compiled a new phase is timed apart), and draw. Ctrl-C ends it cleanly."""
    from clplat.streaming.training.evaluate import logits_of

    stats, pending, state = LoopStats(), deque(), None
    pred_text, compiled = "warming up", player.compiled
    sync = torch.cuda.synchronize if player.device.type == "cuda" else (lambda: None)
    try:
        with torch.inference_mode():
            for frame in source:
                t0 = time.perf_counter()
                x = player.spec.to_tensor(frame.image).to(player.device)
                sync()
                t1 = time.perf_counter()
                before = compiled.compilations if compiled is not None else 0
                y, state = player.step(x, state)
                sync()
                t2 = time.perf_counter()
                stats.frames += 1
                if source.has_labels and frame.label is not None:
                    pending.append(frame.label)
                if y is not None:
                    probs = torch.softmax(logits_of(y).float(), dim=1)[0].cpu()
                    conf, idx = probs.max(0)
                    pred_text = f"pred {_label_text(player.class_names, int(idx))} ({float(conf):.0%})"
                    if pending:
                        stats.scored += 1
                        stats.hits += int(idx) == pending.popleft()
                if compiled is not None and compiled.compilations != before:
                    stats.compile_s += t2 - t1  # a one-off cost, reported apart from the latencies
                else:
                    stats.step_lat.add(t2 - t1)
                    stats.frame_lat.add(time.perf_counter() - t0)
                if (video is not None or window is not None) and not _show(
                        frame, [pred_text, f"step {1e3 * (t2 - t1):.1f} ms"], player.class_names,
                        source.has_labels, video, window):
                    stats.stop_reason = "closed by the user"
                    break
                if max_frames is not None and stats.frames >= max_frames:
                    stats.stop_reason = f"stopped after --max-frames {max_frames}"
                    break
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted (Ctrl-C)"
    return stats


def summarise(args: argparse.Namespace, player: Player, source: Any, stats: LoopStats,
              written: Path | None, stats_path: Path | None) -> dict[str, Any]:
    """The summary printed and written to the stats JSON."""
    from clplat.streaming.sinks import write_json

    summary: dict[str, Any] = {
        "model": str(player.path), "arch": player.meta.get("arch"), "source": args.source,
        "device": str(player.device), "delay": int(getattr(player.stream, "delay", 0)),
        "frames": stats.frames, "end": stats.stop_reason or source.end_reason,
        "skipped_frames": source.skipped, "step_latency": stats.step_lat.summary(),
        "frame_latency": stats.frame_lat.summary(), "torch_threads": torch.get_num_threads(),
    }
    if player.compiled is not None:
        summary["compiled"] = {"phases": player.compiled.compilations, "compile_s": round(stats.compile_s, 2)}
    if stats.scored:
        summary["accuracy"] = {"per_frame": round(stats.hits / stats.scored, 4), "scored": stats.scored}
    if written is not None:
        summary["annotated_video"] = str(written)
    if stats_path is not None:
        summary["stats_file"] = str(write_json(stats_path, summary))
    return summary


def play(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns the summary written to the stats JSON."""
    player = load_player(args.model, args.device, args.compile)
    source, max_frames = open_demo_source(args, player)
    video, window, stats_path = open_sinks(args, source)
    ok = False
    try:
        stats = run_loop(player, source, max_frames, video, window)
        ok = True
    finally:
        source.close()
        if window is not None:
            window.close()
        written = video.close(keep=ok) if video is not None else None
    if stats.frames == 0:
        raise UserError(f"source '{args.source}' produced no frames ({source.end_reason})")
    return summarise(args, player, source, stats, written, stats_path)


def print_summary(s: dict[str, Any]) -> None:
    lat = s["step_latency"]
    print(f"clplat.stream: {Path(s['model']).name} ({s['arch']}, delay {s['delay']}) on {s['source']} "
          f"[{s['device']}]")
    print(f"  frames {s['frames']} ({s['end']}; {s['skipped_frames']} unreadable skipped)")
    print(f"  step latency ms: mean {lat['mean_ms']:.2f}  p50 {lat['p50_ms']:.2f}  p95 {lat['p95_ms']:.2f}  "
          f"p99 {lat['p99_ms']:.2f}  -> {lat['fps']:.0f} frames/s (with preprocessing: "
          f"{s['frame_latency']['mean_ms']:.2f} ms)")
    if "compiled" in s:
        print(f"  compiled step: {s['compiled']['phases']} phase(s) compiled in {s['compiled']['compile_s']:.1f} s "
              "(not in the latencies)")
    if "accuracy" in s:
        print(f"  per-frame accuracy {s['accuracy']['per_frame']:.4f} over {s['accuracy']['scored']} frames")
    if "annotated_video" in s:
        print(f"  annotated video: {s['annotated_video']}")
    if "stats_file" in s:
        print(f"  latency stats: {s['stats_file']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clplat.stream",
        description="Run a trained clip model frame by frame on a live source "
                    "(or: python -m clplat.stream train CONFIG.yaml [key=value ...]).",
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"shipped model name ({', '.join(SHIPPED)}) or a .safetensors checkpoint")
    p.add_argument("--source", default="synthetic",
                   help="synthetic | webcam | webcam:N | a video file | an image folder")
    p.add_argument("--out", help="annotated video (.mp4/.avi); default headless: runs/stream/annotated.mp4")
    p.add_argument("--stats", help="latency statistics JSON (default: the --out path with .json)")
    p.add_argument("--max-frames", type=int, default=None,
                   help=f"stop after N frames (synthetic default {DEFAULT_SYNTHETIC_FRAMES})")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: batch-1 steps of small nets gain nothing from more, "
                        "and spin-waits hurt on a busy machine)")
    p.add_argument("--compile", action="store_true",
                   help="run the step compiled (clplat.streaming.compile_step; ~1 min of compilation first)")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic source (held-out digits)")
    p.add_argument("--no-window", action="store_true", help="never open a window, even with a display")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            from clplat.streaming.training.run import main as train_main

            return train_main(argv[1:])
        args = build_parser().parse_args(argv)
        if args.max_frames is not None and args.max_frames < 1:
            raise UserError("--max-frames must be >= 1")
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
        print_summary(play(args))
        return 0
    except UserError as err:
        return report_user_error(err)


if __name__ == "__main__":
    sys.exit(main())
