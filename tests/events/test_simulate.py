"""The DVS simulator on constructed brightness ramps, and the synthetic scenes' ground-truth flow
against their rendered frames."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clplat.events import read_events
from clplat.events.scenes import SceneConfig, make_scene, read_scene_flow
from clplat.events.simulate import EventSimulator, SimConfig, simulate
from clplat.events.video import iter_video_windows

EPS = 1e-3
IDEAL = SimConfig(threshold_on=0.2, threshold_off=0.2, threshold_sigma=0.0, refractory_us=0)


def _ramp(rise: float, n_frames: int, duration_us: int = 1_000_000, shape=(2, 3)):
    """Frames whose log(I + eps) grows linearly by ``rise`` (negative: falls) over ``duration_us``."""
    ts = np.linspace(0, duration_us, n_frames).round().astype(np.int64)
    log_i = np.log(0.2) + rise * ts / duration_us
    frames = (np.exp(log_i) - EPS)[:, None, None] * np.ones((1, *shape))
    return frames, ts


@pytest.mark.parametrize("n_frames", [2, 11])  # the crossing times come from interpolation either way
@pytest.mark.parametrize("rise,pol", [(1.1, 1), (-1.1, 0)])
def test_ramp_gives_expected_count_polarity_and_times(n_frames, rise, pol):
    frames, ts = _ramp(rise, n_frames)
    ev = simulate(frames, ts, IDEAL, seed=0)
    assert len(ev) == 5 * 6  # floor(1.1 / 0.2) crossings at each of the 6 pixels
    assert (ev.p == pol).all()
    want = np.floor(np.arange(1, 6) * 0.2 / 1.1 * 1e6)  # crossing k at k·C / rise of the way
    for x in range(3):
        for y in range(2):
            got = ev.t[(ev.x == x) & (ev.y == y)]
            np.testing.assert_allclose(got, want, atol=1.0)
    assert np.all(np.diff(ev.t) >= 0)


def test_per_pixel_threshold_spread():
    cfg = SimConfig(threshold_on=0.2, threshold_sigma=0.04, refractory_us=0)
    frames, ts = _ramp(2.0, 3, shape=(8, 9))
    sim = EventSimulator(8, 9, cfg, seed=3)
    n = np.zeros((8, 9), dtype=int)
    for f, t in zip(frames, ts):
        ev = sim.step(f, t)
        np.add.at(n, (ev.y, ev.x), 1)
    want = np.floor(2.0 / sim.c_on.reshape(8, 9) + 1e-9)
    np.testing.assert_array_equal(n, want)
    assert len(np.unique(n)) > 1  # the spread really varies the counts


def test_refractory_period_drops_close_events():
    frames, ts = _ramp(1.1, 2, shape=(1, 1))
    spaced = 0.2 / 1.1 * 1e6  # about 182 ms between crossings
    assert len(simulate(frames, ts, IDEAL.model_copy(update={"refractory_us": int(spaced) - 1000}))) == 5
    kept = simulate(frames, ts, IDEAL.model_copy(update={"refractory_us": int(spaced) + 1000}))
    assert len(kept) == 3  # every second crossing survives: 1, 3, 5


def test_noise_rate_and_determinism():
    frames = np.full((2, 10, 10), 0.5)
    cfg = IDEAL.model_copy(update={"noise_rate_hz": 100.0})
    ev = simulate(frames, [0, 1_000_000], cfg, seed=5)
    assert 9500 < len(ev) < 10500  # 100 Hz x 100 pixels x 1 s, Poisson
    assert 0.45 < ev.p.mean() < 0.55
    again = simulate(frames, [0, 1_000_000], cfg, seed=5)
    np.testing.assert_array_equal(ev.t, again.t)
    assert not np.array_equal(simulate(frames, [0, 1_000_000], cfg, seed=6).t, ev.t)


def _backward_warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    h, w = frame.shape
    qy, qx = np.mgrid[0:h, 0:w]
    grid = np.stack([(qx + flow[0]) / (w - 1) * 2 - 1, (qy + flow[1]) / (h - 1) * 2 - 1], -1)
    return F.grid_sample(torch.from_numpy(frame)[None, None], torch.from_numpy(grid[None]).float(),
                         align_corners=True)[0, 0].numpy()


def test_scene_flow_warps_frame_onto_the_next():
    """Sampling frame k+1 at q + flow_k(q) gives frame k back on valid pixels, far better than no
    flow or (dy, dx) swapped: the flow is the rendered motion, in (dx, dy) order, per bin."""
    cfg = SceneConfig(height=48, width=64, duration_ms=100, texture_scale=12.0, max_speed=300, background_speed=150)
    s = make_scene(cfg, seed=1)
    assert s.flow.shape == (10, 2, 48, 64) and s.valid.shape == (10, 48, 64) and s.frames.shape == (11, 48, 64)
    assert s.valid.mean() > 0.8 and np.abs(s.flow).max() > 1.0
    err, none, swapped = [], [], []
    for k in range(10):
        v = s.valid[k]
        err.append(np.median(np.abs(_backward_warp(s.frames[k + 1], s.flow[k]) - s.frames[k])[v]))
        none.append(np.median(np.abs(s.frames[k + 1] - s.frames[k])[v]))
        swapped.append(np.median(np.abs(_backward_warp(s.frames[k + 1], s.flow[k][::-1]) - s.frames[k])[v]))
    assert np.mean(err) < 0.3 * np.mean(none) and np.mean(err) < 0.3 * np.mean(swapped)


def test_translating_background_flow_is_velocity_times_bin():
    s = make_scene(SceneConfig(height=16, width=20, duration_ms=30, n_objects=0), seed=2)
    v = s.layers[0].v * 0.010  # px/s x 10 ms
    np.testing.assert_allclose(s.flow[:, 0], v[0], atol=1e-5)
    np.testing.assert_allclose(s.flow[:, 1], v[1], atol=1e-5)
    d, _ = s.displacement(0, 30_000)  # any interval, exact
    np.testing.assert_allclose(d[0], 3 * v[0], atol=1e-4)


def test_valid_is_false_where_an_object_covers_the_point():
    """Static background, one disc moving 20 px per bin: the background pixels the disc reaches
    at the end of the bin (a crescent ahead of it) are invalid, the rest valid."""
    cfg = SceneConfig(height=64, width=64, duration_ms=20, n_objects=1, motions=("translate",),
                      max_speed=2000.0, background_speed=0.0)
    s = make_scene(cfg, seed=4)
    disc = s.layers[1]
    qy, qx = np.mgrid[0:64, 0:64]
    for k in range(2):
        (c0, _, s0), (c1, _, s1) = disc.pose(k * 0.01), disc.pose((k + 1) * 0.01)
        inside0 = np.hypot(qx - c0[0], qy - c0[1]) <= disc.radius * s0
        inside1 = np.hypot(qx - c1[0], qy - c1[1]) <= disc.radius * s1
        covered = ~inside0 & inside1  # background points hidden at the end of the bin
        assert covered.sum() > 10
        assert not s.valid[k][covered].any()
        assert s.valid[k][~inside0 & ~inside1].all()  # static background, in the image
        np.testing.assert_allclose(s.flow[k][:, ~inside0 & ~inside1], 0.0, atol=1e-6)


def test_scene_is_deterministic_and_has_events():
    cfg = SceneConfig(height=24, width=32, duration_ms=40, motions=("rotate", "zoom"))
    a, b = make_scene(cfg, 7), make_scene(cfg, 7)
    np.testing.assert_array_equal(a.events.t, b.events.t)
    np.testing.assert_array_equal(a.flow, b.flow)
    assert len(a.events) > 100 and a.events.width == 32 and a.events.height == 24
    assert not np.array_equal(make_scene(cfg, 8).flow, a.flow)


def test_cli_scene_and_simulate(tmp_path):
    av = pytest.importorskip("av")
    out = subprocess.run([sys.executable, "-m", "clplat.events", "scene", "--out", str(tmp_path / "s.h5"),
                          "--height", "24", "--width", "32", "--duration-ms", "30"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    gt = read_scene_flow(tmp_path / "s.h5")
    assert gt["flow"].shape == (3, 2, 24, 32) and gt["bin_us"] == 10_000
    assert len(read_events(tmp_path / "s.h5")) == json.loads(out.stdout)["events"]
    s = make_scene(SceneConfig(height=32, width=48, duration_ms=50), seed=0)
    with av.open(str(tmp_path / "v.mp4"), "w") as c:
        st = c.add_stream("mpeg4", rate=100)
        st.width, st.height, st.pix_fmt = 48, 32, "yuv420p"
        for f in s.frames:
            rgb = (np.repeat(f[..., None], 3, 2) * 255).astype(np.uint8)
            for pk in st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(pk)
        for pk in st.encode():
            c.mux(pk)
    out = subprocess.run([sys.executable, "-m", "clplat.events", "simulate", str(tmp_path / "v.mp4"),
                          "--out", str(tmp_path / "v.h5")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ev = read_events(tmp_path / "v.h5")
    assert len(ev) > 100 and (ev.width, ev.height) == (48, 32) and ev.t[-1] <= 50_000
    wins = list(iter_video_windows(tmp_path / "v.mp4", 10_000))  # the on-the-fly source: same events
    assert sum(len(w) for w in wins) == len(ev)
    np.testing.assert_array_equal(np.concatenate([w.t for w in wins]), ev.t)
