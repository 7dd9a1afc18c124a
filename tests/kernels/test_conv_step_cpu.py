"""CPU channels-last step kernels against ``F.conv2d`` (the partial-sum buffer layout included)."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F

from clplat.kernels import tracing
from clplat.kernels.conv_step_cpu import conv2d_taps, depthwise_taps, finish_partial, hwc, pointwise

ATOL = 1e-5


def _slots(taps: torch.Tensor, c: int, k: int) -> torch.Tensor:
    """conv2d output with rows ``c*k + j`` (tap j) -> buffer ``(B, H'W', k, C)``, slot m = tap k-1-m."""
    b, _, ho, wo = taps.shape
    return taps.view(b, c, k, ho * wo).permute(0, 3, 2, 1).flip(2)


GRID = [
    g
    for g in itertools.product([1, 7], [5, 8], [1, 3], [3], [1, 2, 3], [0, 1, 2], [1, 2], [2])
    if g[0] + 2 * g[5] - g[6] * (g[2] - 1) >= 1 and g[1] + 2 * g[5] - g[6] * (g[3] - 1) >= 1
]


@pytest.mark.parametrize("traced", [False, True], ids=["in-place", "out-of-place"])
@pytest.mark.parametrize("h,w,kh,kw,s,p,d,b", GRID)
def test_depthwise_taps_match_grouped_conv2d(h, w, kh, kw, s, p, d, b, traced):
    """Both forms: the in-place eager kernel and the out-of-place one recorded for compilation."""
    torch.manual_seed(h * 100 + w)
    c, k = 5, 3
    x = torch.randn(b, c, h, w)
    weight = torch.randn(c, k, kh, kw)  # tap j of channel c
    ref = _slots(F.conv2d(x, weight.reshape(c * k, 1, kh, kw), None, s, p, d, c), c, k).clone()
    # batch 2 matters: a broadcast multiply may pick a non-contiguous output layout there
    acc = torch.randn(b, ref.shape[1], k - 1, c)
    ref[:, :, :-1] += acc
    w2 = weight.flip(1).permute(2, 3, 1, 0).reshape(kh * kw, k, c)
    with tracing() if traced else contextlib.nullcontext():
        got = depthwise_taps(hwc(x), w2, acc, (kh, kw), (s, s), (p, p), (d, d))
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert got.is_contiguous()


def test_depthwise_taps_without_acc_and_with_a_row_list():
    x = torch.randn(2, 4, 6, 6)
    w2 = torch.randn(9, 2, 4)
    a = depthwise_taps(hwc(x), w2, None, (3, 3), (2, 2), (1, 1), (1, 1))
    b = depthwise_taps(hwc(x), list(w2.unbind(0)), None, (3, 3), (2, 2), (1, 1), (1, 1))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_is_a_1x1_conv(stride, bias):
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 6, 1, 1)
    b = torch.randn(4) if bias else None
    ref = F.conv2d(x, w, b, stride)
    got = pointwise(hwc(x), w[:, :, 0, 0].t().contiguous(), b, stride)
    torch.testing.assert_close(got.permute(0, 3, 1, 2), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("groups", [1, 3])
def test_conv2d_taps_layouts(groups):
    c, k, cin = 3, 2, 3 if groups == 3 else 4
    x = torch.randn(2, cin, 6, 5)
    weight = torch.randn(c, cin // groups, k, 3, 3)
    conv = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 1))
    rows = weight.permute(0, 2, 1, 3, 4).reshape(c * k, cin // groups, 3, 3)  # row o*k + j
    ref = _slots(F.conv2d(x, rows, None, groups=groups, **conv), c, k).clone()
    acc = torch.randn(*ref.shape[:2], k - 1, c)
    ref[:, :, :-1] += acc
    if groups == 1:  # slot-major rows m*C + o
        w2 = weight.flip(2).permute(2, 0, 1, 3, 4).reshape(k * c, cin, 3, 3)
    else:  # channel-major rows o*k + m
        w2 = weight.flip(2).reshape(c * k, 1, 3, 3)
    got = conv2d_taps(hwc(x), w2, acc, k, groups, **conv)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("activation", ["identity", "relu", "silu"])
def test_finish_partial(activation):
    buf = torch.randn(2, 7, 3, 4)
    bias = torch.randn(4)
    y, nxt = finish_partial(buf, bias, activation)
    ref = buf[:, :, 0] + bias
    ref = {"identity": ref, "relu": F.relu(ref), "silu": F.silu(ref)}[activation]
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)
    assert torch.equal(nxt, buf[:, :, 1:])
    y0, _ = finish_partial(buf, None, "identity")
    assert torch.equal(y0, buf[:, :, 0]) and y0.data_ptr() != buf.data_ptr()  # a copy, not a view
