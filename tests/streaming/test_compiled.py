"""``compile_step``: the compiled step streams the offline outputs, phase by phase.

References are the offline networks (``forward_frames`` / ``forward``) and the eager ``step``.
Each test compiles small nets with Inductor's C++ backend (needs a C++ compiler), a few seconds each.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from clplat.streaming import LRCN, X3DS, compile_step, convert
from clplat.streaming.compiled import CompiledStep
from tests.streaming.stepping import calibrate, stream_outputs, strided_net

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("g++") is None and shutil.which("c++") is None,
        reason="Inductor's CPU backend needs a C++ compiler",
    ),
]

ATOL = 1e-5


@pytest.fixture(scope="module")
def x3d():
    """One network and one ``CompiledStep`` shared by the X3D tests: its steady phase compiles once."""
    torch.manual_seed(1)
    net = calibrate(X3DS(5, width=8, depths=(2, 1, 1, 1), head_window=3, causal=True), (1, 3, 6, 32, 32),
                    reset_linear=False)
    stream = convert(net)
    return net, stream, compile_step(stream)


def test_x3d_compiled_step_matches_offline_and_compiles_one_phase(x3d):
    net, _, compiled = x3d
    clip = torch.randn(1, 3, 14, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_frames(clip)  # (B, K, T): causal, one output per frame
    eager_before = compiled.eager_steps
    outs, at, _ = stream_outputs(compiled, clip)
    assert at == list(range(14))
    torch.testing.assert_close(torch.stack(outs, dim=2), ref, rtol=0, atol=ATOL)
    # warm-up phases run eagerly (each seen once); the saturated steady phase is compiled once
    assert compiled.compilations == 1
    assert compiled.eager_steps - eager_before <= 7  # the head's window warm-up, then replays


def test_states_pass_between_compiled_and_eager_steps(x3d):
    net, stream, compiled = x3d
    clip = torch.randn(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    first, _, state = stream_outputs(compiled, clip[:, :, :10])
    second, _, state = stream_outputs(stream.step, clip[:, :, 10:13], state)  # eager continues a compiled state
    third, _, _ = stream_outputs(compiled, clip[:, :, 13:], state)  # and back
    torch.testing.assert_close(torch.stack(first + second + third, dim=2), ref, rtol=0, atol=ATOL)
    # another stream through the same object: its warm-up phases come back, but not within the
    # network's period, so they stay eager; only the one steady phase is ever compiled
    assert compiled.compilations == 1


def test_a_state_reused_twice_gives_the_same_output(x3d):
    """Branching a stream (feeding an older state again) takes the keyed path, not the cached one."""
    _, stream, compiled = x3d
    clip = torch.randn(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(4))
    _, _, state = stream_outputs(compiled, clip[:, :, :8])
    frame = clip[:, :, 8]
    with torch.inference_mode():
        a, _ = compiled(frame, state)
        b, _ = compiled(frame, state)
        e, _ = stream.step(frame, state)
    torch.testing.assert_close(a, e, rtol=0, atol=ATOL)
    torch.testing.assert_close(b, e, rtol=0, atol=ATOL)


def test_channels_last_frames_are_relaid_out(x3d):
    _, stream, compiled = x3d
    clip = torch.randn(1, 3, 10, 32, 32, generator=torch.Generator().manual_seed(5))
    _, _, state = stream_outputs(compiled, clip[:, :, :9])
    with torch.inference_mode():
        y, _ = compiled(clip[:, :, 9].contiguous(memory_format=torch.channels_last), state)
        e, _ = stream.step(clip[:, :, 9], state)
    torch.testing.assert_close(y, e, rtol=0, atol=ATOL)


def test_temporal_strides_compile_one_graph_per_phase():
    """Counters cycle with the stride (``tick``), so a stride-4 stream has 4 recurring phases."""
    net = strided_net()
    stream = convert(net)
    assert stream.temporal_stride == 4
    clip = torch.randn(1, 3, 30, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = net(clip)  # (1, 6, T/4, 8, 8)
    compiled = compile_step(stream)
    outs, at, _ = stream_outputs(compiled, clip)
    eager, eager_at, _ = stream_outputs(stream.step, clip)
    assert at == eager_at
    n = len(outs)
    torch.testing.assert_close(torch.stack(outs, dim=2), ref[:, :, :n], rtol=0, atol=ATOL)
    assert compiled.compilations == 4


def test_lrcn_compiled_step_matches_offline():
    torch.manual_seed(8)
    net = calibrate(LRCN(4, hidden_size=16, num_layers=2), (1, 3, 4, 32, 32), reset_linear=False)
    clip = torch.randn(1, 3, 6, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = net.forward_frames(clip)
    compiled = compile_step(convert(net))
    outs, _, _ = stream_outputs(compiled, clip)
    torch.testing.assert_close(torch.stack(outs, dim=2), ref, rtol=0, atol=ATOL)
    assert compiled.compilations == 1


def test_weights_are_a_snapshot_until_reset():
    torch.manual_seed(10)
    net = nn.Sequential(nn.Conv3d(3, 4, (2, 3, 3), padding=(1, 1, 1)), nn.ReLU()).eval()
    stream = convert(net)
    clip = torch.randn(1, 3, 6, 8, 8, generator=torch.Generator().manual_seed(11))
    compiled = compile_step(stream)
    _, _, state = stream_outputs(compiled, clip[:, :, :4])
    assert compiled.compilations == 1
    with torch.no_grad():
        stream[0].weight.mul_(2.0)
    with torch.inference_mode():
        stale, _ = compiled(clip[:, :, 4], state)
        fresh, _ = stream.step(clip[:, :, 4], state)
    assert not torch.allclose(stale, fresh)
    compiled.reset()
    got, _, _ = stream_outputs(compiled, clip[:, :, 4:], state)
    want, _, _ = stream_outputs(stream.step, clip[:, :, 4:], state)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=ATOL)


def test_a_compiler_that_disagrees_is_refused(monkeypatch):
    net = nn.Sequential(nn.Conv3d(3, 4, (2, 1, 1))).eval()
    stream = convert(net)

    def bad_compile(self, graph, example):
        return lambda *args: [t + 1.0 for t in graph(*args)]

    monkeypatch.setattr(CompiledStep, "_compile", bad_compile)
    compiled = compile_step(stream)
    clip = torch.randn(1, 3, 4, 5, 5)
    with pytest.raises(RuntimeError, match="compiled step disagrees"):
        stream_outputs(compiled, clip)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        compile_step(convert(nn.Sequential(nn.Conv3d(3, 4, (2, 1, 1)))))


def test_a_compiler_that_fails_leaves_the_phase_eager_with_a_warning(monkeypatch):
    torch.manual_seed(12)
    net = nn.Sequential(nn.Conv3d(3, 4, (2, 3, 3), padding=(1, 1, 1)), nn.ReLU()).eval()
    stream = convert(net)

    def broken(self, graph, example):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(CompiledStep, "_compile", broken)
    compiled = compile_step(stream)
    clip = torch.randn(1, 3, 7, 8, 8, generator=torch.Generator().manual_seed(13))
    with pytest.warns(UserWarning, match="runs eagerly .*no C\\+\\+ compiler"):
        outs, _, _ = stream_outputs(compiled, clip)
    want, _, _ = stream_outputs(stream.step, clip)
    torch.testing.assert_close(torch.stack(outs), torch.stack(want), rtol=0, atol=0)
    assert compiled.compilations == 0
