"""The X3D stem's C++ step (``X3DStemStream``: ``x3d_block_cpu.conv_small`` for the 3-channel spatial
conv, ``x3d_block_cpu.taps_step`` for the depthwise temporal conv) against the Python step, the
offline network and ``F.conv2d``.

Tests that need the extension (compiled on first use, then cached) are ``slow``, like those of
``test_x3d_fused.py``; the no-compiler fallback is not. Streams are 64 frames on odd map sizes
(33x29 -> 17x15 after the stride-2 spatial conv, a ragged last row and column), batch 1 and 3.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from clplat.kernels import x3d_block_cpu
from clplat.streaming import X3DS, convert
from clplat.streaming.models.x3d import X3DBlockStream, X3DStemStream
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
    return count_calls(monkeypatch, kernel, ["conv_small", "taps_step"])


def _net(**kwargs) -> X3DS:
    return calibrate(X3DS(5, width=8, depths=(1, 1, 1, 1), **kwargs), (2, 3, 6, 33, 29))


def _stream(net: X3DS, cpp: bool, **convert_kwargs):
    """The stream with the stem on the C++ step (``cpp``) or the Python one; blocks on Python."""
    stream = convert(net, **convert_kwargs)
    assert isinstance(stream.stem, X3DStemStream)
    stream.stem.cpp_step = cpp
    for block in stream.modules():
        if isinstance(block, X3DBlockStream):
            block.cpp_step = False
    return stream


@slow
@pytest.mark.parametrize("shape", [
    (1, 3, 112, 112, 24, 3, 2, 1),  # the X3D-S stem at 112 px
    (3, 3, 33, 29, 8, 3, 2, 1),     # odd sizes: ragged last row and column
    (1, 2, 9, 7, 20, 3, 1, 1),      # stride 1, 20 outputs (a partial last vector)
    (2, 3, 10, 11, 32, 5, 2, 2),    # 5x5, 32 outputs (4 vectors)
    (1, 1, 6, 6, 5, 1, 1, 0),       # 1x1
])
def test_conv_small_equals_conv2d(kernel, shape):
    b, cin, h, w, cout, k, s, p = shape
    x = torch.randn(b, cin, 4, h, w)[:, :, 1]  # a strided frame view, as a clip's frame is
    weight, bias = torch.randn(cout, cin, k, k), torch.randn(cout)
    w2 = weight.permute(2, 3, 1, 0).reshape(-1, cout).contiguous()  # the "hwio" layout
    for act, name in enumerate(("identity", "relu", "silu")):
        f = {"identity": lambda y: y, "relu": F.relu, "silu": F.silu}[name]
        got = kernel.conv_small(x, w2, bias, act, ((k, k), (s, s), (p, p)))
        close(got, f(F.conv2d(x, weight, bias, s, p)))
    got = kernel.conv_small(x, w2, None, 0, ((k, k), (s, s), (p, p)))
    close(got, F.conv2d(x, weight, None, s, p))


@slow
@pytest.mark.parametrize("kwargs,batch", [
    (dict(), 1),             # centred temporal conv (delay 2 in the stem)
    (dict(causal=True), 3),  # causal: every step emits
])
def test_stem_step_equals_python_step_and_offline(counted, kwargs, batch):
    net = _net(**kwargs)
    clip = torch.randn(batch, 3, 64, 33, 29)
    with torch.no_grad():
        ref = net.forward_frames(clip)
        stem_ref = net.stem(clip)
    want, _ = step_clip(_stream(net, cpp=False), clip, grad=False)
    assert counted == {"conv_small": 0, "taps_step": 0}
    stream = _stream(net, cpp=True)
    got = assert_steps_match(stream, clip, ref, atol=RTOL * float(ref.abs().max()))
    assert counted == {"conv_small": 64, "taps_step": 64}  # every stem step ran in C++
    close(got, want)
    # the stem alone against the offline stem, every emitted position
    stem_out = assert_steps_match(stream.stem, clip, stem_ref, atol=RTOL * float(stem_ref.abs().max()))
    assert stem_out.shape[2] == 64 - stream.stem.delay


@slow
def test_stem_states_are_interchangeable(kernel, counted):
    """Per step the same state tree (shapes, values, counters) and output as the Python stem; and
    switching paths every few frames, each continuing the other's state, changes nothing."""
    net = _net()
    clip = torch.randn(2, 3, 64, 33, 29)
    stem = _stream(net, cpp=False).stem
    s_py = s_cpp = s_mix = None
    with torch.no_grad():
        for t in range(clip.shape[2]):
            frame = clip[:, :, t]
            stem.cpp_step = False
            y_py, s_py = stem.step(frame, s_py)
            stem.cpp_step = True
            y_cpp, s_cpp = stem.step(frame, s_cpp)
            stem.cpp_step = (t // 3) % 2 == 1
            y_mix, s_mix = stem.step(frame, s_mix)
            assert (y_py is None) == (y_cpp is None) == (y_mix is None)
            if y_py is not None:
                close(y_cpp, y_py)
                close(y_mix, y_py)
            (a0, (acc_py, n_py)), (b0, (acc_cpp, n_cpp)) = s_py, s_cpp
            assert a0 == b0 == () and int(n_py) == int(n_cpp)
            assert acc_cpp.shape == acc_py.shape
            torch.testing.assert_close(acc_cpp, acc_py, rtol=RTOL, atol=1e-6)
    assert counted["taps_step"] == 64 + sum((t // 3) % 2 == 1 for t in range(64))


@slow
def test_replicate_fill_first_step_stays_python(counted):
    """temporal_fill="replicate": the stem's first step (the first frame fed k-1 times) takes the
    Python step, every later one C++, with equal outputs."""
    net = _net()
    clip = torch.randn(1, 3, 24, 33, 29)
    want, _ = step_clip(_stream(net, cpp=False, temporal_fill="replicate"), clip, grad=False)
    got, _ = step_clip(_stream(net, cpp=True, temporal_fill="replicate"), clip, grad=False)
    assert counted["taps_step"] == 23
    close(got, want)


@slow
def test_float64_and_grad_keep_the_python_stem(counted):
    net = _net().double()
    clip = torch.randn(1, 3, 12, 33, 29, dtype=torch.float64)
    stream = _stream(net, cpp=True)
    step_clip(stream, clip, grad=False)
    step_clip(stream.float(), clip.float(), grad=True)
    assert counted == {"conv_small": 0, "taps_step": 0}


def test_no_compiler_stem_falls_back(monkeypatch):
    """No compiler: one warning, and the stem runs the Python step with equal outputs."""
    monkeypatch.setattr(x3d_block_cpu, "_STATE", {"tried": False, "ok": False})
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    net = _net()
    clip = torch.randn(1, 3, 8, 33, 29)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got, _ = step_clip(_stream(net, cpp=True), clip, grad=False)
    assert sum("no-such-compiler-xyz" in str(w.message) for w in seen) == 1
    want, _ = step_clip(_stream(net, cpp=False), clip, grad=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@slow
def test_eager_calls_bind_directly_traced_calls_use_the_ops(kernel):
    """Eager: the extension module's functions (no dispatcher boxing); while a step is recorded
    for a compiler: the torch ops (they must appear in the graph)."""
    from clplat.kernels import tracing

    for name in ("block_step", "taps_step", "conv_small"):
        assert kernel._fn(name) is getattr(kernel._STATE["module"], name)
        with tracing():
            assert kernel._fn(name) is getattr(torch.ops.clplat_x3d, name)
