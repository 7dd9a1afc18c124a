"""The frame loop of ``python -m clplat.stream``: one or many sources stepped as one batch.

The batch has ``--slots`` rows (default: one per source); every stream occupies one slot, and the
rows of a stream state are independent (eval-mode networks mix nothing across the batch). Per
tick each live stream reads a frame, its app track turns it into its row, the whole batch takes
one ``step``, and each stream's output row goes back to its track. A source that ends (or
reaches ``--max-frames``) leaves: its row keeps its last input, its output is ignored, and its
slot is free for the next source in the queue (sources beyond ``--slots`` wait; ``--join-at``
delays a source). A stream that joins a running batch, or restarts (``track.starts_over()``),
steps alone from a fresh state until its counters meet the batch's, then its rows are spliced in
(``_slots``): its outputs are exactly those it gives alone, the other streams' are untouched,
and the batch keeps its shape, so a compiled or CUDA-graph step is neither recompiled nor
recaptured. Steps that compiled a phase or captured a graph are timed apart from the latencies.
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
from clplat.streaming.apps._slots import counter_key, splice_rows
from clplat.streaming.sinks import LatencyStats, VideoFileSink, WindowSink, display_available, write_json

__all__ = ["StreamRun", "outputs_for", "run_streams", "schedule"]

DEFAULT_OUT = Path("runs/stream") / "annotated.mp4"


@dataclass
class StreamRun:
    """One source in a run: its track, sinks, slot and statistics."""

    spec: str
    source: Any
    track: StreamTrack
    video: VideoFileSink | None = None
    window: WindowSink | None = None
    frame_lat: LatencyStats = field(default_factory=LatencyStats)
    frames: int = 0
    stop_reason: str | None = None
    done: bool = False
    written: Path | None = None
    limit: int | None = None  # --max-frames (or the app's default for its synthetic source)
    iterator: Any = None
    join_at: int = 0  # the first tick it may start at (--join-at)
    slot: int | None = None
    start_tick: int | None = None
    alone: bool = False  # stepping by itself until its counters meet the batch's
    lone_state: Any = None  # its own state meanwhile (None: fresh)
    lone_steps: int = 0

    def summary(self, batched: bool = False) -> dict[str, Any]:
        s = {"source": self.spec, "frames": self.frames, "end": self.stop_reason or self.source.end_reason,
             "skipped_frames": self.source.skipped, "frame_latency": self.frame_lat.summary(),
             **self.track.summary()}
        if batched:
            s.update(slot=self.slot, start_tick=self.start_tick, stepped_alone=self.lone_steps)
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


def schedule(args: Any, n: int) -> tuple[int, list[int]]:
    """``(slots, join_at per source)`` from ``--slots`` / ``--join-at`` (one line on bad values)."""
    slots = getattr(args, "slots", None)
    slots = n if slots is None else slots
    if slots < 1:
        raise UserError(f"--slots must be >= 1, got {slots}")
    raw = getattr(args, "join_at", None)
    if raw is None:
        return slots, [0] * n
    try:
        ticks = [int(t) for t in str(raw).split(",")]
    except ValueError:
        raise UserError(f"--join-at '{raw}': give whole frame numbers, comma-separated") from None
    if len(ticks) != n or min(ticks) < 0:
        raise UserError(f"--join-at '{raw}': need {n} frame number(s) >= 0, one per source")
    return slots, ticks


def _sync(device: torch.device) -> None:
    """Wait for the device, so host timers measure its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(rows: list[Tensor | None], blank: set[int]) -> Tensor:
    """One row per slot: live streams' inputs, the kept rows of ended ones, zeros for unused slots
    and for streams stepping alone (their rows in the batch are overwritten when they join)."""
    ref = next(r for r in rows if r is not None)
    if len(rows) == 1 and not blank:
        return ref
    return torch.cat([torch.zeros_like(ref) if r is None or i in blank else r for i, r in enumerate(rows)])


@dataclass
class _Read:
    slot: int
    run: StreamRun
    frame: Any
    prep_s: float
    y: Tensor | None = None
    lone_s: float = 0.0


class _Loop:
    """The slots, the batched state and the clocks of one run."""

    def __init__(self, app: StreamApp, runs: list[StreamRun], slots: int) -> None:
        self.app, self.runs = app, runs
        self.slots: list[StreamRun | None] = [None] * slots
        self.rows: list[Tensor | None] = [None] * slots
        self.waiting = list(runs)
        self.state: Any = None
        self.tick = self.batch_steps = 0
        self.step_lat, self.one_off_s, self.lone_s = LatencyStats(), 0.0, 0.0
        # a lone stream steps the same network the batch does (a CUDA-graph step's own copy)
        module = getattr(app.step_fn, "module", None)
        self.lone = module if isinstance(module, torch.nn.Module) else app.stream
        self.period = max(1, int(getattr(app.stream, "temporal_stride", 1)))

    def run(self) -> None:
        while self.waiting or any(r is not None for r in self.slots):
            self._admit()
            self._tick()
            self.tick += 1

    def _admit(self) -> None:
        """Queued sources into free slots. Into a running batch only at its stride phase 0, where
        a fresh stream's counters can catch up with the batch's (then its rows are spliced in)."""
        for slot, run in enumerate(self.slots):
            if run is None:
                self._admit_into(slot)

    def _admit_into(self, slot: int) -> None:
        if any(r is not None for r in self.slots) and self.batch_steps % self.period:
            return
        run = next((r for r in self.waiting if r.join_at <= self.tick), None)
        if run is not None:
            self.waiting.remove(run)
            self.slots[slot], run.slot, run.start_tick, run.alone = run, slot, self.tick, True

    def _read(self) -> list[_Read]:
        reads = []
        for slot in range(len(self.slots)):
            frame, run = None, self.slots[slot]
            while run is not None:
                frame = next(run.iterator, None)
                if frame is not None:
                    break
                run.done, self.slots[slot] = True, None  # ended: the next in the queue may take the slot
                self._admit_into(slot)
                run = self.slots[slot]
            if run is None:
                continue
            if run.frames and run.track.starts_over():
                run.alone, run.lone_state = True, None
            t0 = time.perf_counter()
            self.rows[slot] = run.track.input(frame).to(self.app.device)
            reads.append(_Read(slot, run, frame, time.perf_counter() - t0))
        return reads

    def _join(self, reads: list[_Read]) -> None:
        """Start the batch anew when no stream is midway, else splice streams that caught up."""
        alone = [r for r in reads if r.run.alone]
        if not alone:
            return
        if len(alone) == len(reads) and all(r.run.lone_state is None for r in alone):
            self.state, self.batch_steps = None, 0  # nobody to keep: every row starts fresh
            for r in alone:
                r.run.alone = False
            return
        for r in alone:
            run = r.run
            if run.lone_state is None:
                run.lone_state = self.lone.init_state(self._lone_input(r.slot))
            if self.state is not None and counter_key(run.lone_state) == counter_key(self.state):
                self.state = splice_rows(self.state, r.slot, run.lone_state)
                run.alone, run.lone_state = False, None

    def _lone_input(self, slot: int) -> Tensor:
        x = self.rows[slot]
        assert x is not None
        param = next(self.lone.parameters(), None)
        return x.to(param.dtype) if param is not None and x.is_floating_point() else x

    def _tick(self) -> None:
        reads = self._read()
        if not reads:
            return
        self._join(reads)
        app = self.app
        t0 = time.perf_counter()
        x = _batch(self.rows, {r.slot for r in reads if r.run.alone})
        _sync(app.device)  # the frames' copies to the device: part of each frame's latency
        before = app.one_off_count()
        t1 = time.perf_counter()
        y, self.state = app.step_fn(x, self.state)  # type: ignore[misc]
        _sync(app.device)
        step_s = time.perf_counter() - t1
        self.batch_steps += 1
        timed = app.one_off_count() == before
        if timed:
            self.step_lat.add(step_s)
        else:
            self.one_off_s += step_s  # a compilation or graph capture: reported apart
        for r in reads:
            r.y = None if y is None else y[r.slot:r.slot + 1]
            if r.run.alone:
                t = time.perf_counter()
                r.y, r.run.lone_state = self.lone.step(self._lone_input(r.slot), r.run.lone_state)
                _sync(app.device)
                r.lone_s = time.perf_counter() - t
                r.run.lone_steps += 1
                self.lone_s += r.lone_s
        for r in reads:
            self._finish(r, step_s, t1 - t0, timed)

    def _finish(self, r: _Read, step_s: float, copy_s: float, timed: bool) -> None:
        run = r.run
        run.frames += 1
        run.track.update(r.frame, r.y, step_s + r.lone_s)
        if timed:
            run.frame_lat.add(r.prep_s + copy_s + step_s + r.lone_s)
        if (run.video is not None or run.window is not None) and not _show(run, run.track.draw(r.frame)):
            run.done, run.stop_reason = True, "closed by the user"
        elif run.limit is not None and run.frames >= run.limit:
            run.done, run.stop_reason = True, f"stopped after {run.limit} frames" + (
                " (--max-frames)" if self.app.args.max_frames is not None else "")
        if run.done:
            self.slots[r.slot] = None


def _show(run: StreamRun, image: Any) -> bool:
    if run.video is not None:
        run.video.write(image)
    return run.window is None or run.window.write(image)


def run_streams(app: StreamApp, specs: list[str], args: Any) -> dict[str, Any]:
    """Open every source and its sinks, step them in ``--slots`` slots until all have ended, close
    everything (a video of a failed run is deleted), and return the summary (also written to
    the stats JSON)."""
    slots, join_at = schedule(args, len(specs))
    runs: list[StreamRun] = []
    videos, windows, stats_default = outputs_for(args.out, args.no_window, len(specs))
    ok, interrupted, loop = False, False, None
    try:
        for i, (spec, video_path) in enumerate(zip(specs, videos)):
            source = app.open_source(spec, args.seed + i)  # synthetic streams differ by seed
            run = StreamRun(spec, source, app.track(source), limit=app.max_frames(spec, args.max_frames),
                            join_at=join_at[i])
            runs.append(run)
            run.iterator = iter(source)
            if windows:
                run.window = WindowSink(f"clplat.stream - {source.name}")
            if video_path is not None:
                run.video = VideoFileSink(video_path, fps=source.fps)
        loop = _Loop(app, runs, slots)
        try:
            with torch.inference_mode():
                loop.run()
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
    assert loop is not None
    return _summary(app, runs, args, loop, stats_default)


def _summary(app: StreamApp, runs: list[StreamRun], args: Any, loop: _Loop,
             stats_default: Path | None) -> dict[str, Any]:
    step_lat = loop.step_lat
    summary: dict[str, Any] = {**app.describe(), "source": args.source, "device": str(app.device),
                               "step_latency": step_lat.summary(), "torch_threads": torch.get_num_threads()}
    if len(runs) == 1:
        summary.update(runs[0].summary())
    else:
        streams = [r.summary(batched=True) for r in runs]
        total = sum(r.frames for r in runs)
        busy_s = sum(step_lat.samples) + loop.lone_s
        summary.update({"batch": len(loop.slots), "frames": total, "streams": streams,
                        "aggregate_fps": round(total / busy_s, 2) if busy_s > 0 else None})
    extra = app.one_off_summary(loop.one_off_s)
    if extra:
        summary.update(extra)
    stats_path = Path(args.stats) if args.stats else stats_default
    if stats_path is not None:
        summary["stats_file"] = str(write_json(stats_path, summary))
    return summary
