"""DSEC-layout HDF5: ``/events/{x,y,t,p}``, ``/ms_to_idx``, ``/t_offset`` (spec streaming.md §4).

``t`` is stored relative to ``t_offset`` (µs); ``ms_to_idx[ms]`` is the first event index with
``t >= ms*1000``, which is what lets a window be read without loading the file. Datasets are Blosc
compressed, so ``hdf5plugin`` is imported before h5py opens anything. ``width`` / ``height`` are
kept as attributes of ``/events`` when known (DSEC itself does not store them: 640x480).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clplat.errors import UserError
from clplat.events.types import Events, empty_events
from clplat.io import atomic_path

CHUNK = 1 << 16  # events per HDF5 chunk (and per fallback read)


def _h5():
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter)

    return h5py


class DsecFile:
    """An open DSEC events file; index helpers use ``ms_to_idx`` then a fine search in a small slice."""

    def __init__(self, path: str | Path):
        h5py = _h5()
        self.path = str(path)
        try:
            self.f = h5py.File(self.path, "r")
            g = self.f["events"]
            self.x, self.y, self.t, self.p = g["x"], g["y"], g["t"], g["p"]
        except (OSError, KeyError) as err:
            raise UserError(f"{self.path}: not a readable DSEC events file ({err})") from None
        if not (len(self.x) == len(self.y) == len(self.t) == len(self.p)):
            raise UserError(f"{self.path}: /events/x, y, t, p have different lengths (truncated file?)")
        self.n = len(self.t)
        self.offset = int(self.f["t_offset"][()]) if "t_offset" in self.f else 0
        self.ms_to_idx = self.f["ms_to_idx"][:].astype(np.int64) if "ms_to_idx" in self.f else None
        self.width = int(g.attrs["width"]) if "width" in g.attrs else None
        self.height = int(g.attrs["height"]) if "height" in g.attrs else None

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> DsecFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def first_index(self, t_rel: int) -> int:
        """First index with relative ``t >= t_rel``."""
        if self.n == 0 or t_rel <= 0:
            return 0
        lo, hi = 0, self.n
        if self.ms_to_idx is not None and len(self.ms_to_idx):
            ms = t_rel // 1000
            if ms >= len(self.ms_to_idx):
                lo = int(self.ms_to_idx[-1])
            else:
                lo = int(self.ms_to_idx[ms])
                if ms + 1 < len(self.ms_to_idx):
                    hi = int(self.ms_to_idx[ms + 1])
        while hi - lo > CHUNK:  # no (or a coarse) index: bisect on single elements first
            mid = (lo + hi) // 2
            if int(self.t[mid]) < t_rel:
                lo = mid + 1
            else:
                hi = mid  # t[mid] >= t_rel: mid is an answer, the first one is at most mid
        # fine search inside [lo, hi): read in CHUNK-sized pieces so memory stays bounded
        while lo < hi:
            stop = min(hi, lo + CHUNK)
            part = self.t[lo:stop]
            k = int(np.searchsorted(part, t_rel, side="left"))
            if k < len(part):
                return lo + k
            lo = stop
        return lo

    def read_range(self, i0: int, i1: int) -> Events:
        if i1 <= i0:
            return empty_events(self.width, self.height)
        try:
            t = self.t[i0:i1].astype(np.int64) + self.offset
            return Events(self.x[i0:i1], self.y[i0:i1], t, self.p[i0:i1], self.width, self.height)
        except OSError as err:
            raise UserError(f"{self.path}: cannot read events {i0}..{i1} ({err})") from None

    def index_range(self, t_start_us: int | None, t_end_us: int | None) -> tuple[int, int]:
        i0 = 0 if t_start_us is None else self.first_index(t_start_us - self.offset)
        i1 = self.n if t_end_us is None else self.first_index(t_end_us - self.offset)
        return i0, max(i0, i1)

    def first_last_t(self) -> tuple[int, int] | None:
        if self.n == 0:
            return None
        return int(self.t[0]) + self.offset, int(self.t[self.n - 1]) + self.offset


def read_dsec(path: str | Path, t_start_us: int | None = None, t_end_us: int | None = None) -> Events:
    with DsecFile(path) as f:
        return f.read_range(*f.index_range(t_start_us, t_end_us))


def dsec_windows(
    path: str | Path, window_us: int, t_start_us: int | None, t_end_us: int | None
) -> Iterator[Events]:
    """Windows ``[t0 + k·w, t0 + (k+1)·w)`` read one at a time (memory bounded by one window)."""
    from clplat.events.readers import window_origin_and_end

    with DsecFile(path) as f:
        span = f.first_last_t()
        bounds = window_origin_and_end(span, t_start_us, t_end_us)
        if bounds is None:
            return
        t0, t_stop = bounds
        a = t0
        i0 = f.first_index(a - f.offset)
        while a < t_stop:
            b = min(a + window_us, t_stop)
            i1 = f.first_index(b - f.offset)
            yield f.read_range(i0, i1)
            a, i0 = b, i1


def ms_to_idx(t_rel: np.ndarray) -> np.ndarray:
    """``out[ms]`` = first index with ``t_rel >= ms*1000``, for ms = 0 .. last_ms (inclusive)."""
    last_ms = int(t_rel[-1]) // 1000 if len(t_rel) else 0
    return np.searchsorted(t_rel, np.arange(last_ms + 1, dtype=np.int64) * 1000, side="left").astype(np.uint64)


def write_dsec_h5(
    path: str | Path, events: Events, t_offset: int | None = None, extra: Callable[[Any], None] | None = None
) -> Path:
    """Write ``events`` in the DSEC layout, atomically (temporary file, fsync, rename).

    ``t_offset`` defaults to the first timestamp, so the stored relative times start at 0; ``t`` is
    stored as uint32 like DSEC when it fits, int64 otherwise. ``extra(h5file)`` may add datasets
    (the scenes' ``/flow``) inside the same atomic write.
    """
    h5py = _h5()
    import hdf5plugin

    off = (int(events.t[0]) if len(events) else 0) if t_offset is None else int(t_offset)
    t_rel = events.t - off
    if len(t_rel) and t_rel[0] < 0:
        raise ValueError("t_offset is later than the first event")
    t_dtype = np.uint32 if (not len(t_rel) or t_rel[-1] < 2**32) else np.int64
    comp = hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.SHUFFLE)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        g = f.create_group("events")
        chunks = (min(CHUNK, max(1, len(events))),)
        for name, arr in (("p", events.p), ("t", t_rel.astype(t_dtype)), ("x", events.x), ("y", events.y)):
            g.create_dataset(name, data=arr, chunks=chunks, **comp)
        if events.width is not None:
            g.attrs["width"] = int(events.width)
        if events.height is not None:
            g.attrs["height"] = int(events.height)
        f.create_dataset("ms_to_idx", data=ms_to_idx(t_rel), **comp)
        f.create_dataset("t_offset", data=np.int64(off))
        if extra is not None:
            extra(f)
    return Path(path)
