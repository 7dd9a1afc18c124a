"""``CudaGraphStep``: static state buffers, one graph per recurring phase, phases picked on the host.

Here (CPU): the "no CUDA" error, and the whole phase / static-buffer / write-back / check logic
with graph capture emulated (``_Emulated`` re-runs the recorded function where a GPU would replay
a graph). The real graphs are tested in ``test_gpu.py`` (collected only where CUDA is).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from clplat.errors import UserError
from clplat.streaming import X3DS, convert
from clplat.streaming.cuda_graph import CudaGraphStep, cuda_graph_step, require_cuda
from tests.streaming.stepping import calibrate, stream_outputs, strided_net


class _Emulated(CudaGraphStep):
    """The graph step on CPU: "capture" keeps the function, "replay" runs it again."""

    def _pick_device(self, module):
        return torch.device("cpu")

    def _warm(self, fn):
        with torch.inference_mode():
            out, data, key = fn()
        return (None if out is None else out.clone()), [d.clone() for d in data], key

    def _record(self, fn):
        def replay():
            with torch.inference_mode():
                return fn()

        return replay


def _x3d(device: str = "cpu") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    net = calibrate(X3DS(5, width=8, depths=(2, 1, 1, 1), head_window=3), (1, 3, 6, 32, 32))
    return net, convert(net).to(device)


def _strided() -> tuple[nn.Module, nn.Module]:
    net = strided_net()
    return net, convert(net)


def test_a_cuda_request_without_cuda_is_one_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU") as err:
        require_cuda()
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="CUDA-graph step needs a CUDA GPU"):
        cuda_graph_step(_strided()[1])


def test_emulated_graphs_stream_the_offline_outputs_one_capture_per_phase():
    net, stream = _x3d()
    clip = torch.randn(1, 3, 20, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    step = _Emulated(stream)
    outs, at, _ = stream_outputs(step, clip)
    assert at == [stream.delay + j for j in range(len(outs))] and len(outs) >= 8
    torch.testing.assert_close(torch.stack(outs, 2), ref[:, :, : len(outs)], rtol=0, atol=1e-5)
    assert step.captures == 1  # stride 1: one steady phase
    assert step.eager_steps < stream.delay + 6  # warm-up (and the head's window) ran eagerly


def test_emulated_strided_net_captures_one_graph_per_phase_and_states_interoperate():
    net, stream = _strided()
    assert stream.temporal_stride == 4
    clip = torch.randn(1, 3, 40, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = net(clip)
    step = _Emulated(stream)
    first, at1, state = stream_outputs(step, clip[:, :, :25])
    eager, at2, state = stream_outputs(stream.step, clip[:, :, 25:30], state)  # eager continues a graph state
    last, at3, _ = stream_outputs(step, clip[:, :, 30:], state)  # and the graph step an eager one
    got = torch.stack(first + eager + last, 2)
    torch.testing.assert_close(got, ref[:, :, : got.shape[2]], rtol=0, atol=1e-5)
    assert step.captures == 4
    _, want_at, _ = stream_outputs(stream.step, clip)
    assert at1 + [25 + t for t in at2] + [30 + t for t in at3] == want_at


def test_a_graph_that_disagrees_with_the_eager_step_is_refused():
    class Broken(_Emulated):
        def _record(self, fn):
            replay = super()._record(fn)
            return lambda: None if (out := replay()) is None else out + 1.0

    _, stream = _strided()
    with pytest.raises(RuntimeError, match="disagrees with the eager step"):
        stream_outputs(Broken(stream), torch.randn(1, 3, 20, 16, 16))


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        _Emulated(convert(nn.Sequential(nn.Conv3d(3, 4, (2, 1, 1)))))


@pytest.mark.slow  # Inductor compiles the phase (C++ on CPU): ~1 min on a busy 2-core box
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_emulated_graph_of_the_compiled_phase():
    net, stream = _x3d()
    clip = torch.randn(1, 3, 20, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    step = _Emulated(stream, compile=True)
    outs, _, _ = stream_outputs(step, clip)
    torch.testing.assert_close(torch.stack(outs, 2), ref[:, :, : len(outs)], rtol=0, atol=1e-4)
    assert step.captures == 1 and step._compiler.compilations == 1
