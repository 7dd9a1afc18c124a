"""AEDAT4 (iniVation DV) through the ``aedat`` decoder: packets of ``events`` structured arrays
(t µs, x, y, on) from the first event stream; the sensor size comes from the stream description.
Frames, IMU and trigger packets are skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clplat.errors import UserError
from clplat.events.types import Events


def aedat4_chunks(path: Path) -> Iterator[Events]:
    import aedat

    try:
        decoder = aedat.Decoder(str(path))
        streams = decoder.id_to_stream()
        ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
        if not ids:
            raise UserError(f"{path}: AEDAT4 file has no event stream")
        sid = ids[0]
        w, h = streams[sid].get("width"), streams[sid].get("height")
        for packet in decoder:
            if packet["stream_id"] != sid or "events" not in packet:
                continue
            e = packet["events"]
            yield Events(e["x"], e["y"], e["t"], e["on"], w, h)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot decode as AEDAT4 ({err})") from None
