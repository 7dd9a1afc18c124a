"""Byte-exact writers for the Prophesee formats (from the format documents, independent of the
readers under test) and a random event generator shared by the event tests."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from clplat.events import Events


def random_events(n: int, width: int, height: int, seed: int = 0, t0: int = 0, max_gap: int = 300) -> Events:
    rng = np.random.default_rng(seed)
    t = t0 + np.cumsum(rng.integers(0, max_gap, n))
    return Events(rng.integers(0, width, n), rng.integers(0, height, n), t, rng.integers(0, 2, n), width, height)


def write_evt2(path: Path, ev: Events) -> None:
    """EVT2: 32-bit LE words; TIME_HIGH (type 8) holds t >> 6, CD_OFF/CD_ON (0/1) hold t & 63, x, y."""
    head = f"% evt 2.0\n% format EVT2;height={ev.height};width={ev.width}\n% end\n".encode()
    words, high = [], None
    for t, x, y, p in zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist()):
        if t >> 6 != high:
            high = t >> 6
            words.append((0x8 << 28) | (high & 0x0FFFFFFF))
        words.append((p << 28) | ((t & 0x3F) << 22) | ((x & 0x7FF) << 11) | (y & 0x7FF))
    path.write_bytes(head + struct.pack(f"<{len(words)}I", *words))


def write_evt3(path: Path, ev: Events, vectorise: bool = True) -> None:
    """EVT3: 16-bit LE words. TIME_HIGH (8) = t[23:12], TIME_LOW (6) = t[11:0], ADDR_Y (0) = y,
    ADDR_X (2) = pol<<11 | x; runs of same-time same-row same-polarity events at consecutive x (up
    to 32) are written as VECT_BASE_X (3) + VECT_12 (4) / VECT_8 (5) masks, exercising the
    decoder's vector path and its base advance."""
    head = f"% evt 3.0\n% format EVT3;height={ev.height};width={ev.width}\n% end\n".encode()
    words: list[int] = []
    high = low = row = None
    i, n = 0, len(ev)
    t, x, y, p = ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist()
    while i < n:
        if t[i] >> 12 != high:
            high = t[i] >> 12
            words.append((0x8 << 12) | (high & 0xFFF))
            low = None
        if t[i] & 0xFFF != low:
            low = t[i] & 0xFFF
            words.append((0x6 << 12) | low)
        if y[i] != row:
            row = y[i]
            words.append(row & 0x7FF)
        j = i + 1
        while (vectorise and j < n and j - i < 32 and t[j] == t[i] and y[j] == y[i] and p[j] == p[i]
               and x[j] == x[j - 1] + 1):
            j += 1
        if j - i >= 2:  # VECT_BASE_X, then VECT_12 / VECT_8 words, each advancing the base x
            words.append((0x3 << 12) | (p[i] << 11) | x[i])
            left = j - i
            while left > 0:
                if left > 8:
                    take = min(left, 12)
                    words.append((0x4 << 12) | ((1 << take) - 1))
                    left -= 12 if take == 12 else left
                    if take < 12:
                        break
                else:
                    words.append((0x5 << 12) | ((1 << left) - 1))
                    left = 0
        else:
            words.append((0x2 << 12) | (p[i] << 11) | x[i])
            j = i + 1
        i = j
    path.write_bytes(head + struct.pack(f"<{len(words)}H", *words))


def write_dat(path: Path, ev: Events) -> None:
    """.dat: '%' header (Width/Height), type/size bytes (12, 8), then u32 t, u32 x | y<<14 | p<<28."""
    head = f"% Data file containing CD events.\n% Version 2\n% Width {ev.width}\n% Height {ev.height}\n".encode()
    rec = np.empty(len(ev), dtype=[("t", "<u4"), ("w", "<u4")])
    rec["t"] = ev.t
    rec["w"] = ev.x.astype(np.uint32) | (ev.y.astype(np.uint32) << 14) | (ev.p.astype(np.uint32) << 28)
    path.write_bytes(head + bytes([12, 8]) + rec.tobytes())
