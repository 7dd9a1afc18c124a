"""Prophesee files: ``.raw`` EVT2 (32-bit words) through ``expelliarmus``; ``.raw`` EVT3 (16-bit
stateful words, ``evt3.py``) and ``.dat`` (8-byte records, ``dat_chunks``) through our own numpy
decoders, because expelliarmus 1.1.12 decodes both wrongly in cases real files hit (see each
docstring). All start with an ASCII header of ``%`` lines.

The header gives the sensor size (``% geometry WxH``, ``% format EVT3;height=H;width=W`` or the
``.dat`` ``% Width`` / ``% Height`` lines). A body whose length is not a whole number of words is
reported as truncated before the decoder sees it. Chunks come from ``Wizard.read_chunk``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clplat.errors import UserError
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
    """Events in file order; ``whole`` = one chunk (EVT2: the library's one-shot reader, faster)."""
    from expelliarmus import Wizard

    header, offset = read_header(path)
    w, h = sensor_size(header)
    _check_body(path, fmt, offset)
    if fmt == "evt3":
        from clplat.events.evt3 import evt3_chunks

        yield from evt3_chunks(path, offset, w, h)
        return
    if fmt == "dat":
        yield from dat_chunks(path, offset + 2, w, h)
        return
    wizard = Wizard(encoding=fmt, fpath=path, chunk_size=CHUNK_EVENTS)
    try:
        for arr in [wizard.read()] if whole else wizard.read_chunk():
            if not len(arr):
                continue
            if int(arr["x"].min()) < 0 or int(arr["y"].min()) < 0:
                raise UserError(f"{path}: negative coordinate decoded (corrupt {fmt} file)")
            yield Events(arr["x"], arr["y"], arr["t"], arr["p"], w, h)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot decode as {fmt} ({err})") from None


def dat_chunks(path: Path, offset: int, w: int | None, h: int | None) -> Iterator[Events]:
    """``.dat`` records read through a memory map, CHUNK_EVENTS at a time. The u32 time wraps after
    2^32 µs: a drop of more than 2^31 is taken as a wrap, any smaller drop is left in place so
    validation reports it (expelliarmus 1.1.12 turns every drop into a wrap and hides the error)."""
    rec = np.memmap(path, dtype=[("t", "<u4"), ("w", "<u4")], mode="r", offset=offset)
    wraps, prev = 0, None
    for i in range(0, len(rec), CHUNK_EVENTS):
        part = np.asarray(rec[i : i + CHUNK_EVENTS])
        t = part["t"].astype(np.int64)
        before = np.concatenate([[t[0] if prev is None else prev], t[:-1]])
        drops = np.cumsum(before - t > 2**31)
        prev = int(t[-1])
        t += (wraps + drops) << 32
        wraps += int(drops[-1])
        word = part["w"]
        yield Events(word & 0x3FFF, (word >> 14) & 0x3FFF, t, (word >> 28) & 1, w, h)


def read_prophesee_whole(path: Path, fmt: str) -> np.ndarray:
    """The library's own one-shot reader (used by the throughput benchmark as the reference)."""
    from expelliarmus import Wizard

    return Wizard(encoding=fmt, fpath=path).read()
