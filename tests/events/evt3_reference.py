"""The earlier vectorised-numpy EVT3 decoder (running counts and gathers, no per-word loop), kept
as an independent reference for the numba state machine in ``clplat/events/evt3.py``: a different
algorithm for the same format, so a bug in one shows as a mismatch. ``decode_reference(words)``
decodes a whole word array; ``decode_words(words, state)`` a chunk with carried state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _State:
    high: int = 0  # absolute TIME_HIGH (24-bit wraps folded in), units of 4096 µs
    raw_high: int = 0
    low: int = 0
    y: int = 0
    base: int = 0  # x of the next vector bit 0
    pol: int = 0
    high_since_low: bool = True  # a TIME_HIGH came after the last TIME_LOW
    carries: int = 0  # implicit TIME_LOW wraps so far
    carries_at_high: int = 0  # ... as counted at the last TIME_HIGH


def _latest(count: np.ndarray, values: np.ndarray, initial: int, at: np.ndarray) -> np.ndarray:
    """For the words at positions ``at``: the value of the latest word of one type at or before
    them, where ``count`` is the running count of that type's words (``initial`` when none yet)."""
    ext = np.concatenate([np.array([initial], dtype=np.int64), values.astype(np.int64, copy=False)])
    return ext[count[at]]


def _low_carries(c_high: np.ndarray, low_pos: np.ndarray, lows: np.ndarray, st: _State) -> np.ndarray:
    """Running count of implicit TIME_LOW wraps at each TIME_LOW word. A wrap is a TIME_LOW smaller
    than the previous one with no TIME_HIGH between them: conforming files never have one (a new
    high period starts with a TIME_HIGH word); expelliarmus's encoder writes them, so its files
    decode to their true times too."""
    highs_before = c_high[low_pos]  # TIME_HIGH words before each TIME_LOW
    first = -1 if st.high_since_low else 0  # -1: "a high came between" for the chunk's first low
    prev_highs = np.concatenate([[first], highs_before[:-1]])
    prev_low = np.concatenate([[st.low], lows[:-1]])
    wrap = (lows < prev_low) & (highs_before == prev_highs)
    return st.carries + np.cumsum(wrap)


def _vector_events(val, vec_pos, vec_is12, single, vec_base, vec_pol):
    """(word position, x, p) of every event in word order when vector words are present."""
    bits = (val[vec_pos, None] >> np.arange(12)) & 1
    bits[~vec_is12, 8:] = 0
    ev_pos = np.sort(np.concatenate([single, vec_pos]))
    is_vec = np.isin(ev_pos, vec_pos, assume_unique=True)
    per_word = np.ones(len(ev_pos), dtype=np.int64)
    per_word[is_vec] = bits.sum(1)
    start = np.cumsum(per_word) - per_word
    n = int(per_word.sum())
    x = np.empty(n, dtype=np.int64)
    p = np.empty(n, dtype=np.int64)
    s_start = start[~is_vec]
    x[s_start] = val[single] & 0x7FF
    p[s_start] = (val[single] >> 11) & 1
    vw, vb = np.nonzero(bits)
    slot = start[is_vec][vw] + np.cumsum(bits, 1)[vw, vb] - 1
    x[slot] = vec_base[vw] + vb
    p[slot] = vec_pol[vw]
    return np.repeat(ev_pos, per_word), x, p


def decode_words(words: np.ndarray, st: _State) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, t, p) of one chunk of words; ``st`` carries the decoder state to the next chunk."""
    typ = (words >> 12).astype(np.uint8)
    val = words & 0xFFF
    masks = {k: typ == k for k in (0, 3, 6, 8)}
    high_pos, low_pos, y_pos, base_pos = (np.flatnonzero(masks[k]) for k in (8, 6, 0, 3))
    # running count of each state word type (the index of the latest one at every word)
    counts = {k: np.add.accumulate(masks[k], dtype=np.int32) for k in (0, 6, 8)}
    # absolute TIME_HIGH values: a smaller raw value than the previous one is a 24-bit wrap
    raw_high = val[high_pos].astype(np.int64)
    prev = np.concatenate([[st.raw_high], raw_high[:-1]])
    highs = raw_high + 4096 * (st.high // 4096 + np.cumsum(raw_high < prev))
    lows = val[low_pos].astype(np.int64)
    carries = _low_carries(counts[8], low_pos, lows, st)
    carries_at_high = _latest(counts[6], carries, st.carries, high_pos)
    single = np.flatnonzero(typ == 2)
    vec_pos = np.flatnonzero((typ == 4) | (typ == 5))
    vec_adv = np.where(typ[vec_pos] == 4, 12, 8)
    if len(vec_pos):
        counts[3] = np.add.accumulate(masks[3], dtype=np.int32)
        # vector base: VECT_BASE_X value plus the advances (12 / 8) of vector words since it
        cum_adv = np.concatenate([[0], np.cumsum(vec_adv)])
        base_ref = (val[base_pos] & 0x7FF).astype(np.int64) - cum_adv[np.searchsorted(vec_pos, base_pos)]
        vec_base = _latest(counts[3], base_ref, st.base, vec_pos) + cum_adv[:-1]
        vec_pol = _latest(counts[3], (val[base_pos] >> 11) & 1, st.pol, vec_pos)
        word_of, x, p = _vector_events(val, vec_pos, vec_adv == 12, single, vec_base, vec_pol)
    else:
        word_of, x, p = single, val[single] & 0x7FF, (val[single] >> 11) & 1
    # time at every time word (TIME_HIGH / TIME_LOW), then each event takes its latest one's
    time_mask = masks[6] | masks[8]
    time_pos = np.flatnonzero(time_mask)
    t_words = _latest(counts[8], highs, st.high, time_pos)
    if len(carries) and (carries[-1] != st.carries or st.carries != st.carries_at_high):  # implicit wraps
        t_words += _latest(counts[6], carries, st.carries, time_pos) - _latest(
            counts[8], carries_at_high, st.carries_at_high, time_pos)
    t_words = t_words * 4096 + _latest(counts[6], lows, st.low, time_pos)
    t_start = (st.high + st.carries - st.carries_at_high) * 4096 + st.low
    t = _latest(counts[6] + counts[8], t_words, t_start, word_of)  # running count of time words
    y = _latest(counts[0], val[y_pos] & 0x7FF, st.y, word_of)
    # carry the state into the next chunk
    last_low = low_pos[-1] if len(low_pos) else -1
    st.high_since_low = bool(len(high_pos) and high_pos[-1] > last_low) or (not len(low_pos) and st.high_since_low)
    if len(high_pos):
        st.high, st.raw_high, st.carries_at_high = int(highs[-1]), int(raw_high[-1]), int(carries_at_high[-1])
    if len(low_pos):
        st.low, st.carries = int(lows[-1]), int(carries[-1])
    if len(y_pos):
        st.y = int(val[y_pos[-1]] & 0x7FF)
    if len(base_pos):
        st.pol = int((val[base_pos[-1]] >> 11) & 1)
    if len(vec_pos) and (not len(base_pos) or vec_pos[-1] > base_pos[-1]):
        st.base = int(vec_base[-1] + vec_adv[-1])
    elif len(base_pos):
        st.base = int(val[base_pos[-1]] & 0x7FF)
    return x, y, t, p


def decode_reference(words: np.ndarray, chunk_words: int | None = None) -> tuple[np.ndarray, ...]:
    """(x, y, t, p) of a whole EVT3 word array, optionally in chunks of ``chunk_words``."""
    st = _State()
    step = chunk_words or max(len(words), 1)
    parts = [decode_words(words[i : i + step], st) for i in range(0, max(len(words), 1), step)]
    return tuple(np.concatenate([part[k] for part in parts]) for k in range(4))
