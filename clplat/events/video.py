"""Video file -> events, frame by frame (PyAV decode, grey levels in [0, 1], frame times from the
container's timestamps) through :class:`EventSimulator`; the stream source behind ``sim:VIDEO``
and ``python -m clplat.events simulate``. Memory is one frame plus one interval's events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clplat.errors import UserError
from clplat.events.simulate import EventSimulator, SimConfig
from clplat.events.types import Events, concat_events

__all__ = ["iter_video_events", "iter_video_windows", "video_frames", "video_to_events"]


def video_frames(path: str | Path, size: tuple[int, int] | None = None,
                 max_frames: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """(grey float32 [H, W] in [0, 1], t µs) per decoded frame; ``size`` = (H, W) resizes."""
    import av

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such video file")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError) as err:
        raise UserError(f"{p}: cannot open as a video ({err})") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{p}: has no video stream")
        stream = container.streams.video[0]
        last_t = None
        count = 0
        try:
            for frame in container.decode(stream):
                if max_frames is not None and count >= max_frames:
                    break
                if frame.time is None:
                    continue
                t = int(round(frame.time * 1e6))
                if last_t is not None and t <= last_t:  # duplicate / reordered timestamps: skip
                    continue
                kw = {"width": size[1], "height": size[0]} if size else {}
                grey = frame.to_ndarray(format="gray", **kw).astype(np.float32) / 255.0
                last_t = t
                count += 1
                yield grey, t
        except av.error.FFmpegError as err:
            raise UserError(f"{p}: video decoding failed after {count} frames ({err})") from None
        if count == 0:
            raise UserError(f"{p}: no decodable video frames")


def iter_video_events(path: str | Path, cfg: SimConfig | None = None, seed: int = 0,
                      size: tuple[int, int] | None = None, max_frames: int | None = None) -> Iterator[Events]:
    """Events of each inter-frame interval, in time order (the first frame only sets the reference)."""
    sim: EventSimulator | None = None
    for grey, t in video_frames(path, size, max_frames):
        if sim is None:
            sim = EventSimulator(grey.shape[0], grey.shape[1], cfg, seed)
        yield sim.step(grey, t)


def iter_video_windows(path: str | Path, window_us: int = 10_000, cfg: SimConfig | None = None, seed: int = 0,
                       size: tuple[int, int] | None = None, max_frames: int | None = None) -> Iterator[Events]:
    """The simulated events of a video in fixed windows (the ``sim:VIDEO`` stream source): window k
    covers ``[t0 + k·w, t0 + (k+1)·w)`` from the first event, empty windows included."""
    from clplat.events.readers import rewindow

    return rewindow(iter_video_events(path, cfg, seed, size, max_frames), window_us, None, None)


def video_to_events(path: str | Path, cfg: SimConfig | None = None, seed: int = 0,
                    size: tuple[int, int] | None = None, max_frames: int | None = None) -> Events:
    parts = list(iter_video_events(path, cfg, seed, size, max_frames))
    w = parts[0].width if parts else None
    h = parts[0].height if parts else None
    return concat_events([p for p in parts if len(p)], w, h)
