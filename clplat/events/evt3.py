"""Prophesee EVT3 decoder (our own, vectorised numpy, chunked with carried state).

Why not expelliarmus for EVT3: version 1.1.12 adds 4096 µs twice when a TIME_HIGH word is followed
by a smaller TIME_LOW (e.g. TIME_HIGH 0, TIME_LOW 4090, event, TIME_HIGH 1, TIME_LOW 4, event
decodes as 4090, 8196 instead of 4090, 4100), which is how every camera writes a time-high step;
its encoder omits TIME_HIGH words for gaps over 4 ms. DAT and EVT2 through expelliarmus are exact.

Format (Prophesee EVT 3.0, 16-bit little-endian words, type = top 4 bits):
0 ADDR_Y (y = w & 0x7FF), 2 ADDR_X (pol = bit 11, x = w & 0x7FF: one event), 3 VECT_BASE_X
(pol, base x), 4 VECT_12 / 5 VECT_8 (bit i set = event at base + i; base then advances 12 / 8),
6 TIME_LOW (t[11:0]), 8 TIME_HIGH (t[23:12]); others (triggers, continued, padding) are skipped.
Time is 24-bit: a TIME_HIGH smaller than the previous one means the counter wrapped (+2^24 µs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clplat.events.types import Events

CHUNK_WORDS = 1 << 22


@dataclass
class _State:
    high: int = 0  # absolute TIME_HIGH (wraps folded in), units of 4096 µs
    raw_high: int = 0
    low: int = 0
    y: int = 0
    base: int = 0  # x of the next vector bit 0
    pol: int = 0
    high_since_low: bool = True  # a TIME_HIGH came after the last TIME_LOW
    carries: int = 0  # implicit TIME_LOW wraps so far
    carries_at_high: int = 0  # ... as counted at the last TIME_HIGH


def _ffill(mask: np.ndarray, values: np.ndarray, initial: int) -> np.ndarray:
    """Per word: the value of the latest word where ``mask`` holds (``initial`` before the first)."""
    idx = np.where(mask, np.arange(len(mask)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, values[np.maximum(idx, 0)], initial)
    return out.astype(np.int64)


def _implicit_carries(typ: np.ndarray, val: np.ndarray, st: _State) -> np.ndarray:
    """Per word: TIME_LOW wraps since the last TIME_HIGH that no TIME_HIGH announced. Conforming
    files never have one (time only grows, and a new high period starts with a TIME_HIGH word);
    expelliarmus's encoder writes them, so its files decode to their true times too."""
    is_low, is_high = typ == 6, typ == 8
    low_idx = np.flatnonzero(is_low)
    highs_before = np.cumsum(is_high)[low_idx]
    # TIME_HIGH count "at the previous TIME_LOW": -1 forces "a high came between" for the first one
    first = -1 if st.high_since_low else 0
    prev_highs = np.concatenate([[first], highs_before[:-1]]) if len(low_idx) else highs_before
    lows = val[low_idx]
    prev_low = np.concatenate([[st.low], lows[:-1]])
    wrap = (lows < prev_low) & (highs_before == prev_highs)
    flags = np.zeros(len(typ), dtype=np.int64)
    flags[low_idx] = wrap
    total = st.carries + np.cumsum(flags)
    at_high = _ffill(is_high, total, st.carries_at_high)
    if len(typ):
        st.carries, st.carries_at_high = int(total[-1]), int(at_high[-1])
        last_low, last_high = (low_idx[-1] if len(low_idx) else -1), np.flatnonzero(is_high)
        high_after = bool(len(last_high) and last_high[-1] > last_low)
        st.high_since_low = high_after or (not len(low_idx) and st.high_since_low)
    return total - at_high


def decode_words(words: np.ndarray, st: _State) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, t, p) of one chunk of words; ``st`` carries the decoder state to the next chunk."""
    w = words.astype(np.int64)
    typ = w >> 12
    val = w & 0xFFF
    is_high = typ == 8
    raw_high = val[is_high]
    prev = np.concatenate([[st.raw_high], raw_high[:-1]])
    absolute = raw_high + 4096 * (st.high // 4096 + np.cumsum(raw_high < prev))
    high = np.zeros(len(w), dtype=np.int64)
    high[is_high] = absolute
    high = _ffill(is_high, high, st.high)
    low = _ffill(typ == 6, val, st.low)
    carry = _implicit_carries(typ, val, st)
    y = _ffill(typ == 0, w & 0x7FF, st.y)
    is_base = typ == 3
    pol = _ffill(is_base, (w >> 11) & 1, st.pol)  # polarity of the vector words
    adv = np.where(typ == 4, 12, np.where(typ == 5, 8, 0))
    cum_before = np.cumsum(adv) - adv
    base_ref = _ffill(is_base, (w & 0x7FF) - cum_before, st.base)  # base x minus advance so far
    base = base_ref + cum_before
    t_word = (high + carry) * 4096 + low
    if len(w):
        st.high, st.low, st.y, st.pol = int(high[-1]), int(low[-1]), int(y[-1]), int(pol[-1])
        st.raw_high = int(raw_high[-1]) if len(raw_high) else st.raw_high
        st.base = int(base[-1] + adv[-1])
    # single events
    single = np.flatnonzero(typ == 2)
    # vector events: one row per vector word, bits expanded
    vec = np.flatnonzero((typ == 4) | (typ == 5))
    bits = (val[vec, None] >> np.arange(12)) & 1
    bits[typ[vec] == 5, 8:] = 0
    vw, vb = np.nonzero(bits)
    word_of = np.concatenate([single, vec[vw]])
    order = np.lexsort((np.concatenate([np.zeros(len(single), np.int64), vb]), word_of))
    word_of = word_of[order]
    x = np.concatenate([w[single] & 0x7FF, base[vec[vw]] + vb])[order]
    p = np.concatenate([(w[single] >> 11) & 1, pol[vec[vw]]])[order]
    return x, y[word_of], t_word[word_of], p


def evt3_chunks(path: Path, offset: int, width: int | None, height: int | None) -> Iterator[Events]:
    st = _State()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            buf = fh.read(CHUNK_WORDS * 2)
            if not buf:
                break
            x, y, t, p = decode_words(np.frombuffer(buf, dtype="<u2"), st)
            yield Events(x, y, t, p, width, height)
