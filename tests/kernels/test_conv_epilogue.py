"""The Triton conv epilogue (run by the CPU interpreter) against its PyTorch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from clplat.kernels import conv_epilogue, conv_epilogue_reference, conv_epilogue_triton  # noqa: E402


@pytest.fixture()
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is JIT-ed lazily per mode, so setting the variable here (after import) works."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(b, c, k, n, dtype, acc_dtype=None):
    g = torch.Generator().manual_seed(b * 1000 + c * 100 + k * 10 + n)
    taps = torch.randn(b, c, k, n, generator=g).to(dtype)
    acc = torch.randn(b, c, k - 1, n, generator=g).to(acc_dtype or dtype)
    bias = torch.randn(c, generator=g).to(dtype)
    return taps, acc, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["identity", "relu", "silu"])
@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (2, 3, 3, 37), (1, 5, 5, 130), (3, 2, 4, 1025)])
def test_triton_matches_reference(interpret, shape, activation, dtype):
    taps, acc, bias = _inputs(*shape, dtype)
    y, new_acc = conv_epilogue_triton(taps, acc, bias, activation)
    y_ref, acc_ref = conv_epilogue_reference(taps, acc, bias, activation)
    assert y.dtype == dtype and new_acc.dtype == dtype
    tol = {} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(new_acc, acc_ref, **tol)


def test_fp32_state_with_bf16_taps_and_no_bias(interpret):
    taps, acc, _ = _inputs(2, 4, 3, 50, torch.bfloat16, acc_dtype=torch.float32)
    y, new_acc = conv_epilogue_triton(taps, acc, None, "relu")
    y_ref, acc_ref = conv_epilogue_reference(taps, acc, None, "relu")
    assert new_acc.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(new_acc, acc_ref)


def test_in_place_update(interpret):
    taps, acc, bias = _inputs(2, 3, 4, 33, torch.float32)
    y_ref, acc_ref = conv_epilogue_reference(taps, acc, bias, "silu")
    buf = acc.clone()
    y, out = conv_epilogue_triton(taps, buf, bias, "silu", acc_out=buf)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(buf, acc_ref)


def test_reference_semantics_by_hand():
    """The register shifts: y = acc0 + tap2 + b; acc' = [acc1 + tap1, tap0]."""
    taps = torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 3, 1)
    acc = torch.tensor([1000.0, 10000.0]).view(1, 1, 2, 1)
    y, new_acc = conv_epilogue_reference(taps, acc, torch.tensor([0.5]))
    assert y.item() == 1100.5
    assert new_acc.flatten().tolist() == [10010.0, 1.0]


def test_dispatcher(monkeypatch, interpret):
    taps, acc, bias = _inputs(1, 2, 3, 9, torch.float32)
    ref = conv_epilogue_reference(taps, acc, bias, "relu")
    for backend in ("reference", "triton", "auto"):
        out = conv_epilogue(taps, acc, bias, "relu", backend=backend)
        torch.testing.assert_close(out, ref)
    monkeypatch.setenv("CLPLAT_KERNELS", "triton")
    torch.testing.assert_close(conv_epilogue(taps, acc, bias, "relu"), ref)
    with pytest.raises(ValueError):
        conv_epilogue(taps, acc, bias, "relu", backend="cuda-please")
    with pytest.raises(ValueError):
        conv_epilogue(taps, acc, bias, "tanh")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    taps, acc, bias = _inputs(1, 2, 3, 9, torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        conv_epilogue(taps, acc, bias, backend="triton")


def test_streaming_conv_runs_the_triton_epilogue(monkeypatch, interpret):
    """The partial-sum layout of ContinualConv3d goes through the dispatcher: forcing Triton
    changes nothing but the backend."""
    from clplat.streaming import ContinualConv3d

    torch.manual_seed(0)
    conv = ContinualConv3d(
        3, 3, (3, 3, 3), padding=(0, 1, 1), temporal_padding=(1, 1), layout="partial", activation="silu"
    ).eval()
    clip = torch.randn(2, 3, 6, 5, 7)
    with torch.no_grad():
        ref = conv(clip)
        monkeypatch.setenv("CLPLAT_KERNELS", "triton")
        out, _ = conv.forward_steps(clip)
    torch.testing.assert_close(out, ref[:, :, : out.shape[2]], atol=1e-5, rtol=1e-5)
    assert out.shape[2] == 5
