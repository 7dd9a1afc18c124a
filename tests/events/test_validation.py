"""Bad event files end in one UserError line naming the file and the problem (exit code 2 from the CLI)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clplat.errors import UserError
from clplat.events import Events, iter_windows, read_events, write_dsec_h5
from clplat.events.plain import write_text
from tests.events.formats import random_events, write_dat, write_evt2, write_evt3

W, H = 33, 21


def _raises(path, match, **kw):
    with pytest.raises(UserError, match=match) as info:
        read_events(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def _decreasing() -> Events:
    ev = random_events(200, W, H, seed=1, max_gap=50)
    t = ev.t.copy()
    t[120] = t[119] - 7  # one step back in time
    return Events(ev.x, ev.y, t, ev.p, W, H)


@pytest.mark.parametrize("fmt", ["npz", "dsec", "text", "evt2", "evt3", "dat"])
def test_decreasing_timestamps(tmp_path, fmt):
    ev = _decreasing()
    path = tmp_path / {"npz": "a.npz", "dsec": "a.h5", "text": "a.txt", "evt2": "a.raw", "evt3": "a.raw",
                       "dat": "a.dat"}[fmt]
    if fmt == "npz":
        np.savez(path, x=ev.x, y=ev.y, t=ev.t, p=ev.p)
    elif fmt == "dsec":
        import h5py
        import hdf5plugin  # noqa: F401

        with h5py.File(path, "w") as f:
            for k in "xytp":
                f[f"events/{k}"] = getattr(ev, k)
            f["t_offset"] = np.int64(0)
    elif fmt == "text":
        write_text(path, ev)
    else:
        {"evt2": write_evt2, "evt3": write_evt3, "dat": write_dat}[fmt](path, ev)
    msg = _raises(path, "timestamps decrease")
    assert fmt == "evt3" or "event 120" in msg  # EVT3 cannot store a step back below its TIME_HIGH grain
    with pytest.raises(UserError, match="timestamps decrease"):
        list(iter_windows(path, 1000))


def test_decrease_across_chunks_is_caught(tmp_path, monkeypatch):
    import clplat.events.plain as plain

    monkeypatch.setattr(plain, "NPZ_CHUNK", 10)
    ev = _decreasing()
    np.savez(tmp_path / "a.npz", x=ev.x, y=ev.y, t=ev.t, p=ev.p)
    _raises(tmp_path / "a.npz", "timestamps decrease")


@pytest.mark.parametrize("fmt", ["npz", "text", "dat", "evt2"])
def test_coordinates_outside_the_sensor(tmp_path, fmt):
    ev = random_events(50, W, H, seed=2)
    x = ev.x.copy()
    x[17] = W  # one column past the edge
    bad = Events(x, ev.y, ev.t, ev.p, W, H)
    path = tmp_path / {"npz": "a.npz", "text": "a.txt", "dat": "a.dat", "evt2": "a.raw"}[fmt]
    if fmt == "npz":
        np.savez(path, x=bad.x, y=bad.y, t=bad.t, p=bad.p, width=W, height=H)
    elif fmt == "text":
        write_text(path, bad)
    else:
        {"dat": write_dat, "evt2": write_evt2}[fmt](path, bad)
    msg = _raises(path, "outside the 33x21 sensor")
    assert "event 17" in msg and f"x={W}" in msg


@pytest.mark.parametrize("name,writer,cut",
                         [("a.raw", write_evt3, 1), ("a.raw", write_evt2, 3), ("a.dat", write_dat, 5)])
def test_truncated_prophesee(tmp_path, name, writer, cut):
    path = tmp_path / name
    writer(path, random_events(100, W, H, seed=3))
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    _raises(path, "truncated")


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "a.h5"
    write_dsec_h5(path, random_events(5000, W, H, seed=4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(path, "not a readable DSEC events file|cannot read")


def test_truncated_npz_and_aedat4(tmp_path):
    ev = random_events(3000, W, H, seed=5)
    np.savez(tmp_path / "a.npz", x=ev.x, y=ev.y, t=ev.t, p=ev.p)
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "a.npz", "unreadable npz")
    (tmp_path / "b.aedat4").write_bytes(b"#!AER-DAT4.0\r\n" + b"\x07" * 40)
    _raises(tmp_path / "b.aedat4", "cannot decode as AEDAT4")


def test_unknown_and_missing(tmp_path):
    (tmp_path / "a.xyz").write_bytes(b"\x00\x01binary")
    _raises(tmp_path / "a.xyz", "unknown event file format")
    (tmp_path / "a.raw").write_bytes(b"no header")
    _raises(tmp_path / "a.raw", "without an 'evt 2.0'")
    _raises(tmp_path / "a.xyz", "unknown event format 'foo'", format="foo")
    with pytest.raises(UserError, match="no such event file"):
        read_events(tmp_path / "missing.h5")
    (tmp_path / "b.txt").write_text("0.1 1 2\n")
    _raises(tmp_path / "b.txt", "4 columns")
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04garbage")
    _raises(tmp_path / "c.npz", "unreadable npz")


def test_coordinates_that_do_not_fit_uint16(tmp_path):
    np.savez(tmp_path / "a.npz", x=[70_000], y=[1], t=[5], p=[1])  # would wrap to 4464 silently
    _raises(tmp_path / "a.npz", "0..65535")
    (tmp_path / "b.txt").write_text("0.1 -3 2 1\n")
    _raises(tmp_path / "b.txt", "0..65535")


def test_npz_float_time_and_missing_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", x=[1], y=[1], t=[0.5], p=[1])
    _raises(tmp_path / "a.npz", "integer microseconds")
    np.savez(tmp_path / "b.npz", x=[1], y=[1], t=[5])
    _raises(tmp_path / "b.npz", "lacks arrays p")


def test_cli_exit_code_2(tmp_path):
    (tmp_path / "a.xyz").write_bytes(b"\x00\x01")
    out = subprocess.run([sys.executable, "-m", "clplat.events", "info", str(tmp_path / "a.xyz")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: ") and "a.xyz" in out.stderr
