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
from pathlib import Path
from typing import Any

import torch

from clplat.errors import UserError

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


def play(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns the summary written to the stats JSON."""
    from clplat.data.moving_digits import MovingDigitsSpec
    from clplat.streaming import compile_step, convert
    from clplat.streaming.sinks import LatencyStats, VideoFileSink, WindowSink, display_available, write_json
    from clplat.streaming.sources import FrameSpec, open_source
    from clplat.streaming.train import load_trained, logits_of

    device = resolve_device(args.device)
    model_path = resolve_model(args.model)
    model, meta = load_trained(model_path)
    stream = convert(model).eval().to(device)
    compiled = compile_step(stream) if args.compile else None
    step = compiled if compiled is not None else stream.step
    spec = FrameSpec.from_dict(meta["input"])
    class_names = list(meta.get("class_names") or [])
    data = meta.get("data", {})
    synthetic = MovingDigitsSpec(canvas=data.get("canvas", spec.size[0]),
                                 digit_size=data.get("digit_size", 16), label=data.get("label", "digit"))
    source = open_source(args.source, synthetic=synthetic, seed=args.seed)
    max_frames = args.max_frames
    if max_frames is None and args.source == "synthetic":
        max_frames = DEFAULT_SYNTHETIC_FRAMES
    if source.class_names and source.class_names != class_names:
        source.has_labels = False  # the source's labels are not this model's classes

    out_path = Path(args.out) if args.out else None
    window = None
    if out_path is None and not args.no_window and display_available():
        window = WindowSink(f"clplat.stream - {source.name}")
    elif out_path is None:
        out_path = Path("runs/stream") / "annotated.mp4"
    video = VideoFileSink(out_path, fps=source.fps) if out_path is not None else None
    stats_path = Path(args.stats) if args.stats else (out_path.with_suffix(".json") if out_path else None)

    step_lat, frame_lat = LatencyStats(), LatencyStats()
    pending: deque[int] = deque()
    hits = scored = frames = 0
    pred_text, stop_reason = "warming up", None
    state = None
    compile_s = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ok = False
    try:
        with torch.inference_mode():
            for frame in source:
                t0 = time.perf_counter()
                x = spec.to_tensor(frame.image).to(device)
                sync()
                t1 = time.perf_counter()
                before = compiled.compilations if compiled is not None else 0
                y, state = step(x, state)
                sync()
                t2 = time.perf_counter()
                compiling = compiled is not None and compiled.compilations != before
                frames += 1
                if source.has_labels and frame.label is not None:
                    pending.append(frame.label)
                if y is not None:
                    probs = torch.softmax(logits_of(y).float(), dim=1)[0].cpu()
                    conf, idx = probs.max(0)
                    pred_text = f"pred {_label_text(class_names, int(idx))} ({float(conf):.0%})"
                    if pending:
                        truth = pending.popleft()
                        scored += 1
                        hits += int(idx) == truth
                t3 = time.perf_counter()
                if compiling:  # a one-off cost, reported apart from the per-frame latency
                    compile_s += t2 - t1
                else:
                    step_lat.add(t2 - t1)
                    frame_lat.add(t3 - t0)
                if (video is not None or window is not None) and not _show(
                        frame, [pred_text, f"step {1e3 * (t2 - t1):.1f} ms"], class_names,
                        source.has_labels, video, window):
                    stop_reason = "closed by the user"
                    break
                if max_frames is not None and frames >= max_frames:
                    stop_reason = f"stopped after --max-frames {max_frames}"
                    break
        ok = True
    except KeyboardInterrupt:
        stop_reason, ok = "interrupted (Ctrl-C)", True
    finally:
        source.close()
        if window is not None:
            window.close()
        written = video.close(keep=ok) if video is not None else None
    if frames == 0:
        raise UserError(f"source '{args.source}' produced no frames ({source.end_reason})")
    summary: dict[str, Any] = {
        "model": str(model_path), "arch": meta.get("arch"), "source": args.source, "device": str(device),
        "delay": int(getattr(stream, "delay", 0)), "frames": frames,
        "end": stop_reason or source.end_reason, "skipped_frames": source.skipped,
        "step_latency": step_lat.summary(), "frame_latency": frame_lat.summary(),
        "torch_threads": torch.get_num_threads(),
    }
    if compiled is not None:
        summary["compiled"] = {"phases": compiled.compilations, "compile_s": round(compile_s, 2)}
    if scored:
        summary["accuracy"] = {"per_frame": round(hits / scored, 4), "scored": scored}
    if written is not None:
        summary["annotated_video"] = str(written)
    if stats_path is not None:
        summary["stats_file"] = str(write_json(stats_path, summary))
    return summary


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
            from clplat.streaming.train import main as train_main

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
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
