"""Representations against hand-computed tiny cases, and the Triton histogram (CPU interpreter)
against its PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clplat.events import Events
from clplat.events.represent import bilinear_counts, bin_stream, counts, voxel_grid
from clplat.kernels.event_hist import event_hist, event_hist_reference

# four events on a 3x3 sensor: (x, y, t µs, p)
EV = Events([0, 1, 1, 2], [0, 0, 1, 2], [0, 5000, 12000, 25000], [1, 0, 1, 1], 3, 3)


def test_counts_channel_0_is_on():
    want = torch.zeros(2, 3, 3)
    want[0, 0, 0] = want[0, 1, 1] = want[0, 2, 2] = 1  # ON events
    want[1, 0, 1] = 1  # the OFF event at x=1, y=0
    torch.testing.assert_close(counts(EV, 3, 3), want)
    torch.testing.assert_close(bilinear_counts(EV, 3, 3), want)  # integer coordinates: no spread


def test_bilinear_weights_by_hand():
    coords = (np.array([0.5, 1.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 1.25]))
    got = bilinear_counts(EV, 3, 3, coords=coords)
    want = torch.zeros(2, 3, 3)
    want[0, 0, 0] = want[0, 0, 1] = 0.5  # x = 0.5: half to each column
    want[0, 1, 1] = 1.0
    want[0, 1, 2], want[0, 2, 2] = 0.75, 0.25  # y = 1.25: (1 - 0.25) and 0.25
    want[1, 0, 1] = 1.0
    torch.testing.assert_close(got, want)
    # a corner past the border is dropped, not wrapped
    edge = Events([0], [0], [0], [1], 3, 3)
    got = bilinear_counts(edge, 3, 3, coords=(np.array([2.5]), np.array([2.0])))
    assert got[0, 2, 2] == 0.5 and got.sum() == 0.5


def test_voxel_grid_by_hand():
    # t* = (B-1)(t - t0)/(tN - t0) with B = 3: 0, 0.4, 0.96, 2
    raw = voxel_grid(EV, 3, 3, 3, normalize=False)
    want = torch.zeros(3, 3, 3)
    want[0, 0, 0] = 1.0
    want[0, 0, 1], want[1, 0, 1] = -0.6, -0.4  # OFF is -1
    want[0, 1, 1], want[1, 1, 1] = 0.04, 0.96
    want[2, 2, 2] = 1.0
    torch.testing.assert_close(raw, want)
    p_before = EV.p.copy()
    norm = voxel_grid(EV, 3, 3, 3)
    np.testing.assert_array_equal(EV.p, p_before)  # polarity never overwritten (tonic does)
    vals = want[want != 0]
    torch.testing.assert_close(norm[want != 0], (vals - vals.mean()) / vals.std())
    assert (norm[want == 0] == 0).all()


def test_voxel_grid_single_timestamp_and_empty():
    same = Events([0, 1], [0, 0], [7, 7], [1, 1], 2, 1)
    raw = voxel_grid(same, 4, 1, 2, normalize=False)
    assert raw[0].sum() == 2 and raw[1:].abs().sum() == 0
    assert voxel_grid(Events([], [], [], []), 2, 2, 2).abs().sum() == 0


def test_bin_stream_by_hand():
    got = bin_stream(EV, 10_000, 3, 3, kind="counts")
    assert got.shape == (3, 2, 3, 3)  # bins [0,10), [10,20), [20,30) ms
    torch.testing.assert_close(got[0], counts(EV.slice_time(0, 10_000), 3, 3))
    torch.testing.assert_close(got[1], counts(EV.slice_time(10_000, 20_000), 3, 3))
    assert got[2, 0, 2, 2] == 1 and got[2].sum() == 1
    later = bin_stream(EV, 10_000, 3, 3, t0_us=5000, n_bins=1)  # [5, 15) ms: t=0 and t=25 ms dropped
    assert later.shape == (1, 2, 3, 3) and later.sum() == 2 and later[0, 1, 0, 1] == 1 and later[0, 0, 1, 1] == 1


@pytest.fixture()
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is JIT-ed lazily per mode, so setting the variable here (after import) works."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _random(n, shape, seed):
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    return (torch.rand(n, generator=g) * (c + 1) - 0.5, torch.rand(n, generator=g) * (h + 1) - 0.5,
            torch.rand(n, generator=g) * (w + 1) - 0.5, torch.randn(n, generator=g))


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 7), (9, 13, 11), (4, 31, 33)])
@pytest.mark.parametrize("interp_c,interp_xy", [(False, False), (False, True), (True, False), (True, True)])
def test_triton_matches_reference(interpret, shape, interp_c, interp_xy):
    c, y, x, v = _random(777, shape, seed=sum(shape))  # some coordinates fall outside the grid
    want = event_hist_reference(c, y, x, v, shape, interp_c, interp_xy)
    got = event_hist(c, y, x, v, shape, interp_c, interp_xy, backend="triton")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_values(interpret, dtype):
    """Values (weights) may arrive in bf16/fp16; the sums are fp32 either way."""
    c, y, x, v = _random(301, (3, 7, 9), seed=5)
    v = v.to(dtype)
    want = event_hist_reference(c, y, x, v.float(), (3, 7, 9), True, True)
    got = event_hist(c, y, x, v, (3, 7, 9), True, True, backend="triton")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_out_accumulates_into_a_preallocated_frame(interpret, backend):
    c, y, x, v = _random(200, (2, 5, 7), seed=8)
    frame = torch.full((2, 5, 7), 1.5)
    got = event_hist(c, y, x, v, (2, 5, 7), False, True, backend=backend, out=frame)
    assert got is frame
    torch.testing.assert_close(frame, 1.5 + event_hist_reference(c, y, x, v, (2, 5, 7), False, True))


def test_env_forces_the_triton_path(interpret, monkeypatch):
    import clplat.kernels.event_hist as eh

    calls = []
    real = eh.event_hist_triton
    monkeypatch.setattr(eh, "event_hist_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("CLPLAT_KERNELS", "triton")
    torch.testing.assert_close(counts(EV, 3, 3), counts(EV, 3, 3, backend="reference"))
    assert calls


def test_representations_on_the_triton_path(interpret):
    rng = np.random.default_rng(0)
    n = 500
    ev = Events(rng.integers(0, 17, n), rng.integers(0, 9, n), np.sort(rng.integers(0, 30_000, n)),
                rng.integers(0, 2, n), 17, 9)
    coords = (rng.uniform(-1, 17, n), rng.uniform(-1, 9, n))
    for fn in (lambda b: bin_stream(ev, 10_000, 9, 17, backend=b),
               lambda b: bilinear_counts(ev, 9, 17, coords=coords, backend=b),
               lambda b: voxel_grid(ev, 5, 9, 17, coords=coords, backend=b)):
        torch.testing.assert_close(fn("triton"), fn("reference"), rtol=1e-5, atol=1e-5)


def test_reference_equals_numpy_histogram():
    """The scatter against an independent count (np.add.at) on integer events."""
    rng = np.random.default_rng(1)
    n, h, w = 2000, 7, 11
    x, y, p = rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n)
    want = np.zeros((2, h, w))
    np.add.at(want, (1 - p, y, x), 1)
    got = counts(Events(x, y, np.arange(n), p, w, h), h, w)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_cuda_matches_reference():
    pytest.importorskip("triton")
    for interp_c, interp_xy in [(False, False), (True, True)]:
        c, y, x, v = (t.cuda() for t in _random(100_003, (7, 33, 65), seed=11))
        want = event_hist_reference(c, y, x, v, (7, 33, 65), interp_c, interp_xy)
        got = event_hist(c, y, x, v, (7, 33, 65), interp_c, interp_xy)  # auto picks Triton on CUDA
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
