"""The one in-memory event container: four numpy arrays plus the sensor size.

Conventions (docs/events.md): ``t`` is int64 microseconds, absolute (a file's offset such as DSEC's
``t_offset`` already added back) and non-decreasing; ``p`` is uint8 with 1 = ON (brightness up) and
0 = OFF; ``x`` (column) and ``y`` (row) are uint16 pixel coordinates. ``width`` / ``height`` are
``None`` when the file does not say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clplat.errors import UserError
from clplat.events.jit import compiled

__all__ = ["Events", "check_events", "concat_events", "empty_events"]


@dataclass
class Events:
    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.uint16)
        self.y = np.ascontiguousarray(self.y, dtype=np.uint16)
        self.t = np.ascontiguousarray(self.t, dtype=np.int64)
        self.p = np.ascontiguousarray(self.p, dtype=np.uint8)
        n = len(self.t)
        if not (len(self.x) == len(self.y) == len(self.p) == n):
            raise ValueError(f"x, y, t, p lengths differ: {len(self.x)}, {len(self.y)}, {n}, {len(self.p)}")

    def __len__(self) -> int:
        return len(self.t)

    def _take(self, sl: slice | np.ndarray) -> Events:
        return Events(self.x[sl], self.y[sl], self.t[sl], self.p[sl], self.width, self.height)

    def slice_time(self, t0: int | None, t1: int | None) -> Events:
        """Events with ``t0 <= t < t1`` (µs, absolute; ``None`` = open end). Binary search: t is sorted."""
        lo = 0 if t0 is None else int(np.searchsorted(self.t, t0, side="left"))
        hi = len(self) if t1 is None else int(np.searchsorted(self.t, t1, side="left"))
        return self._take(slice(lo, max(lo, hi)))

    @property
    def duration_us(self) -> int:
        return int(self.t[-1] - self.t[0]) if len(self) else 0


def empty_events(width: int | None = None, height: int | None = None) -> Events:
    z = np.zeros(0)
    return Events(z, z, z, z, width, height)


def concat_events(parts: Sequence[Events], width: int | None = None, height: int | None = None) -> Events:
    """Concatenate in order (the caller guarantees the time order across parts)."""
    if not parts:
        return empty_events(width, height)
    w = width if width is not None else parts[0].width
    h = height if height is not None else parts[0].height
    if len(parts) == 1:  # no copy
        e = parts[0]
        return e if (e.width, e.height) == (w, h) else Events(e.x, e.y, e.t, e.p, w, h)
    return Events(
        np.concatenate([e.x for e in parts]),
        np.concatenate([e.y for e in parts]),
        np.concatenate([e.t for e in parts]),
        np.concatenate([e.p for e in parts]),
        w,
        h,
    )


@compiled
def _first_problem(t, x, y, p, has_prev, prev_t, width, height):  # pragma: no cover - compiled
    """(kind, index) of the first bad event in one pass: 1 time decrease, 2 x, 3 y, 4 polarity;
    (0, -1) when all are good. ``width`` / ``height`` < 0 mean unknown."""
    last = prev_t if has_prev else t[0]
    for i in range(len(t)):
        if t[i] < last:
            return 1, i
        last = t[i]
        if width >= 0 and x[i] >= width:
            return 2, i
        if height >= 0 and y[i] >= height:
            return 3, i
        if p[i] > 1:
            return 4, i
    return 0, -1


def check_events(ev: Events, source: str, prev_t: int | None = None) -> Events:
    """Raise a one-line :class:`UserError` naming ``source`` when timestamps decrease (also against
    ``prev_t``, the last timestamp of the previous chunk), a coordinate lies outside the sensor or a
    polarity is not 0/1. One compiled pass (the numpy checks cost as much as reading the file)."""
    if not len(ev):
        return ev
    has_prev, prev = prev_t is not None, 0 if prev_t is None else int(prev_t)
    kind, i = _first_problem(ev.t, ev.x, ev.y, ev.p, has_prev, prev, _size(ev.width), _size(ev.height))
    if kind == 1:
        before = prev_t if i == 0 else int(ev.t[i - 1])
        where = f"at event {i} " if i else ""
        raise UserError(f"{source}: timestamps decrease {where}({int(ev.t[i])} us after {before} us)")
    if kind in (2, 3):
        name, arr = ("x", ev.x) if kind == 2 else ("y", ev.y)
        sensor = f"{ev.width}x{ev.height}"
        raise UserError(f"{source}: event {i} has {name}={int(arr[i])} outside the {sensor} sensor")
    if kind == 4:
        raise UserError(f"{source}: polarity must be 0 or 1, found {int(ev.p[i])}")
    return ev


def _size(v: int | None) -> int:
    return -1 if v is None else int(v)
