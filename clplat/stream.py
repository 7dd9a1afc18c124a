"""The streaming demo: a trained model, converted, run frame by frame on live sources.

    python -m clplat.stream [--model NAME | WEIGHTS | SCHEME:NAME] [--source SPEC[,SPEC...]]
                            [--out annotated.mp4] [--stats stats.json] [--max-frames N]
                            [--slots N] [--join-at T[,T...]] [--device cpu|cuda] [--compile]
                            [--cuda-graph [--bf16]] [model kind flags]
    python -m clplat.stream train CONFIG.yaml [key.sub=value ...]

With no arguments it plays 300 frames of held-out synthetic moving digits through the shipped
classifier and prints frames, latency statistics and per-frame accuracy. Each frame goes through
the model's ``step`` once (no clip recomputation). What a model does with a frame (classify it,
predict the next one, ...) belongs to its *stream app* (``clplat.streaming.apps``: one file per
kind, found by the model name or by the ``format`` in the weights file's metadata); this module
keeps the command line, the flags every kind shares and the one error path. Several sources
(``--source a.mp4,b.mp4``) step together as one batch, each with its own state, video and
statistics; ``--slots N`` (fewer rows than sources) and ``--join-at`` let streams join a running
batch as others end, without recompiling its step. With a display the frames are shown in a
window; headless (or with ``--out``) they are drawn into a video file, and the latency
statistics are written as JSON beside it.
Anything a user can get wrong (missing file, corrupt video, no camera, bad config, mismatched
weights, CUDA requested without CUDA) ends with one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from clplat.errors import UserError, report_user_error
from clplat.streaming.apps import WEIGHTS_DIR, StreamApp, find_app, resolve_device
from clplat.streaming.apps.classify import SHIPPED  # the shipped classifiers (kept for old imports)

__all__ = ["DEFAULT_MODEL", "SHIPPED", "WEIGHTS_DIR", "build_parser", "load_player", "main", "play",
           "resolve_device", "split_sources"]

DEFAULT_MODEL = "stream_x3d_moving_digits"


def split_sources(spec: str) -> list[str]:
    """``a.mp4,b.mp4`` -> one source each (a path that itself holds a comma stays whole)."""
    if "," not in spec or Path(spec).exists():
        return [spec]
    parts = [p.strip() for p in spec.split(",")]
    if not all(parts):
        raise UserError(f"--source '{spec}': an empty entry between commas")
    return parts


def load_player(model: str, device_name: str, use_compile: bool, **flags: Any) -> StreamApp:
    """The app of ``model``, loaded (checked: one-line errors for any mismatch) and ready to step."""
    app_cls, ref = find_app(model)
    parser = build_parser(app_cls)
    args = parser.parse_args(["--model", model, "--device", device_name, *(["--compile"] if use_compile else [])])
    for key, value in flags.items():
        setattr(args, key, value)
    return app_cls(ref, args)


def play(args: argparse.Namespace, app: StreamApp | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary written to the stats JSON."""
    from clplat.streaming.apps._runner import run_streams

    if app is None:
        app_cls, ref = find_app(args.model)
        app = app_cls(ref, args)
    return run_streams(app, split_sources(args.source), args)


def _latency_line(lat: dict[str, Any]) -> str:
    return (f"mean {lat['mean_ms']:.2f}  p50 {lat['p50_ms']:.2f}  p95 {lat['p95_ms']:.2f}  "
            f"p99 {lat['p99_ms']:.2f}  -> {lat['fps']:.0f} frames/s")


def _stream_lines(s: dict[str, Any], app: StreamApp) -> list[str]:
    lines = [f"frames {s['frames']} ({s['end']}; {s['skipped_frames']} unreadable skipped)"]
    if s.get("start_tick"):
        lines.append(f"joined at frame {s['start_tick']} of the batch in slot {s['slot']} "
                     f"({s['stepped_alone']} frame(s) stepped alone until its state caught up)")
    lines += app.lines(s)
    if "annotated_video" in s:
        lines.append(f"annotated video: {s['annotated_video']}")
    return lines


def print_summary(s: dict[str, Any], app: StreamApp) -> None:
    lat = s["step_latency"]
    print(f"clplat.stream: {Path(s['model']).name} ({s['arch']}, delay {s['delay']}) on {s['source']} "
          f"[{s['device']}]")
    streams = s.get("streams")
    if streams is None:
        print(f"  {_stream_lines(s, app)[0]}")
    if lat.get("frames"):
        with_prep = "" if streams else f" (with preprocessing: {s['frame_latency']['mean_ms']:.2f} ms)"
        print(f"  step latency ms: {_latency_line(lat)}{with_prep}")
    if streams is not None:
        rows = "one batch" if s["batch"] == len(streams) else f"one batch of {s['batch']} slots"
        print(f"  {len(streams)} streams in {rows}: {s['frames']} frames, {s['aggregate_fps']} frames/s together")
    if "compiled" in s:
        print(f"  compiled step: {s['compiled']['phases']} phase(s) compiled in {s['compiled']['compile_s']:.1f} s "
              "(not in the latencies)")
    if "cuda_graph" in s:
        g = s["cuda_graph"]
        print(f"  CUDA-graph step ({g['dtype']}): {g['graphs']} graph(s) captured in {g['capture_s']:.1f} s "
              "(not in the latencies)")
    if streams is None:
        for line in _stream_lines(s, app)[1:]:
            print(f"  {line}")
    else:
        for i, stream in enumerate(streams):
            print(f"  [{i}] {stream['source']}: " + "; ".join(_stream_lines(stream, app)))
    if "stats_file" in s:
        print(f"  latency stats: {s['stats_file']}")


def build_parser(app_cls: type[StreamApp] | None = None) -> argparse.ArgumentParser:
    """The common flags, plus the chosen model kind's own (``app_cls.add_arguments``)."""
    p = argparse.ArgumentParser(
        prog="python -m clplat.stream",
        description="Run a trained model frame by frame on live sources "
                    "(or: python -m clplat.stream train CONFIG.yaml [key=value ...]).",
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="a shipped model name, a weights file (.safetensors; its metadata says which kind "
                        "of model it is), or SCHEME:NAME (e.g. torchvision:r2plus1d_18)")
    p.add_argument("--source", default="synthetic",
                   help="synthetic | webcam | webcam:N | a video file | an image folder; several, "
                        "comma-separated, step together as one batch")
    p.add_argument("--slots", type=int, default=None,
                   help="rows of the batch (default: one per source); with fewer slots than sources the "
                        "rest wait in order and join as streams end, without recompiling the step")
    p.add_argument("--join-at", metavar="T[,T...]",
                   help="frame (tick of the batch) at which each source may start, one per source, e.g. "
                        "0,30: a late source joins the running batch in a free slot")
    p.add_argument("--out", help="annotated video (.mp4/.avi); default headless: runs/stream/annotated.mp4; "
                                 "with several sources x_0.mp4, x_1.mp4, ...")
    p.add_argument("--stats", help="latency statistics JSON (default: the --out path with .json)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="stop each stream after N frames (the synthetic source has a default per model kind)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: batch-1 steps of small nets gain nothing from more, "
                        "and spin-waits hurt on a busy machine)")
    p.add_argument("--compile", action="store_true",
                   help="run the step compiled (clplat.streaming.compile_step; ~1 min of compilation first)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --device cuda: replay the step as CUDA graphs (clplat.streaming.cuda_graph); "
                        "with --compile the graphs hold Inductor's kernels")
    p.add_argument("--bf16", action="store_true",
                   help="with --cuda-graph: run a bfloat16 copy of the network (outputs in bf16)")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic source (held-out data)")
    p.add_argument("--no-window", action="store_true", help="never open a window, even with a display")
    if app_cls is not None:
        app_cls.add_arguments(p.add_argument_group(f"{app_cls.__name__} options"))  # type: ignore[arg-type]
    return p


def parse_args(argv: list[str]) -> tuple[type[StreamApp], Any, argparse.Namespace]:
    """Two passes: ``--model`` picks the app, whose own flags join the common ones."""
    first, _ = build_parser().parse_known_args([a for a in argv if a not in ("-h", "--help")])
    app_cls, ref = find_app(first.model)
    args = build_parser(app_cls).parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError("--max-frames must be >= 1")
    if args.threads < 1:
        raise UserError("--threads must be >= 1")
    return app_cls, ref, args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            from clplat.streaming.training.run import main as train_main

            return train_main(argv[1:])
        app_cls, ref, args = parse_args(argv)
        torch.set_num_threads(args.threads)
        app = app_cls(ref, args)
        print_summary(play(args, app), app)
        return 0
    except UserError as err:
        return report_user_error(err)


if __name__ == "__main__":
    sys.exit(main())
