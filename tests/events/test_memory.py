"""``iter_windows`` holds one read chunk plus one window, never the file: the tracemalloc peak
while streaming a file 20x larger than a chunk stays below a quarter of the whole file's events.
The same measurement on ``read_events`` must see the whole file, so a reader whose arrays
tracemalloc cannot see (or that loads the file anyway) cannot pass by accident."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from clplat.events import iter_windows, read_events, write_dsec_h5
from clplat.events.plain import write_text
from tests.events.formats import random_events, write_dat, write_evt2, write_evt3
from tests.events.test_readers import _aedat4, _es, _npz

N = 200_000
EVENT_BYTES = 13  # x, y uint16 + t int64 + p uint8
CHUNK = 10_000  # events (or words, or lines) per read chunk, set below in every chunked reader
WRITERS = {"a.raw": write_evt2, "b.raw": write_evt3, "a.dat": write_dat, "a.npz": _npz, "a.txt": write_text,
           "a.h5": write_dsec_h5, "a.es": _es, "a.aedat4": _aedat4}


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_chunks(monkeypatch):
    import clplat.events.evt2 as evt2
    import clplat.events.evt3 as evt3
    import clplat.events.plain as plain
    import clplat.events.prophesee as prophesee

    for mod, name in ((evt2, "CHUNK_WORDS"), (evt3, "CHUNK_WORDS"), (prophesee, "CHUNK_EVENTS"),
                      (plain, "NPZ_CHUNK")):
        monkeypatch.setattr(mod, name, CHUNK)
    monkeypatch.setattr(plain, "TEXT_CHUNK_LINES", CHUNK // 5)  # a parsed line costs ~160 B of str objects


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_window_memory_is_bounded(tmp_path, small_chunks, name):
    ev = random_events(N, 97, 61, seed=3, max_gap=20)  # ~100 events per 1 ms window
    path = tmp_path / name
    WRITERS[name](path, ev)
    whole_bytes = N * EVENT_BYTES
    read_events(path)  # warm-up: numba cache loading and lazy imports are not the reader's memory
    assert _peak(lambda: read_events(path)) >= whole_bytes  # the measurement sees the arrays
    count = 0

    def stream() -> None:
        nonlocal count
        for win in iter_windows(path, 1000):
            count += len(win)

    peak = _peak(stream)
    assert count == N
    assert peak < whole_bytes / 4, f"{name}: streaming peak {peak} B vs whole file {whole_bytes} B"
