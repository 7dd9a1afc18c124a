"""The Triton ConvLSTM gate update and LIF membrane update (CPU interpreter) against their PyTorch
references, the arctan surrogate against its formula, and the dispatchers."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from clplat.kernels.convlstm_step import (  # noqa: E402
    convlstm_step,
    convlstm_step_reference,
    convlstm_step_triton,
)
from clplat.kernels.lif_step import (  # noqa: E402
    lif_step,
    lif_step_reference,
    lif_step_triton,
    spike,
    surrogate_grad,
)

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 5, 13, 11), (3, 2, 33, 31)]
BF16_TOL = {"rtol": 1.6e-2, "atol": 1e-2}


@pytest.fixture()
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels are JIT-ed lazily per mode, so setting the variable here (after import) works."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _lstm_inputs(b, hid, h, w, dtype, c_dtype=None):
    g = torch.Generator().manual_seed(b * 1000 + hid * 100 + h * 10 + w)
    xg = (2 * torch.randn(b, 4 * hid, h, w, generator=g)).to(dtype)
    hg = torch.randn(b, 4 * hid, h, w, generator=g).to(dtype)
    c = torch.randn(b, hid, h, w, generator=g).to(c_dtype or dtype)
    return xg, hg, c


def _lif_inputs(b, ch, h, w, dtype, v_dtype=None):
    g = torch.Generator().manual_seed(b * 1000 + ch * 100 + h * 10 + w + 7)
    i = torch.randn(b, ch, h, w, generator=g).to(dtype)
    v = torch.randn(b, ch, h, w, generator=g).abs().to(v_dtype or dtype)
    leak = torch.sigmoid(torch.randn(ch, generator=g))
    theta = torch.rand(ch, generator=g) + 0.05
    return i, v, leak, theta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_hg", [True, False])
def test_convlstm_triton_matches_reference(interpret, shape, dtype, with_hg):
    xg, hg, c = _lstm_inputs(*shape, dtype)
    hg = hg if with_hg else None
    h, c_new = convlstm_step_triton(xg, hg, c)
    h_ref, c_ref = convlstm_step_reference(xg, hg, c)
    assert h.dtype == dtype and c_new.dtype == dtype and h.shape == c.shape
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else BF16_TOL
    torch.testing.assert_close(h, h_ref, **tol)
    torch.testing.assert_close(c_new, c_ref, **tol)


def test_convlstm_fp32_cell_with_bf16_gates_and_in_place(interpret):
    xg, hg, c = _lstm_inputs(2, 3, 9, 7, torch.bfloat16, c_dtype=torch.float32)
    h_ref, c_ref = convlstm_step_reference(xg, hg, c)
    buf = c.clone()
    h, out = convlstm_step_triton(xg, hg, buf, out_c=buf)
    assert out.data_ptr() == buf.data_ptr() and h.dtype == torch.bfloat16 and out.dtype == torch.float32
    torch.testing.assert_close(buf, c_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, **BF16_TOL)


def test_convlstm_reference_by_hand():
    """Gates (i, f, g, o) = (0, 0, 0, 0) + (0, ln 3, 0, 0): c' = 0.75·c; h = 0.5·tanh(c')."""
    xg = torch.zeros(1, 4, 1, 1)
    hg = torch.tensor([0.0, math.log(3.0), 0.0, 0.0]).view(1, 4, 1, 1)
    c = torch.full((1, 1, 1, 1), 2.0)
    h, c_new = convlstm_step_reference(xg, hg, c)
    assert c_new.item() == pytest.approx(1.5)
    assert h.item() == pytest.approx(0.5 * math.tanh(1.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_lif_triton_matches_reference(interpret, shape, dtype):
    i, v, leak, theta = _lif_inputs(*shape, dtype)
    z, v_new = lif_step_triton(i, v, leak, theta)
    z_ref, v_ref = lif_step_reference(i, v, leak, theta)
    assert z.dtype == dtype and v_new.dtype == dtype
    if dtype == torch.float32:  # spikes are exact; a near-threshold bf16 rounding may flip one
        assert torch.equal(z, z_ref) and (z.numel() == 1 or 0 < z.mean() < 1)
        torch.testing.assert_close(v_new, v_ref, rtol=1e-6, atol=1e-6)
    else:
        assert (z != z_ref).float().mean() < 0.01
        same = z == z_ref
        torch.testing.assert_close(v_new[same], v_ref[same], **BF16_TOL)


def test_lif_fp32_membrane_with_bf16_current_and_in_place(interpret):
    i, v, leak, theta = _lif_inputs(2, 4, 7, 9, torch.bfloat16, v_dtype=torch.float32)
    z_ref, v_ref = lif_step_reference(i, v, leak, theta)
    buf = v.clone()
    z, out = lif_step_triton(i, buf, leak, theta, out_v=buf)
    assert out.data_ptr() == buf.data_ptr() and z.dtype == torch.bfloat16 and out.dtype == torch.float32
    assert torch.equal(z, z_ref)
    torch.testing.assert_close(buf, v_ref)


def test_lif_reference_by_hand():
    """leak 0.5, theta 1: v=1, i=0.6 -> u=1.1 fires, reset to 0; v=1, i=0.4 -> u=0.9 stays."""
    i = torch.tensor([0.6, 0.4]).view(1, 1, 2, 1)
    v = torch.ones(1, 1, 2, 1)
    z, v_new = lif_step_reference(i, v, torch.tensor([0.5]), torch.tensor([1.0]))
    assert z.flatten().tolist() == [1.0, 0.0]
    assert v_new.flatten().tolist() == pytest.approx([0.0, 0.9])


def test_surrogate_gradient_is_the_arctan_formula():
    """d spike / dx = (α/2) / (1 + (π/2·α·x)²), forward a step at 0."""
    x = torch.linspace(-0.5, 0.5, 41, dtype=torch.float64).requires_grad_()
    y = spike(x, 10.0)
    assert y.tolist() == [float(v >= 0) for v in x.tolist()]
    y.sum().backward()
    want = 5.0 / (1 + (math.pi / 2 * 10.0 * x.detach()) ** 2)
    torch.testing.assert_close(x.grad, want)
    torch.testing.assert_close(surrogate_grad(x.detach(), 10.0), want)
    assert x.grad[20].item() == pytest.approx(5.0)  # the peak α/2 at x = 0


def test_lif_reference_gradient_flows_through_the_surrogate_only():
    """dz/di at u - theta = x is the surrogate; the reset does not send gradient (z detached)."""
    i = torch.tensor([0.3, 1.2, 2.0], dtype=torch.float64).view(1, 1, 3, 1).requires_grad_()
    v = torch.zeros(1, 1, 3, 1, dtype=torch.float64)
    theta = torch.tensor([1.0], dtype=torch.float64)
    z, _ = lif_step_reference(i, v, torch.tensor([0.5], dtype=torch.float64), theta)
    z.sum().backward()
    torch.testing.assert_close(i.grad.flatten(), surrogate_grad(i.detach().flatten() - 1.0))
    i.grad = None
    _, v_new = lif_step_reference(i, v, torch.tensor([0.5], dtype=torch.float64), theta)
    v_new.sum().backward()
    assert i.grad.flatten().tolist() == [1.0, 0.0, 0.0]  # fired pixels reset to 0 with no gradient


def test_dispatchers(monkeypatch, interpret):
    xg, hg, c = _lstm_inputs(1, 2, 3, 4, torch.float32)
    i, v, leak, theta = _lif_inputs(1, 2, 3, 4, torch.float32)
    want_lstm = convlstm_step_reference(xg, hg, c)
    want_lif = lif_step_reference(i, v, leak, theta)
    for backend in ("reference", "triton", "auto"):
        torch.testing.assert_close(convlstm_step(xg, hg, c, backend=backend), want_lstm)
        torch.testing.assert_close(lif_step(i, v, leak, theta, backend=backend), want_lif)
    with pytest.raises(ValueError, match="backend"):
        lif_step(i, v, leak, theta, backend="cuda-please")
    with pytest.raises(ValueError, match="cell state"):
        convlstm_step(xg, hg, c[:, :1])
    with pytest.raises(ValueError, match="leak and theta"):
        lif_step(i, v, leak[:1], theta)
    with pytest.raises(RuntimeError, match="no backward"):
        lif_step(i, v, leak.clone().requires_grad_(), theta, backend="triton")
    with pytest.raises(RuntimeError, match="no backward"):
        convlstm_step(xg.clone().requires_grad_(), hg, c, backend="triton")
