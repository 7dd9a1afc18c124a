"""Whole networks: stepping a long clip gives the offline per-position outputs (after the delay).

Clips run 60-150 frames (several periods of the coarsest temporal stride past the delay, running
means and head windows well past full), every emitted output is compared, at tiny resolutions.
Each reference is the offline model itself (plain ``nn`` modules, BatchNorm unfolded):
``X3DS.forward_frames``, ``LRCN.forward_frames``, and for torchvision's video ResNets the
torchvision backbone followed by a causal running mean of the pooled features and ``fc``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clplat.streaming import LRCN, X3DS, StreamModule, convert, x3d_s
from clplat.streaming.models.torchvision_video import mc3_18, r2plus1d_18, r3d_18
from tests.streaming.stepping import assert_steps_match, calibrate, long_clip_frames, one_thread, step_clip

ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _steps(net: StreamModule, clip: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    return step_clip(net, clip, grad=False)


def _check(net: StreamModule, clip: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return assert_steps_match(net, clip, ref, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(causal=True),
        dict(se_window=3, head_window=4),
        dict(causal=True, se_window=2, head_window=3),
    ],
)
def test_x3d_steps_match_offline(kwargs):
    net = calibrate(X3DS(7, width=16, **kwargs), (2, 3, 8, 32, 32))
    clip = torch.randn(2, 3, 64, 32, 32)
    with torch.no_grad():
        ref = net.forward_frames(clip)
    stream = convert(net)
    assert stream.delay == (0 if kwargs.get("causal") else 2 + 6)  # stem conv (5,1,1) + 6 blocks (3,3,3)
    out = _check(stream, clip, ref)
    assert out.shape[2] == 64 - stream.delay
    with torch.no_grad():
        torch.testing.assert_close(stream(clip), ref, atol=ATOL, rtol=0)


def test_causal_x3d_last_step_is_the_clip_classifier():
    """Causal convs + a running-mean head: after T frames the stream says what forward(clip) says."""
    net = calibrate(X3DS(5, width=16, causal=True), (2, 3, 8, 32, 32))
    clip = torch.randn(1, 3, 60, 32, 32)
    out, _ = _steps(convert(net), clip)
    with torch.no_grad():
        for t in (8, 30, 59):  # the running-mean head at t equals the clip classifier on frames 0..t
            torch.testing.assert_close(out[:, :, t], net(clip[:, :, : t + 1]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", ["small", "resnet10t"])
def test_lrcn_steps_match_offline(backbone):
    net = calibrate(LRCN(6, backbone=backbone, hidden_size=32, num_layers=2), (2, 3, 4, 32, 32))
    clip = torch.randn(2, 3, 60, 32, 32)
    with torch.no_grad():
        ref = net.forward_frames(clip)
        torch.testing.assert_close(ref.mean(-1), net(clip), atol=ATOL, rtol=0)
    stream = convert(net)
    assert stream.delay == 0
    _check(stream, clip, ref)


def _video_resnet_reference(model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """torchvision's backbone, then fc on the running mean of the pooled features, per position."""
    with torch.no_grad():
        x = model.stem(clip)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
        feats = x.mean(dim=(3, 4))  # (B, C, T')
        running = feats.cumsum(-1) / torch.arange(1, feats.shape[-1] + 1)
        return model.fc(running.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize(
    "factory,delay,stride",
    [(r3d_18, 54, 8), (mc3_18, 5, 1), (r2plus1d_18, 54, 8)],
)
def test_torchvision_video_resnets_step_like_offline(factory, delay, stride):
    """8x8 px keeps 150 frames cheap; the spatial path is the same at any size (the 16 px clip of
    the state-dict tests covers the non-degenerate maps)."""
    model = calibrate(factory(num_classes=5), (2, 3, 16, 16, 16))
    stream = convert(model)
    assert (stream.delay, stream.temporal_stride) == (delay, stride)
    frames = long_clip_frames(stream, extra_periods=12)  # 150 for the stride-8 nets, 60 for mc3_18
    clip = torch.randn(1, 3, frames, 8, 8)
    _check(stream, clip, _video_resnet_reference(model, clip))


@pytest.mark.parametrize(
    "build",
    [lambda: X3DS(4, width=16, se_window=2), lambda: LRCN(4), lambda: r2plus1d_18(4), lambda: mc3_18(4)],
)
def test_offline_state_dict_loads_unchanged(build):
    offline = build().eval()
    stream = convert(offline, fold_bn=False)
    assert set(stream.state_dict()) == set(offline.state_dict())
    fresh = convert(build().eval(), fold_bn=False)
    fresh.load_state_dict(offline.state_dict())  # strict
    for (name, a), b in zip(fresh.state_dict().items(), stream.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_mode_conversion_keeps_batchnorm_and_grad():
    net = X3DS(3, width=16)
    stream = convert(net)  # train mode: nothing folded, autograd flows through steps
    assert stream.training and any(isinstance(m, nn.BatchNorm3d) for m in stream.modules())
    stream.eval()
    y, _ = stream.forward_steps(torch.randn(1, 3, 10, 32, 32))
    y.sum().backward()
    assert all(p.grad is not None for p in stream.head.fc.parameters())


@pytest.mark.slow
def test_real_size_x3d_s_steps_match_offline():
    net = calibrate(x3d_s(10, dropout=0.0), (1, 3, 4, 64, 64))
    clip = torch.randn(1, 3, 90, 64, 64)
    with torch.no_grad():
        ref = net.forward_frames(clip)
    stream = convert(net)
    assert stream.delay == 2 + 3 + 5 + 11 + 7
    _check(stream, clip, ref)


def test_x3d_blocks_take_the_fused_cpu_step_and_match_the_generic_one():
    from clplat.streaming.models.x3d import X3DBlockStream

    net = calibrate(X3DS(5, width=8, depths=(2, 1, 1, 1)), (1, 3, 4, 32, 32))
    stream = convert(net)
    blocks = [m for m in stream.modules() if isinstance(m, X3DBlockStream)]
    assert len(blocks) == 5 and all(b._fused_parts() is not None for b in blocks)
    assert any(b._fused_parts()[2] is not None for b in blocks)  # with and without SE
    assert any(b._fused_parts()[2] is None for b in blocks)
    clip = torch.randn(2, 3, 60, 32, 32)
    fused = _check(stream, clip, net.forward_frames(clip).detach())  # no_grad: fused step
    generic, _ = stream.forward_steps(clip)  # grad enabled: the generic Residual walk
    torch.testing.assert_close(generic.detach(), fused, atol=ATOL, rtol=0)
