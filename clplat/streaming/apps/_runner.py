"""The frame loop of ``python -m clplat.stream``: one or many sources stepped as one batch.

Every source is one stream with its own row of the batch and its own state (the rows of a
stream state are independent: eval-mode networks mix nothing across the batch). Per tick each
live stream reads a frame, its app track turns it into its row, the whole batch takes one
``step``, and each stream's output row goes back to its track. A source that ends (or reaches
``--max-frames``) drops out: its row keeps its last input and its output is ignored, so the
batch keeps its shape (a compiled or CUDA-graph step is not recompiled) and the other streams
step exactly as they would alone. Steps that compiled a phase or captured a graph are timed
apart from the latencies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.apps import StreamApp, StreamTrack
from clplat.streaming.sinks import LatencyStats, VideoFileSink, WindowSink, display_available, write_json

__all__ = ["StreamRun", "outputs_for", "run_streams"]

DEFAULT_OUT = Path("runs/stream") / "annotated.mp4"


@dataclass
class StreamRun:
    """One source in a run: its track, sinks and statistics."""

    spec: str
    source: Any
    track: StreamTrack
    video: VideoFileSink | None = None
    window: WindowSink | None = None
    frame_lat: LatencyStats = field(default_factory=LatencyStats)
    frames: int = 0
    stop_reason: str | None = None
    done: bool = False
    last_input: Tensor | None = None
    written: Path | None = None
    limit: int | None = None  # --max-frames (or the app's default for its synthetic source)
    iterator: Any = None

    def summary(self) -> dict[str, Any]:
        s = {"source": self.spec, "frames": self.frames, "end": self.stop_reason or self.source.end_reason,
             "skipped_frames": self.source.skipped, "frame_latency": self.frame_lat.summary(),
             **self.track.summary()}
        if self.written is not None:
            s["annotated_video"] = str(self.written)
        return s


def outputs_for(out: str | None, no_window: bool, n: int) -> tuple[list[Path | None], bool, Path | None]:
    """Per-stream video paths (``x.mp4`` alone, ``x_0.mp4``, ``x_1.mp4``, ... for many), whether
    to open windows (a display and neither ``--out`` nor ``--no-window``), and the default stats
    path (the ``--out`` path with ``.json``)."""
    out_path = Path(out) if out else None
    windows = out_path is None and not no_window and display_available()
    if out_path is None and not windows:
        out_path = DEFAULT_OUT
    if out_path is None:
        return [None] * n, windows, None
    paths = [out_path] if n == 1 else [out_path.with_name(f"{out_path.stem}_{i}{out_path.suffix}") for i in range(n)]
    return list(paths), windows, out_path.with_suffix(".json")


def _sync(device: torch.device) -> None:
    """Wait for the device, so host timers measure its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(rows: list[Tensor | None]) -> Tensor:
    """Rows of the live streams and the kept rows of finished ones, as one batch."""
    ref = next(r for r in rows if r is not None)
    return torch.cat([r if r is not None else torch.zeros_like(ref) for r in rows]) if len(rows) > 1 else ref


def _tick(app: StreamApp, runs: list[StreamRun], tick: int, state: Any, step_lat: LatencyStats,
          one_off: list[float]) -> tuple[Any, bool]:
    """One batch step; returns the new state and whether any stream is still live."""
    frames: list[Any] = []
    rows: list[Tensor | None] = []
    prep: list[float] = []
    for run in runs:
        frame = None if run.done else next(run.iterator, None)
        if frame is None and not run.done:
            run.done = True
        t0 = time.perf_counter()
        if frame is not None:
            run.last_input = run.track.input(frame).to(app.device)
        frames.append(frame)
        rows.append(run.last_input)
        prep.append(time.perf_counter() - t0)
    if all(f is None for f in frames):
        return state, False
    t0 = time.perf_counter()
    x = _batch(rows)
    _sync(app.device)  # the frames' copies to the device: part of each frame's latency
    before = app.one_off_count()
    t1 = time.perf_counter()
    y, state = app.step_fn(x, app.before_step(tick, state))  # type: ignore[misc]
    _sync(app.device)
    step_s = time.perf_counter() - t1
    copy_s = t1 - t0
    timed = app.one_off_count() == before
    if timed:
        step_lat.add(step_s)
    else:
        one_off[0] += step_s  # a compilation or graph capture: reported apart
    for i, (run, frame) in enumerate(zip(runs, frames)):
        if frame is None:
            continue
        run.frames += 1
        run.track.update(frame, None if y is None else y[i:i + 1], step_s)
        if timed:
            run.frame_lat.add(prep[i] + copy_s + step_s)
        if (run.video is not None or run.window is not None) and not _show(run, run.track.draw(frame)):
            run.done, run.stop_reason = True, "closed by the user"
        elif run.limit is not None and run.frames >= run.limit:
            run.done, run.stop_reason = True, f"stopped after {run.limit} frames" + (
                " (--max-frames)" if app.args.max_frames is not None else "")
    return state, not all(r.done for r in runs)


def _show(run: StreamRun, image: Any) -> bool:
    if run.video is not None:
        run.video.write(image)
    return run.window is None or run.window.write(image)


def run_streams(app: StreamApp, specs: list[str], args: Any) -> dict[str, Any]:
    """Open every source and its sinks, step them together until all have ended, close
    everything (a video of a failed run is deleted), and return the summary (also written to
    the stats JSON)."""
    runs: list[StreamRun] = []
    videos, windows, stats_default = outputs_for(args.out, args.no_window, len(specs))
    ok = False
    step_lat, one_off, interrupted = LatencyStats(), [0.0], False
    try:
        for i, (spec, video_path) in enumerate(zip(specs, videos)):
            source = app.open_source(spec, args.seed + i)  # synthetic streams differ by seed
            run = StreamRun(spec, source, app.track(source), limit=app.max_frames(spec, args.max_frames))
            runs.append(run)
            run.iterator = iter(source)
            if windows:
                run.window = WindowSink(f"clplat.stream - {source.name}")
            if video_path is not None:
                run.video = VideoFileSink(video_path, fps=source.fps)
        state, tick, live = None, 0, True
        try:
            with torch.inference_mode():
                while live:
                    state, live = _tick(app, runs, tick, state, step_lat, one_off)
                    tick += 1
        except KeyboardInterrupt:
            interrupted = True
        ok = True
    finally:
        for run in runs:
            run.source.close()
            if run.window is not None:
                run.window.close()
            if run.video is not None:
                run.written = run.video.close(keep=ok)
    for run in runs:
        if interrupted and not run.stop_reason:
            run.stop_reason = "interrupted (Ctrl-C)"
    if sum(r.frames for r in runs) == 0:
        raise UserError(f"source '{args.source}' produced no frames ({runs[0].source.end_reason})")
    return _summary(app, runs, args, step_lat, one_off[0], stats_default)


def _summary(app: StreamApp, runs: list[StreamRun], args: Any, step_lat: LatencyStats, one_off_s: float,
             stats_default: Path | None) -> dict[str, Any]:
    summary: dict[str, Any] = {**app.describe(), "source": args.source, "device": str(app.device),
                               "step_latency": step_lat.summary(), "torch_threads": torch.get_num_threads()}
    if len(runs) == 1:
        summary.update(runs[0].summary())
    else:
        streams = [r.summary() for r in runs]
        total = sum(r.frames for r in runs)
        step_s = sum(step_lat.samples)
        summary.update({"batch": len(runs), "frames": total, "streams": streams,
                        "aggregate_fps": round(total / step_s, 2) if step_s > 0 else None})
    extra = app.one_off_summary(one_off_s)
    if extra:
        summary.update(extra)
    stats_path = Path(args.stats) if args.stats else stats_default
    if stats_path is not None:
        summary["stats_file"] = str(write_json(stats_path, summary))
    return summary
