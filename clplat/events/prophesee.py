"""Prophesee files: ``.raw`` EVT2 (32-bit words) and ``.dat`` (8-byte records) through
``expelliarmus``; ``.raw`` EVT3 (16-bit stateful words) through our own decoder (``evt3.py`` says
why). All start with an ASCII header of ``%`` lines.

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


def prophesee_chunks(path: Path, fmt: str) -> Iterator[Events]:
    from expelliarmus import Wizard

    header, offset = read_header(path)
    w, h = sensor_size(header)
    _check_body(path, fmt, offset)
    if fmt == "evt3":
        from clplat.events.evt3 import evt3_chunks

        yield from evt3_chunks(path, offset, w, h)
        return
    wizard = Wizard(encoding=fmt, fpath=path, chunk_size=CHUNK_EVENTS)
    try:
        for arr in wizard.read_chunk():
            if not len(arr):
                continue
            if int(arr["x"].min()) < 0 or int(arr["y"].min()) < 0:
                raise UserError(f"{path}: negative coordinate decoded (corrupt {fmt} file)")
            yield Events(arr["x"], arr["y"], arr["t"], arr["p"], w, h)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot decode as {fmt} ({err})") from None


def read_prophesee_whole(path: Path, fmt: str) -> np.ndarray:
    """The library's own one-shot reader (used by the throughput benchmark as the reference)."""
    from expelliarmus import Wizard

    return Wizard(encoding=fmt, fpath=path).read()
