"""The fused C++ X3D block step (``clplat.kernels.x3d_block_cpu``) against the Python step and
the offline network.

Every test but the no-compiler one needs the extension, compiled on first use (~15-40 s, then
cached under ``TORCH_EXTENSIONS_DIR``), so they are ``slow``. Streams are long (60+ frames: past the delay,
every stride phase of the blocks' spatial strides is irrelevant in time, but the partial-sum
register and the shortcut's delay ring cycle many times), maps have odd sizes (stride-2 blocks
with a ragged last row/column), batch 1 and 3, blocks with and without squeeze-excite.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from clplat.kernels import x3d_block_cpu
from clplat.streaming import X3DS, convert
from clplat.streaming.models.x3d import X3DBlockStream
from tests.streaming.stepping import assert_steps_match, calibrate, one_thread, step_clip
from tests.streaming.x3d_cpp import RTOL, close, count_calls, extension

slow = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def kernel():
    return extension()


@pytest.fixture
def counted(kernel, monkeypatch):
    return count_calls(monkeypatch, kernel, ["block_step"])


def _net(**kwargs) -> X3DS:
    return calibrate(X3DS(5, width=8, depths=(2, 2, 1, 1), **kwargs), (2, 3, 4, 33, 29))


def _stream(net: X3DS, cpp: bool):
    stream = convert(net)
    for block in stream.modules():
        if isinstance(block, X3DBlockStream):
            block.cpp_step = cpp
    return stream


@slow
@pytest.mark.parametrize("kwargs,batch", [
    (dict(), 1),                            # SE on every other block, centred temporal conv (delay 1)
    (dict(se_ratio=0.0), 3),                # no SE anywhere
    (dict(causal=True), 3),                 # causal (delay 0): every step emits from the first
    (dict(causal=True, se_ratio=0.0), 1),
])
def test_fused_step_equals_python_step_and_offline(counted, monkeypatch, kwargs, batch):
    net = _net(**kwargs)
    clip = torch.randn(batch, 3, 64, 33, 29)  # odd sizes: 17x15 -> 9x8 -> 5x4 -> 3x2 maps
    with torch.no_grad():
        ref = net.forward_frames(clip)
    block_steps = [0]
    real_step = X3DBlockStream._step

    def count_step(self, frame, state):
        block_steps[0] += 1
        return real_step(self, frame, state)

    monkeypatch.setattr(X3DBlockStream, "_step", count_step)
    want, _ = step_clip(_stream(net, cpp=False), clip, grad=False)
    assert counted["block_step"] == 0 and block_steps[0] > 5 * 60
    block_steps[0] = 0
    got = assert_steps_match(_stream(net, cpp=True), clip, ref, atol=RTOL * float(ref.abs().max()))
    assert counted["block_step"] == block_steps[0] > 5 * 60  # every block step ran in C++: no silent fallback
    close(got, want)


@slow
def test_states_are_interchangeable_mid_stream(kernel):
    """Switching paths every few frames (each continuing the other's state) changes nothing."""
    net = _net()
    clip = torch.randn(2, 3, 60, 33, 29)
    stream = _stream(net, cpp=False)
    blocks = [m for m in stream.modules() if isinstance(m, X3DBlockStream)]
    ref, _ = step_clip(stream, clip, grad=False)
    outs, state = [], None
    with torch.no_grad():
        for t in range(clip.shape[2]):
            for b in blocks:
                b.cpp_step = (t // 3) % 2 == 1
            y, state = stream.step(clip[:, :, t], state)
            if y is not None:
                outs.append(y)
    close(torch.stack(outs, 2), ref)


def _leaves(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [leaf for s in state for leaf in _leaves(s)]


@slow
@pytest.mark.parametrize("index", [0, 1])  # stride-2 block with a 1x1 shortcut and SE; plain block
def test_block_state_matches_the_python_state(kernel, counted, index):
    """Per step, the same state tree (shapes, values, counters) and output as the Python block."""
    net = _net()
    stream = convert(net)
    block = [m for m in stream.modules() if isinstance(m, X3DBlockStream)][index]
    cin = block.conv_a.in_channels
    frames = torch.randn(3, cin, 12, 17, 15).contiguous(memory_format=torch.channels_last_3d)
    s_py = s_cpp = None
    with torch.no_grad():
        for t in range(frames.shape[2]):
            block.cpp_step = False
            y_py, s_py = block.step(frames[:, :, t], s_py)
            block.cpp_step = True
            y_cpp, s_cpp = block.step(frames[:, :, t], s_cpp)
            assert (y_py is None) == (y_cpp is None)
            if y_py is not None:
                close(y_cpp, y_py)
            a, b = _leaves(s_py), _leaves(s_cpp)
            assert [x.shape for x in a] == [x.shape for x in b]
            for x, z in zip(a, b):
                if x.dtype == torch.int64:
                    assert int(x) == int(z)
                else:
                    torch.testing.assert_close(z, x, rtol=RTOL, atol=1e-6)
    assert counted["block_step"] == frames.shape[2]


@slow
def test_float64_and_grad_keep_the_python_step(counted):
    net = _net().double()
    clip = torch.randn(1, 3, 16, 33, 29, dtype=torch.float64)
    stream = _stream(net, cpp=True)
    step_clip(stream, clip, grad=False)  # float64: Python fast path
    step_clip(stream.float(), clip.float(), grad=True)  # autograd: generic path
    assert counted["block_step"] == 0


def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    """No compiler: one warning naming it, and the stream runs the Python step with equal outputs."""
    monkeypatch.setattr(x3d_block_cpu, "_STATE", {"tried": False, "ok": False})
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    net = _net()
    clip = torch.randn(1, 3, 10, 33, 29)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got, _ = step_clip(_stream(net, cpp=True), clip, grad=False)
    msgs = [str(w.message) for w in seen if "fused C++ X3D" in str(w.message)]
    assert len(msgs) == 1 and "no-such-compiler-xyz" in msgs[0]
    want, _ = step_clip(_stream(net, cpp=False), clip, grad=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@slow
def test_new_weights_reach_the_fused_step(kernel, counted):
    """Weights loaded in place mid-stream (version counters move) are re-laid-out for C++."""
    net, other = _net(), _net(se_window=1)
    for p in other.parameters():
        p.data.mul_(1.5)
    clip = torch.randn(1, 3, 30, 33, 29)
    fused, python = _stream(net, cpp=True), _stream(net, cpp=False)
    s_f = s_p = None
    with torch.no_grad():
        for t in range(clip.shape[2]):
            if t == 15:
                new = convert(other).state_dict()
                fused.load_state_dict(new)
                python.load_state_dict(new)
            y_f, s_f = fused.step(clip[:, :, t], s_f)
            y_p, s_p = python.step(clip[:, :, t], s_p)
            if y_p is not None:
                close(y_f, y_p)
    assert counted["block_step"] > 0


@slow
def test_compile_step_keeps_the_fused_block_as_one_kernel(kernel):
    """A step recorded for the compiler holds one clplat_x3d::block_step node per block, and
    compile_step (Inductor) with it matches the Python eager step."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from clplat.kernels import tracing
    from clplat.streaming import compile_step

    net = _net(causal=True, head_window=3)  # a bounded head window: steady phases recur
    clip = torch.randn(1, 3, 12, 33, 29)
    want, _ = step_clip(_stream(net, cpp=False), clip, grad=False)
    stream = _stream(net, cpp=True)
    with torch.no_grad(), tracing():
        state = stream.init_state(clip[:, :, 0])
        graph = make_fx(lambda f: stream.step(f, state)[0])(clip[:, :, 0])
    ops = [n for n in graph.graph.nodes if n.target is torch.ops.clplat_x3d.block_step.default]
    assert len(ops) == 6
    step = compile_step(stream)
    outs, state = [], None
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = step(clip[:, :, t], state)
            outs.append(y)
    assert step.compilations >= 1
    close(torch.stack(outs, 2), want)


@slow
def test_replicate_fill_first_step_stays_python_then_fused(counted):
    """temporal_fill="replicate": the first step of each block (which feeds the first frame k-1
    times) takes the Python step; every later one the C++ step, with equal outputs."""
    net = _net()
    clip = torch.randn(2, 3, 24, 33, 29)
    streams = [convert(net, temporal_fill="replicate") for _ in range(2)]
    for stream, cpp in zip(streams, (False, True)):
        for block in stream.modules():
            if isinstance(block, X3DBlockStream):
                block.cpp_step = cpp
    want, _ = step_clip(streams[0], clip, grad=False)
    assert counted["block_step"] == 0
    got, _ = step_clip(streams[1], clip, grad=False)
    assert counted["block_step"] > 0
    close(got, want)
