"""The Triton conv epilogue inside whole streams: forced on (CPU interpreter), counted, and checked
against the offline network, so a broken kernel turns a stream test red, not only the kernel's own.

Why forcing matters: on CPU in float32 with no gradient, ``ContinualConv3d.step`` takes the
channels-last fast path, which never reaches the kernel dispatcher. ``CLPLAT_KERNELS=triton``
makes that fast path stand aside (``clplat.kernels.triton_forced``), so every partial-layout conv
(X3D's depthwise taps and its stem's temporal conv) goes through ``conv_epilogue_triton``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

# the package re-exports the function under the module's name: fetch the module itself
epilogue_module = importlib.import_module("clplat.kernels.conv_epilogue")
from clplat.streaming import X3DS, convert  # noqa: E402
from clplat.streaming.models.torchvision_video import r2plus1d_18  # noqa: E402
from tests.streaming.stepping import calibrate, step_clip  # noqa: E402


@pytest.fixture()
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Force the Triton kernels (interpreter on CPU) and record each launch's taps shape."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CLPLAT_KERNELS", "triton")
    seen: list[tuple[int, ...]] = []
    real = epilogue_module.conv_epilogue_triton

    def counting(taps, *args, **kwargs):
        seen.append(tuple(taps.shape))
        return real(taps, *args, **kwargs)

    monkeypatch.setattr(epilogue_module, "conv_epilogue_triton", counting)
    return seen


@pytest.mark.slow  # the interpreter: ~20 s on a busy 2-core box
def test_x3d_stream_through_the_triton_epilogue(launches):
    """Every partial-layout conv runs the kernel once it receives frames; outputs equal the offline net."""
    torch.manual_seed(3)
    net = calibrate(X3DS(5, width=8, depths=(1, 1, 1, 1), head_window=3, causal=True), (1, 3, 6, 16, 16))
    stream = convert(net)
    clip = torch.randn(1, 3, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the grad mode that takes the CPU fast path unless Triton is forced
        ref = net.forward_frames(clip)
        out, emitted = step_clip(stream, clip, grad=False)
    n = out.shape[2]
    assert n >= 4 and emitted == [stream.delay + j for j in range(n)]
    partial = [m for m in stream.modules() if getattr(m, "resolved_layout", lambda: "")() == "partial"]
    assert len(partial) >= 5  # stem temporal conv + one depthwise conv per block
    # the stem's conv on every frame; every partial conv (channels, taps) at least once
    assert len(launches) >= clip.shape[2] + len(partial) - 1
    assert {(c, k) for _, c, k, _ in launches} == {(m.out_channels, m.kernel_size[0]) for m in partial}
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref[:, :, :n], atol=1e-5, rtol=0)


@pytest.mark.slow  # r2plus1d_18's delay is 54 frames: ~1-3 min in the interpreter
def test_r2plus1d_stream_through_the_triton_epilogue(launches):
    """A torchvision network (temporal (3,1,1) convs, strided ring layers beside partial ones)."""
    torch.manual_seed(5)
    model = r2plus1d_18(4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
    model.eval()
    stream = convert(model, temporal_window=2)
    clip = torch.randn(1, 3, 62, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out, emitted = step_clip(stream, clip, grad=False)
        x = clip
        for part in (model.stem, model.layer1, model.layer2, model.layer3, model.layer4):
            x = part(x)
        s = x.mean(dim=(3, 4))
        count = torch.arange(1, s.shape[-1] + 1, dtype=s.dtype).clamp(max=2)
        pooled = torch.nn.functional.pad(s, (1, 0)).unfold(-1, 2, 1).sum(-1) / count
        ref = model.fc(pooled.transpose(1, 2)).transpose(1, 2)
    n = out.shape[2]
    assert n >= 1 and emitted[0] == stream.delay
    assert launches, "no Triton launch in the stream"
    torch.testing.assert_close(out.reshape(1, 4, n), ref[:, :, :n], atol=1e-4, rtol=0)
