"""The Triton ConvS5 state update (run by the CPU interpreter) against its PyTorch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import importlib  # noqa: E402

# the package re-exports the function ``ssm_step``, which shadows the submodule as an attribute
ssm_step_module = importlib.import_module("clplat.kernels.ssm_step")
from clplat.kernels.ssm_step import ssm_step, ssm_step_reference, ssm_step_triton  # noqa: E402
from clplat.streaming import ConvS5  # noqa: E402


@pytest.fixture()
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is JIT-ed lazily per mode, so setting the variable here (after import) works."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(b, s, h, w, dtype, bu_dtype=None):
    g = torch.Generator().manual_seed(b * 1000 + s * 100 + h * 10 + w)
    x = torch.randn(b, 2 * s, h, w, generator=g).to(dtype)
    bu = torch.randn(b, 2 * s, h, w, generator=g).to(bu_dtype or dtype)
    mag = torch.rand(s, generator=g) * 0.99
    phase = torch.rand(s, generator=g) * 6.28
    return x, bu, mag * phase.cos(), mag * phase.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 5, 13, 11), (3, 2, 33, 31)])
def test_triton_matches_reference(interpret, shape, dtype):
    x, bu, a_re, a_im = _inputs(*shape, dtype)
    got = ssm_step_triton(x, bu, a_re, a_im)
    want = ssm_step_reference(x, bu, a_re, a_im)
    assert got.dtype == dtype and got.shape == x.shape
    tol = {} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(got, want, **tol)


def test_fp32_state_with_bf16_input(interpret):
    x, bu, a_re, a_im = _inputs(2, 3, 9, 9, torch.float32, bu_dtype=torch.bfloat16)
    got = ssm_step_triton(x, bu, a_re, a_im)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ssm_step_reference(x, bu, a_re, a_im))


def test_in_place_update(interpret):
    x, bu, a_re, a_im = _inputs(2, 4, 6, 5, torch.float32)
    want = ssm_step_reference(x, bu, a_re, a_im)
    buf = x.clone()
    out = ssm_step_triton(buf, bu, a_re, a_im, out=buf)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, want)


def test_reference_by_hand():
    """One complex state: (0.5 + 0.5i)(2 + 1i) + (1 - 1i) = 1.5 + 0.5i."""
    x = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    bu = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    out = ssm_step_reference(x, bu, torch.tensor([0.5]), torch.tensor([0.5]))
    assert out.flatten().tolist() == [1.5, 0.5]


def test_dispatcher(monkeypatch, interpret):
    x, bu, a_re, a_im = _inputs(1, 2, 3, 4, torch.float32)
    want = ssm_step_reference(x, bu, a_re, a_im)
    for backend in ("reference", "triton", "auto"):
        torch.testing.assert_close(ssm_step(x, bu, a_re, a_im, backend=backend), want)
    monkeypatch.setenv("CLPLAT_KERNELS", "triton")
    torch.testing.assert_close(ssm_step(x, bu, a_re, a_im), want)
    with pytest.raises(ValueError, match="backend"):
        ssm_step(x, bu, a_re, a_im, backend="cuda-please")
    with pytest.raises(ValueError, match="bu must have"):
        ssm_step(x, bu[:, :2], a_re, a_im)
    with pytest.raises(ValueError, match="a_re and a_im"):
        ssm_step(x, bu, a_re[:1], a_im)
    # autograd needs the reference; forcing Triton there is an error, not silently wrong grads
    a_grad = a_re.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="no backward"):
        ssm_step(x, bu, a_grad, a_im, backend="triton")


def test_forced_triton_stream_step_equals_reference(monkeypatch, interpret):
    """A whole ConvS5 stream (odd frame size) stepped with the Triton kernel equals the reference
    step and the parallel scan."""
    torch.manual_seed(0)
    layer = ConvS5(3, 10, kernel_size=3)
    clip = torch.randn(2, 3, 6, 5, 7)

    def run():
        state, outs = None, []
        with torch.no_grad():
            for t in range(clip.shape[2]):
                y, state = layer.step(clip[:, :, t], state)
                outs.append(y)
        return torch.stack(outs, 2), state[0]

    monkeypatch.setenv("CLPLAT_KERNELS", "reference")
    y_ref, s_ref = run()
    monkeypatch.setenv("CLPLAT_KERNELS", "triton")
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return ssm_step_triton(*args, **kwargs)

    monkeypatch.setattr(ssm_step_module, "ssm_step_triton", counting)
    y_tri, s_tri = run()
    assert len(calls) == clip.shape[2]  # the kernel really ran on every step
    torch.testing.assert_close(y_tri, y_ref)
    torch.testing.assert_close(s_tri, s_ref)
    with torch.no_grad():
        torch.testing.assert_close(y_tri, layer(clip), atol=1e-5, rtol=1e-5)
