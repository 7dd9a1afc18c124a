"""GPU-only tests (collected only where CUDA is; ``benchmarks/gpu_check.sh`` runs them): the Triton
kernels compiled for the GPU (no interpreter) against their references, the dispatcher choosing
them on CUDA tensors, and ``CudaGraphStep``'s real graphs against the offline networks, in bf16,
over Inductor phases, and with no host synchronisation in steady frames.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from clplat.kernels import conv_epilogue, conv_epilogue_reference, conv_epilogue_triton
from clplat.streaming.cuda_graph import cuda_graph_step
from tests.kernels.test_cuda_graph import _strided, _x3d
from tests.streaming.stepping import stream_outputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")  # collected only then
epilogue_module = importlib.import_module("clplat.kernels.conv_epilogue")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["identity", "relu", "silu"])
@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (2, 3, 3, 37), (1, 24, 5, 3136), (4, 96, 3, 1025)])
def test_triton_epilogue_on_cuda_matches_reference(monkeypatch, shape, activation, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(sum(shape))
    b, c, k, n = shape
    taps = torch.randn(b, c, k, n, generator=g).to(dtype).cuda()
    acc = torch.randn(b, c, k - 1, n, generator=g).to(dtype).cuda()
    bias = torch.randn(c, generator=g).to(dtype).cuda()
    y, new_acc = conv_epilogue_triton(taps, acc, bias, activation)
    y_ref, acc_ref = conv_epilogue_reference(taps, acc, bias, activation)
    tol = {} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(new_acc, acc_ref, **tol)
    buf = acc.clone()  # in place (acc_out aliasing acc)
    y2, out = conv_epilogue_triton(taps, buf, bias, activation, acc_out=buf)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, acc_ref, **tol)


def test_dispatcher_picks_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("CLPLAT_KERNELS", raising=False)
    calls = []
    real = epilogue_module.conv_epilogue_triton
    monkeypatch.setattr(epilogue_module, "conv_epilogue_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    taps, acc = torch.randn(1, 4, 3, 50, device="cuda"), torch.randn(1, 4, 2, 50, device="cuda")
    with torch.no_grad():
        conv_epilogue(taps, acc, None, "relu")
    assert calls == [1]


def test_eager_cuda_stream_runs_the_triton_epilogue(monkeypatch):
    """On CUDA the hot path's partial-layout convs go through the Triton kernel (no forcing)."""
    monkeypatch.delenv("CLPLAT_KERNELS", raising=False)
    net, stream = _x3d("cuda")
    calls = []
    real = epilogue_module.conv_epilogue_triton
    monkeypatch.setattr(epilogue_module, "conv_epilogue_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    clip = torch.randn(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    outs, _, _ = stream_outputs(stream.step, clip.cuda())
    assert len(calls) >= clip.shape[2]
    torch.testing.assert_close(torch.stack(outs, 2).cpu(), ref[:, :, : len(outs)], rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graphs_stream_the_offline_outputs(dtype):
    net, stream = _x3d()
    clip = torch.randn(1, 3, 24, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    step = cuda_graph_step(stream, dtype=dtype)
    outs, at, _ = stream_outputs(step, clip.cuda())
    assert at == [stream.delay + j for j in range(len(outs))]
    got = torch.stack(outs, 2).float().cpu()
    tol = 1e-4 if dtype == torch.float32 else 3e-2 * float(ref.abs().max())
    torch.testing.assert_close(got, ref[:, :, : len(outs)], rtol=0, atol=tol)
    assert step.captures == 1


def test_cuda_strided_net_and_state_interop():
    net, stream = _strided()
    stream = stream.cuda()
    clip = torch.randn(2, 3, 40, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = net(clip)
    step = cuda_graph_step(stream)
    clip = clip.cuda()
    first, _, state = stream_outputs(step, clip[:, :, :25])
    eager, _, state = stream_outputs(stream.step, clip[:, :, 25:30], state)
    last, _, _ = stream_outputs(step, clip[:, :, 30:], state)
    got = torch.stack(first + eager + last, 2).cpu()
    torch.testing.assert_close(got, ref[:, :, : got.shape[2]], rtol=0, atol=1e-4)
    assert step.captures == 4


def test_steady_frames_never_synchronise_the_host():
    _, stream = _x3d("cuda")
    step = cuda_graph_step(stream)
    frames = torch.randn(40, 1, 3, 32, 32, device="cuda")
    state = None
    with torch.inference_mode():
        for t in range(20):  # warm-up and capture
            _, state = step(frames[t], state)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(20, 40):
                _, state = step(frames[t], state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert step.captures == 1


@pytest.mark.slow  # Inductor compiles the phase
def test_cuda_graph_of_the_compiled_phase():
    net, stream = _x3d()
    clip = torch.randn(1, 3, 20, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    step = cuda_graph_step(stream, compile=True)
    outs, _, _ = stream_outputs(step, clip.cuda())
    torch.testing.assert_close(torch.stack(outs, 2).cpu(), ref[:, :, : len(outs)], rtol=0, atol=1e-4)
    assert step.captures == 1
