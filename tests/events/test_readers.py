"""Every reader on files written by the format's own writer (or byte-exact from the format
document): every event equal, offsets added back, windows concatenating to the whole file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clplat.events import Events, concat_events, detect_format, iter_windows, read_events, write_dsec_h5
from clplat.events.plain import write_text
from tests.events.formats import random_events, write_dat, write_evt2, write_evt3

W, H = 97, 61  # odd sensor, not a camera default


def assert_same(got: Events, want: Events, sizes: bool = True) -> None:
    assert len(got) == len(want)
    for k in "xytp":
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=k)
    assert got.t.dtype == np.int64 and got.x.dtype == np.uint16 and got.p.dtype == np.uint8
    if sizes:
        assert (got.width, got.height) == (want.width, want.height)


def _dsec_by_h5py(path: Path, ev: Events, offset: int) -> None:
    """The DSEC layout written with plain h5py (independent of clplat's writer), t as uint32."""
    import h5py
    import hdf5plugin

    rel = (ev.t - offset).astype(np.uint32)
    with h5py.File(path, "w") as f:
        for k, a in (("x", ev.x), ("y", ev.y), ("t", rel), ("p", ev.p)):
            f.create_dataset(f"events/{k}", data=a, chunks=(256,), **hdf5plugin.Blosc())
        last_ms = int(rel[-1]) // 1000
        f["ms_to_idx"] = np.array([np.searchsorted(rel, m * 1000) for m in range(last_ms + 1)], dtype=np.uint64)
        f["t_offset"] = np.int64(offset)


def _aedat4(path: Path, ev: Events) -> None:
    dv = pytest.importorskip("dv_processing")
    writer = dv.io.MonoCameraWriter(str(path), dv.io.MonoCameraWriter.EventOnlyConfig("test", (ev.width, ev.height)))
    store = dv.EventStore()
    for t, x, y, p in zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist()):
        store.push_back(t, x, y, bool(p))
    writer.writeEvents(store)
    del writer  # closes the file


def _es(path: Path, ev: Events) -> None:
    import event_stream

    arr = np.zeros(len(ev), dtype=event_stream.dvs_dtype)
    arr["t"], arr["x"], arr["y"], arr["on"] = ev.t, ev.x, ev.y, ev.p.astype(bool)
    with event_stream.Encoder(str(path), "dvs", ev.width, ev.height) as enc:
        enc.write(arr)


def _expelliarmus(encoding: str):
    def write(path: Path, ev: Events) -> None:
        from expelliarmus import Wizard

        arr = np.zeros(len(ev), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
        arr["t"], arr["x"], arr["y"], arr["p"] = ev.t, ev.x, ev.y, ev.p
        Wizard(encoding=encoding).save(path, arr)

    return write


def _npz(path: Path, ev: Events) -> None:
    np.savez(path, x=ev.x, y=ev.y, t=ev.t, p=ev.p, width=ev.width, height=ev.height)


def _with_runs(ev: Events) -> Events:
    """Add a same-time row of consecutive pixels (what EVT3 vectorises) and equal timestamps."""
    t, x, y, p = ev.t.copy(), ev.x.copy(), ev.y.copy(), ev.p.copy()
    t[50:61] = t[50]
    y[50:61], x[50:61], p[50:61] = 7, np.arange(30, 41), 1
    t[300:329] = t[300]  # 29 in a row: VECT_12, VECT_12, VECT_8 after one base
    y[300:329], x[300:329], p[300:329] = 3, np.arange(60, 89), 0
    return Events(x, y, t, p, ev.width, ev.height)


# (writer, file name, format, sizes known to the file, time offset, max gap between events µs)
CASES = {
    "dsec": (lambda p, e: write_dsec_h5(p, e), "ev.h5", "dsec", True, 3_000_000_000, 900),
    "dsec_h5py": (lambda p, e: _dsec_by_h5py(p, e, 7_000_123), "ev.h5", "dsec", False, 7_000_123, 900),
    "aedat4": (_aedat4, "ev.aedat4", "aedat4", True, 1_700_000_000_000_000, 900),
    "es": (_es, "ev.es", "es", True, 0, 900),
    "evt2_bytes": (write_evt2, "ev.raw", "evt2", True, 5_000_000, 9000),
    "evt2_expelliarmus": (_expelliarmus("evt2"), "ev.raw", "evt2", False, 0, 900),
    "evt3_bytes": (write_evt3, "ev.raw", "evt3", True, 15_000_000, 9000),  # crosses the 24-bit wrap (16.8 s)
    # its encoder writes no TIME_HIGH words, so a gap of 4096 µs or more is lost: keep gaps small
    "evt3_expelliarmus": (_expelliarmus("evt3"), "ev.raw", "evt3", False, 0, 300),
    "dat_bytes": (write_dat, "ev.dat", "dat", True, 2**32 - 500_000, 900),  # crosses the u32 wrap
    "dat_expelliarmus": (_expelliarmus("dat"), "ev.dat", "dat", False, 0, 900),
    "npz": (_npz, "ev.npz", "npz", True, 123_456_789, 900),
    "text": (write_text, "ev.txt", "text", True, 12_000_000, 900),
}


@pytest.fixture(params=sorted(CASES))
def written(request, tmp_path) -> tuple[Path, Events, str, bool]:
    writer, name, fmt, sizes, offset, gap = CASES[request.param]
    ev = _with_runs(random_events(2500, W, H, seed=len(request.param), t0=offset, max_gap=gap))
    path = tmp_path / name
    writer(path, ev)
    return path, ev, fmt, sizes


def test_every_event_equal(written):
    path, ev, fmt, sizes = written
    assert detect_format(path) == fmt
    got = read_events(path)
    assert_same(got, ev, sizes=sizes)
    if not sizes:
        assert got.width is None and got.height is None


def test_time_slice_matches_filter(written):
    path, ev, _, sizes = written
    t0, t1 = int(ev.t[400]) + 1, int(ev.t[1700])
    keep = (ev.t >= t0) & (ev.t < t1)
    assert_same(read_events(path, t0, t1), ev._take(keep), sizes=sizes)


@pytest.mark.parametrize("window_us", [1000, 7777])
def test_windows_concatenate_to_the_whole(written, window_us):
    path, ev, _, sizes = written
    wins = list(iter_windows(path, window_us))
    assert_same(concat_events(wins), ev, sizes=sizes)
    t0 = int(ev.t[0])
    for k, win in enumerate(wins):  # window k holds exactly the events of [t0 + k·w, t0 + (k+1)·w)
        if len(win):
            assert t0 + k * window_us <= win.t[0] and win.t[-1] < t0 + (k + 1) * window_us
    assert len(wins) == (int(ev.t[-1]) - t0) // window_us + 1


def test_windows_with_bounds_include_empty_ones(written):
    path, ev, _, sizes = written
    t0, t1 = int(ev.t[0]) - 2500, int(ev.t[900])
    wins = list(iter_windows(path, 1000, t0, t1))
    assert len(wins) == -(-(t1 - t0) // 1000)
    assert len(wins[0]) == len(wins[1]) == 0  # before the first event
    keep = (ev.t >= t0) & (ev.t < t1)
    assert_same(concat_events(wins, ev.width if sizes else None, ev.height if sizes else None), ev._take(keep),
                sizes=sizes)


def test_format_override_and_extension(tmp_path):
    ev = random_events(100, W, H, seed=3)
    odd = tmp_path / "recording.bin"
    with open(odd, "wb") as fh:  # np.savez would append .npz to a name
        _npz(fh, ev)
    assert detect_format(odd) == "npz"  # magic bytes, not the extension
    write_evt2(tmp_path / "a.raw", ev)
    assert_same(read_events(tmp_path / "a.raw", format="evt2"), ev)


def test_evt3_chunk_borders_carry_state(tmp_path, monkeypatch):
    """Tiny chunks split vectors and time words across reads; the result must not change."""
    import clplat.events.evt3 as evt3

    ev = _with_runs(random_events(3000, W, H, seed=9, t0=16_700_000, max_gap=5000))
    write_evt3(tmp_path / "a.raw", ev)
    monkeypatch.setattr(evt3, "CHUNK_WORDS", 7)
    assert_same(read_events(tmp_path / "a.raw"), ev)
    assert_same(concat_events(list(iter_windows(tmp_path / "a.raw", 3000))), ev)


def test_dsec_windows_read_only_their_range(tmp_path, monkeypatch):
    """DSEC windows go through ms_to_idx: no read spans more than one window (plus the search slice)."""
    import clplat.events.dsec as dsec

    ev = random_events(20000, W, H, seed=4, max_gap=50)
    write_dsec_h5(tmp_path / "a.h5", ev)
    sizes: list[int] = []
    real = dsec.DsecFile.read_range

    def spy(self, i0, i1):
        sizes.append(i1 - i0)
        return real(self, i0, i1)

    monkeypatch.setattr(dsec.DsecFile, "read_range", spy)
    wins = list(iter_windows(tmp_path / "a.h5", 2000))
    assert max(sizes) == max(len(w) for w in wins) < len(ev) / 10
    assert_same(concat_events(wins), ev)


def test_dsec_without_ms_to_idx(tmp_path, monkeypatch):
    """Files from other tools may lack ms_to_idx: windows then bisect the t dataset, same result."""
    import h5py

    import clplat.events.dsec as dsec

    ev = random_events(5000, W, H, seed=6, t0=2_000_000, max_gap=40)
    write_dsec_h5(tmp_path / "a.h5", ev)
    with h5py.File(tmp_path / "a.h5", "a") as f:
        del f["ms_to_idx"]
    monkeypatch.setattr(dsec, "CHUNK", 1)  # the bisection alone finds every boundary
    wins = list(iter_windows(tmp_path / "a.h5", 1500))
    assert_same(concat_events(wins), ev)
    for k, win in enumerate(wins):
        want = ev.slice_time(int(ev.t[0]) + k * 1500, int(ev.t[0]) + (k + 1) * 1500)
        assert_same(win, want)
    t0, t1 = int(ev.t[1234]), int(ev.t[4321]) + 1
    assert_same(read_events(tmp_path / "a.h5", t0, t1), ev._take((ev.t >= t0) & (ev.t < t1)))
