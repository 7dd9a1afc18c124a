"""Prophesee EVT3 decoder (our own: a numba state machine, chunked with carried state).

Why not expelliarmus for EVT3: version 1.1.12 adds 4096 µs twice when a TIME_HIGH word is followed
by a smaller TIME_LOW (e.g. TIME_HIGH 0, TIME_LOW 4090, event, TIME_HIGH 1, TIME_LOW 4, event
decodes as 4090, 8196 instead of 4090, 4100), which is how every camera writes a time-high step;
its encoder omits TIME_HIGH words for gaps over 4 ms. DAT and EVT2 through expelliarmus are exact.

Format (Prophesee EVT 3.0, 16-bit little-endian words, type = top 4 bits):
0 ADDR_Y (y = w & 0x7FF), 2 ADDR_X (pol = bit 11, x = w & 0x7FF: one event), 3 VECT_BASE_X
(pol, base x), 4 VECT_12 / 5 VECT_8 (bit i set = event at base + i; base then advances 12 / 8),
6 TIME_LOW (t[11:0]), 8 TIME_HIGH (t[23:12]); others (triggers, continued, padding) are skipped.
Time is 24-bit: a TIME_HIGH smaller than the previous one means the counter wrapped (+2^24 µs).
A TIME_LOW smaller than the previous one with no TIME_HIGH between them is taken as an implicit
time-high step (conforming files never have one; expelliarmus's encoder writes them).

Why numba: the words are a state machine (time, row, vector base carried from word to word); one
compiled pass is within reach of the C decoders, where the earlier vectorised-numpy version (kept as
the test reference, ``tests/events/evt3_reference.py``) needed ~20 array passes and was 3-4x slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clplat.events.jit import compiled
from clplat.events.types import Events
from clplat.events.words import decode_chunk, word_chunks

CHUNK_WORDS = 1 << 18
# decoder state carried across chunks (int64 slots)
_WRAPS, _RAW_HIGH, _HIGH, _LOW, _HIGH_SINCE_LOW, _Y, _BASE, _POL = range(8)


def new_state() -> np.ndarray:
    """The state before the first word: time 0, row 0, base 0, and 'a TIME_HIGH came last'."""
    st = np.zeros(8, dtype=np.int64)
    st[_HIGH_SINCE_LOW] = 1
    return st


@compiled
def _count_events(words: np.ndarray) -> int:  # pragma: no cover - compiled
    n = 0
    for w in words:
        typ = w >> 12
        if typ == 2:
            n += 1
        elif typ == 4 or typ == 5:
            m = w & (0xFFF if typ == 4 else 0xFF)
            while m:
                m &= m - 1
                n += 1
    return n


@compiled
def _decode(words, st, x, y, t, p):  # pragma: no cover - compiled
    """Fill x, y, t, p (sized by _count_events) from ``words``; ``st`` is updated in place."""
    wraps, raw_high, high, low = st[_WRAPS], st[_RAW_HIGH], st[_HIGH], st[_LOW]
    high_since_low, row, base, pol = st[_HIGH_SINCE_LOW], st[_Y], st[_BASE], st[_POL]
    now = high * 4096 + low
    n = 0
    for w in words:
        typ = w >> 12
        val = np.int64(w & 0xFFF)
        if typ == 2:  # ADDR_X: one event
            x[n] = val & 0x7FF
            y[n] = row
            t[n] = now
            p[n] = val >> 11
            n += 1
        elif typ == 0:  # ADDR_Y
            row = val & 0x7FF
        elif typ == 6:  # TIME_LOW
            if val < low and not high_since_low:
                high += 1  # implicit time-high step
            low = val
            high_since_low = 0
            now = high * 4096 + low
        elif typ == 8:  # TIME_HIGH
            if val < raw_high:
                wraps += 1  # the 24-bit counter wrapped
            raw_high = val
            high = val + 4096 * wraps
            high_since_low = 1
            now = high * 4096 + low
        elif typ == 3:  # VECT_BASE_X
            base = val & 0x7FF
            pol = val >> 11
        elif typ == 4 or typ == 5:  # VECT_12 / VECT_8
            size = 12 if typ == 4 else 8
            for i in range(size):
                if (val >> i) & 1:
                    x[n] = base + i
                    y[n] = row
                    t[n] = now
                    p[n] = pol
                    n += 1
            base += size
    st[_WRAPS], st[_RAW_HIGH], st[_HIGH], st[_LOW] = wraps, raw_high, high, low
    st[_HIGH_SINCE_LOW], st[_Y], st[_BASE], st[_POL] = high_since_low, row, base, pol


def decode_words(words: np.ndarray, st: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, t, p) of one chunk of uint16 words; ``st`` (from ``new_state``) carries to the next."""
    return decode_chunk(_count_events, _decode, np.ascontiguousarray(words, dtype=np.uint16), st)


def evt3_chunks(
    path: Path, offset: int, width: int | None, height: int | None, whole: bool = False
) -> Iterator[Events]:
    """Events of the body at ``offset``, CHUNK_WORDS words at a time (``whole``: in one piece)."""
    chunk = -1 if whole else CHUNK_WORDS
    return word_chunks(path, offset, "<u2", chunk, new_state(), decode_words, width, height)
