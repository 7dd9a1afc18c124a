"""``read_events`` / ``iter_windows``: one entry point for every supported event file format.

The format is chosen by magic bytes first, then by extension, and ``format=`` overrides both.
Every reader yields :class:`Events` chunks in file order; this module slices them to
``[t_start_us, t_end_us)``, validates them (decreasing time, coordinates outside the sensor) and,
for ``iter_windows``, re-cuts the chunks into fixed windows while holding at most one chunk plus
one window in memory. Format libraries are imported lazily inside their reader.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from clplat.errors import UserError
from clplat.events.types import Events, check_events, concat_events, empty_events

FORMATS = ("dsec", "aedat4", "evt2", "evt3", "dat", "es", "npz", "text")
_EXTENSIONS = {
    ".h5": "dsec", ".hdf5": "dsec", ".aedat4": "aedat4", ".dat": "dat", ".es": "es",
    ".npz": "npz", ".txt": "text", ".csv": "text",
}
_MAGIC = ((b"\x89HDF\r\n\x1a\n", "dsec"), (b"#!AER-DAT4.0", "aedat4"), (b"Event Stream", "es"), (b"PK\x03\x04", "npz"))


def _prophesee_kind(path: Path) -> str | None:
    """``evt2`` / ``evt3`` / ``dat`` from the ``%`` header of a Prophesee file, else None."""
    from clplat.events.prophesee import read_header

    header = read_header(path)[0].lower()
    m = re.search(r"^%\s*evt\s+(\d)", header, re.M) or re.search(r"^%\s*format\s+evt\s*(\d)", header, re.M)
    if m and m.group(1) in ("2", "3"):
        return f"evt{m.group(1)}"
    if path.suffix.lower() == ".dat" or "version 2" in header or "cd events" in header:
        return "dat"
    return None


def detect_format(path: str | Path, format: str | None = None) -> str:
    """The format name of ``path`` (``format=`` wins); one-line UserError when unknown or missing."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such event file")
    if format is not None:
        fmt = format.lower()
        if fmt not in FORMATS:
            raise UserError(f"{p}: unknown event format {format!r} (choose from {', '.join(FORMATS)})")
        return fmt
    with open(p, "rb") as fh:
        head = fh.read(16)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head.startswith(b"%"):
        kind = _prophesee_kind(p)
        if kind:
            return kind
    ext = p.suffix.lower()
    if ext == ".raw":
        raise UserError(f"{p}: .raw file without an 'evt 2.0' / 'evt 3.0' header line; pass format='evt2' or 'evt3'")
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    raise UserError(f"{p}: unknown event file format (known: {', '.join(FORMATS)}; pass format= to choose)")


def _chunk_source(fmt: str, whole: bool = False) -> Callable[[Path], Iterator[Events]]:
    if fmt in ("evt2", "evt3", "dat"):
        from clplat.events.prophesee import prophesee_chunks

        return lambda p: prophesee_chunks(p, fmt, whole)
    if fmt == "aedat4":
        from clplat.events.aedat4 import aedat4_chunks

        return aedat4_chunks
    if fmt == "es":
        from clplat.events.eventstream import es_chunks

        return es_chunks
    if fmt == "npz":
        from clplat.events.plain import npz_chunks

        return lambda p: npz_chunks(p, whole)
    if fmt == "text":
        from clplat.events.plain import text_chunks

        return lambda p: text_chunks(p, whole)
    raise AssertionError(fmt)


def _checked_chunks(path: Path, fmt: str, whole: bool = False) -> Iterator[Events]:
    """The format's chunks, validated across chunk borders (``whole``: as few as the format allows)."""
    prev: int | None = None
    for chunk in _chunk_source(fmt, whole)(path):
        check_events(chunk, str(path), prev)
        if len(chunk):
            prev = int(chunk.t[-1])
        yield chunk


def read_events(
    path: str | Path, t_start_us: int | None = None, t_end_us: int | None = None, format: str | None = None
) -> Events:
    """All events of ``path`` with ``t_start_us <= t < t_end_us`` (absolute µs; None = open end)."""
    p = Path(path)
    fmt = detect_format(p, format)
    if fmt == "dsec":
        from clplat.events.dsec import read_dsec

        return check_events(read_dsec(p, t_start_us, t_end_us), str(p))
    parts: list[Events] = []
    w = h = None
    for chunk in _checked_chunks(p, fmt, whole=True):
        w, h = chunk.width, chunk.height
        if t_end_us is not None and len(chunk) and chunk.t[0] >= t_end_us:
            break
        part = chunk.slice_time(t_start_us, t_end_us)
        if len(part):
            parts.append(part)
    return concat_events(parts, w, h)


def window_origin_and_end(
    span: tuple[int, int] | None, t_start_us: int | None, t_end_us: int | None
) -> tuple[int, int] | None:
    """``(t0, t_stop)`` of the windows: from ``t_start_us`` (else the first event) to ``t_end_us``
    (else just past the last event); None when there is nothing to cover."""
    if span is None and (t_start_us is None or t_end_us is None):
        return None
    t0 = t_start_us if t_start_us is not None else span[0]
    t_stop = t_end_us if t_end_us is not None else span[1] + 1
    return (t0, t_stop) if t_stop > t0 else None


def rewindow(
    chunks: Iterator[Events], window_us: int, t_start_us: int | None, t_end_us: int | None
) -> Iterator[Events]:
    """Cut time-ordered chunks into windows ``[t0 + k·w, t0 + (k+1)·w)``, empty windows included.

    Holds one chunk and the pending part of one window at a time.
    """
    pending: list[Events] = []
    t0: int | None = t_start_us
    a = b = 0
    last_t: int | None = None
    w = h = None
    for chunk in chunks:
        w, h = chunk.width, chunk.height
        if not len(chunk):
            continue
        if t0 is None:
            t0 = int(chunk.t[0])
        if last_t is None:
            a, b = t0, t0 + window_us
        last_t = int(chunk.t[-1])
        chunk = chunk.slice_time(t_start_us, t_end_us)
        while len(chunk):
            if t_end_us is not None:
                b = min(b, t_end_us)
            cut = int(np.searchsorted(chunk.t, b, side="left"))
            if cut:
                pending.append(chunk._take(slice(0, cut)))
            if cut == len(chunk):
                break
            yield concat_events(pending, w, h)
            pending, a, b = [], b, b + window_us
            chunk = chunk._take(slice(cut, None))
        if t_end_us is not None and last_t >= t_end_us:
            break
    if t0 is None:  # no events at all
        if t_start_us is not None and t_end_us is not None:
            a = t_start_us
            while a < t_end_us:
                yield empty_events(w, h)
                a += window_us
        return
    stop = t_end_us if t_end_us is not None else last_t + 1
    while a < stop:
        yield concat_events(pending, w, h)
        pending, a, b = [], b, b + window_us


def iter_windows(
    path: str | Path,
    window_us: int,
    t_start_us: int | None = None,
    t_end_us: int | None = None,
    format: str | None = None,
) -> Iterator[Events]:
    """Stream ``path`` as consecutive windows of ``window_us`` µs without loading it whole.

    Windows start at ``t_start_us`` (else the first event) and run to ``t_end_us`` (else the last
    event); windows without events are yielded empty, so window k always covers the same time.
    """
    if window_us <= 0:
        raise UserError(f"window_us must be positive, got {window_us}")
    p = Path(path)
    fmt = detect_format(p, format)
    if fmt == "dsec":
        from clplat.events.dsec import dsec_windows

        prev: int | None = None
        for win in dsec_windows(p, window_us, t_start_us, t_end_us):
            check_events(win, str(p), prev)
            prev = int(win.t[-1]) if len(win) else prev
            yield win
        return
    yield from rewindow(_checked_chunks(p, fmt), window_us, t_start_us, t_end_us)


def file_info(path: str | Path, format: str | None = None) -> dict[str, object]:
    """Format, event count, time span, sensor size and ON fraction (one streaming pass)."""
    p = Path(path)
    fmt = detect_format(p, format)
    n = on = 0
    t_first = t_last = None
    w = h = None
    for win in iter_windows(p, 1_000_000, format=fmt):
        w, h = win.width, win.height
        if len(win):
            n += len(win)
            on += int(win.p.sum())
            t_first = int(win.t[0]) if t_first is None else t_first
            t_last = int(win.t[-1])
    return {"path": str(p), "format": fmt, "events": n, "t_first_us": t_first, "t_last_us": t_last,
            "width": w, "height": h, "on_fraction": (on / n) if n else None}
