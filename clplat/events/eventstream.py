"""Event Stream ``.es`` files (PyPI ``event_stream``, Neuromorphic-Systems): DVS type only — ATIS,
colour and generic streams carry other event kinds and are refused with a clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clplat.errors import UserError
from clplat.events.types import Events


def es_chunks(path: Path) -> Iterator[Events]:
    import event_stream

    try:
        decoder = event_stream.Decoder(str(path))
        if decoder.type != "dvs":
            raise UserError(f"{path}: Event Stream type {decoder.type!r} is not supported (only 'dvs')")
        w, h = int(decoder.width), int(decoder.height)
        for chunk in decoder:
            yield Events(chunk["x"], chunk["y"], chunk["t"].astype("int64"), chunk["on"], w, h)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot decode as Event Stream ({err})") from None
