"""Prophesee files: ``.raw`` EVT2 (32-bit words, ``evt2.py``), ``.raw`` EVT3 (16-bit stateful
words, ``evt3.py``) and ``.dat`` (8-byte records, ``dat_chunks``), each through our own numba
decoder: expelliarmus 1.1.12 decodes EVT3 and ``.dat`` wrongly in cases real files hit (see each
docstring), and its exact EVT2 read plus the copy into our arrays was ~2x slower than one compiled
pass (expelliarmus stays the benchmark's library reference and a test writer). All start with an
ASCII header of ``%`` lines.

The header gives the sensor size (``% geometry WxH``, ``% format EVT3;height=H;width=W`` or the
``.dat`` ``% Width`` / ``% Height`` lines). A body whose length is not a whole number of words is
reported as truncated before the decoder sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clplat.errors import UserError
from clplat.events.jit import compiled
from clplat.events.types import Events

CHUNK_EVENTS = 1 << 18
_WORD = {"evt2": 4, "evt3": 2, "dat": 8}


def read_header(path: Path) -> tuple[str, int]:
    """(header text, body offset): the leading lines that start with ``%``."""
    with open(path, "rb") as fh:
        head = b""
        while True:
            pos = fh.tell()
            first = fh.read(1)
            if first != b"%":
                return head.decode("latin-1"), pos
            line = first + fh.readline()
            head += line
            if line.rstrip(b"\r\n").strip() == b"% end":
                return head.decode("latin-1"), fh.tell()


def sensor_size(header: str) -> tuple[int | None, int | None]:
    m = re.search(r"%\s*geometry\s+(\d+)\s*x\s*(\d+)", header, re.I)
    if m:
        return int(m.group(1)), int(m.group(2))
    w = re.search(r"width\s*[=\s]\s*(\d+)", header, re.I)
    h = re.search(r"height\s*[=\s]\s*(\d+)", header, re.I)
    return (int(w.group(1)) if w else None), (int(h.group(1)) if h else None)


def _check_body(path: Path, fmt: str, offset: int) -> None:
    body = path.stat().st_size - offset - (2 if fmt == "dat" else 0)
    if body < 0 or body % _WORD[fmt]:
        words = f"{_WORD[fmt]}-byte words"
        raise UserError(f"{path}: truncated {fmt} file ({body} body bytes is not a whole number of {words})")
    if fmt == "dat":
        with open(path, "rb") as fh:
            fh.seek(offset)
            ev_type, ev_size = fh.read(2)
        if ev_size != 8:
            raise UserError(f"{path}: .dat event size {ev_size} is not 8 (only CD 8-byte records are supported)")


def prophesee_chunks(path: Path, fmt: str, whole: bool = False) -> Iterator[Events]:
    """Events in file order; ``whole`` = one chunk (no concatenation copy in ``read_events``)."""
    header, offset = read_header(path)
    w, h = sensor_size(header)
    _check_body(path, fmt, offset)
    if fmt == "evt3":
        from clplat.events.evt3 import evt3_chunks

        yield from evt3_chunks(path, offset, w, h, whole)
        return
    if fmt == "dat":
        yield from dat_chunks(path, offset + 2, w, h, whole)
        return
    from clplat.events.evt2 import evt2_chunks

    yield from evt2_chunks(path, offset, w, h, whole)


@compiled
def _decode_dat(rec, st, x, y, t, p):  # pragma: no cover - compiled
    """One pass over ``.dat`` records: u32 time unwrapped (st = [wraps, previous raw time])."""
    wraps, prev = st[0], st[1]
    for i in range(len(rec)):
        raw = np.int64(rec[i, 0])
        if prev - raw > 2**31:
            wraps += 1
        prev = raw
        t[i] = raw + (wraps << 32)
        w = rec[i, 1]
        x[i] = w & 0x3FFF
        y[i] = (w >> 14) & 0x3FFF
        p[i] = (w >> 28) & 1
    st[0], st[1] = wraps, prev


def dat_chunks(path: Path, offset: int, w: int | None, h: int | None, whole: bool = False) -> Iterator[Events]:
    """``.dat`` records read through a memory map, CHUNK_EVENTS at a time (``whole``: one piece).
    The u32 time wraps after 2^32 µs: a drop of more than 2^31 is taken as a wrap, any smaller drop
    is left in place so validation reports it (expelliarmus 1.1.12 turns every drop into a wrap and
    hides the error). A numba pass: the numpy version was ~2x slower than expelliarmus's reader."""
    rec = np.memmap(path, dtype="<u4", mode="r", offset=offset).reshape(-1, 2)
    st = np.zeros(2, dtype=np.int64)
    step = max(len(rec), 1) if whole else CHUNK_EVENTS
    for i in range(0, len(rec), step):
        part = rec[i : i + step]
        n = len(part)
        ev = (np.empty(n, np.uint16), np.empty(n, np.uint16), np.empty(n, np.int64), np.empty(n, np.uint8))
        if i == 0:
            st[1] = int(part[0, 0])
        _decode_dat(part, st, *ev)
        yield Events(*ev, w, h)
