"""The numba Prophesee decoders against independent references: EVT3 against the earlier
vectorised-numpy decoder (``evt3_reference.py``) on random word streams holding every word type,
TIME_HIGH wraps, implicit TIME_LOW steps and vectors split across chunks; EVT2 against a plain
per-word Python loop; both on hand-written words; ``.dat`` across chunk borders and the u32 wrap."""

from __future__ import annotations

import numpy as np
import pytest

from clplat.events import concat_events, evt2, evt3, iter_windows, read_events
from tests.events.evt3_reference import decode_reference
from tests.events.formats import random_events, write_dat


def _evt3_words(n: int, seed: int) -> np.ndarray:
    """Random EVT3 words of every type (0 y, 2 x, 3 base, 4/5 vectors, 6 low, 7/10/14/15 skipped,
    8 high with values that go down, i.e. 24-bit wraps, and lows that drop without a high)."""
    rng = np.random.default_rng(seed)
    types = rng.choice([0, 2, 3, 4, 5, 6, 7, 8, 10, 14, 15], n, p=[.1, .2, .08, .12, .1, .2, .03, .1, .03, .02, .02])
    vals = rng.integers(0, 4096, n)
    return ((types << 12) | vals).astype(np.uint16)


def _decode_chunks(words: np.ndarray, chunk: int):
    st = evt3.new_state()
    parts = [evt3.decode_words(words[i : i + chunk], st) for i in range(0, len(words), chunk)]
    return tuple(np.concatenate([q[k] for q in parts]) for k in range(4))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [5, 997, 1 << 20])
def test_evt3_matches_the_numpy_reference(seed, chunk):
    words = _evt3_words(20_000, seed)
    want = decode_reference(words, 613)  # the reference itself chunked differently
    got = _decode_chunks(words, chunk)
    assert len(got[0]) == len(want[0]) > 20_000  # vectors give several events per word
    for name, g, w in zip("xytp", got, want):
        np.testing.assert_array_equal(g, w, err_msg=name)
    assert got[2].max() >= 1 << 24  # the stream did wrap the 24-bit time


def test_evt3_hand_written_words():
    """TIME_HIGH step to a smaller TIME_LOW (expelliarmus 1.1.12 gets this one wrong), a 24-bit
    wrap, an implicit TIME_LOW step, and a VECT_BASE_X + VECT_12 + VECT_8 run."""
    words = np.array([
        0x8000, 0x6FFA, 0x0005, 0x2803,  # t 4090, y 5, ON x 3
        0x8001, 0x6004, 0x2002,  # t 4100, OFF x 2
        0x8FFF, 0x6001, 0x8000, 0x6002, 0x2001,  # high 4095 then 0: wrap, t = 2^24 + 2
        0x6001, 0x2001,  # low drops with no high between: implicit step, t = 2^24 + 4096 + 1
        0x3810, 0x4801, 0x5003, 0x2004,  # base 16 ON; bits 0, 11; then base 28 bits 0, 1; then x 4
    ], dtype=np.uint16)
    x, y, t, p = evt3.decode_words(words, evt3.new_state())
    t2 = (1 << 24) + 4096 + 1
    assert t.tolist() == [4090, 4100, (1 << 24) + 2, t2, t2, t2, t2, t2, t2]
    assert x.tolist() == [3, 2, 1, 1, 16, 27, 28, 29, 4]
    assert p.tolist() == [1, 0, 0, 0, 1, 1, 1, 1, 0] and set(y.tolist()) == {5}


def _evt2_reference(words: np.ndarray) -> tuple[list[int], ...]:
    """EVT2 word by word, straight from the format document."""
    out: tuple[list[int], ...] = ([], [], [], [])
    high = wraps = 0
    for w in words.tolist():
        typ = w >> 28
        if typ in (0, 1):
            for lst, v in zip(out, ((w >> 11) & 0x7FF, w & 0x7FF, (wraps << 34) + (high << 6) + ((w >> 22) & 63), typ)):
                lst.append(v)
        elif typ == 8:
            new = w & 0x0FFFFFFF
            wraps += high - new > 1 << 27
            high = new
    return out


@pytest.mark.parametrize("chunk", [3, 1000, 1 << 20])
def test_evt2_matches_a_per_word_loop(chunk):
    rng = np.random.default_rng(5)
    n = 5000
    types = rng.choice([0, 1, 8, 10, 14, 15], n, p=[.35, .35, .15, .05, .05, .05])
    low = rng.integers(0, 1 << 28, n, dtype=np.int64)
    high = np.where(rng.random(n) < 0.5, rng.integers(0, 1 << 28, n), (1 << 28) - 1 - rng.integers(0, 9, n))
    words = ((types.astype(np.int64) << 28) | np.where(types == 8, high, low)).astype(np.uint32)
    st = np.zeros(2, np.int64)
    parts = [evt2.decode_words(words[i : i + chunk], st) for i in range(0, n, chunk)]
    want = _evt2_reference(words)
    assert max(want[2]) >= 1 << 34  # wrapped at least once
    for k, name in enumerate("xytp"):
        assert np.concatenate([q[k] for q in parts]).tolist() == want[k], name


def test_dat_chunk_borders_and_wrap(tmp_path, monkeypatch):
    import clplat.events.prophesee as prophesee

    ev = random_events(3000, 97, 61, seed=2, t0=2**32 - 300_000, max_gap=400)
    write_dat(tmp_path / "a.dat", ev)
    whole = read_events(tmp_path / "a.dat")
    monkeypatch.setattr(prophesee, "CHUNK_EVENTS", 7)
    wins = concat_events(list(iter_windows(tmp_path / "a.dat", 5000)))
    for got in (whole, wins):
        np.testing.assert_array_equal(got.t, ev.t)
        np.testing.assert_array_equal(got.x, ev.x)
    assert ev.t[-1] > 2**32


def test_compiled_without_a_writable_cache(monkeypatch):
    """numba raises at decoration when no cache directory is writable (read-only install and home):
    the decoders must then compile per process instead of failing to import."""
    import numba

    import clplat.events.jit as jit

    def njit(**kw):
        if kw.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return numba.njit(**kw)

    monkeypatch.setattr(jit, "njit", njit)

    def twice(a):
        return a * 2

    assert jit.compiled(twice)(21) == 42


def test_text_whole_and_chunked_paths_agree(tmp_path, monkeypatch):
    """read_events parses a text file in one numpy call, iter_windows in chunks of lines: same
    events, with no 'width height' line, comments, 1/-1 polarity and a bad line's number."""
    import clplat.events.plain as plain

    ev = random_events(500, 97, 61, seed=8, t0=1_000_000)
    rows = [f"{t / 1e6:.6f} {x} {y} {1 if p else -1}" for t, x, y, p in zip(ev.t, ev.x, ev.y, ev.p)]
    path = tmp_path / "a.txt"
    path.write_text("# t x y p\n" + "\n".join(rows[:250]) + "\n# half way\n" + "\n".join(rows[250:]) + "\n")
    monkeypatch.setattr(plain, "TEXT_CHUNK_LINES", 37)
    for got in (read_events(path), concat_events(list(iter_windows(path, 3000)))):
        for k in "xytp":
            np.testing.assert_array_equal(getattr(got, k), getattr(ev, k), err_msg=k)
        assert got.width is None
    path.write_text("97 61\n" + "\n".join(rows[:100]) + "\n0.5 1 2\n")
    from clplat.errors import UserError

    with pytest.raises(UserError, match="bad text event line.*row 101"):
        read_events(path)
    path.write_bytes(b"97 61\n0.1 1 2 1\n\xff\xfe 1 2 3\n")
    for read in (read_events, lambda q: list(iter_windows(q, 1000))):
        with pytest.raises(UserError, match="binary content"):
            read(path)
