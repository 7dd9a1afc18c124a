"""CPU fast paths for one continual-conv step, on channels-last ``(B, H, W, C)`` frames.

Why: a per-frame step at batch 1 is a few MFLOPs per layer, so on CPU the cost is per-call
overhead, not arithmetic. Measured on the X3D-S shapes (1 thread, 112 px), PyTorch's grouped
``conv2d`` for the depthwise (3,3,3) taps costs 170-350 µs per call (oneDNN), against 60-290 µs
for the shifted multiply-adds below, whose inner loop runs over ``k*C`` contiguous floats; and
the 1x1x1 convs are plain GEMMs on ``(H*W, C)``. Nothing here is autograd-specific; callers
use it for inference (``clplat.streaming.conv`` picks it on CPU when no gradient is needed).

The partial-sum register (spec §1.3, layout B) is kept as ``(B, H'*W', k, C)``: slot ``m`` of
the buffer built for frame ``t`` holds the sum that output ``t+m`` has so far, so slot 0 is this
frame's output and slots ``1..k-1`` are the next state, with no shifting or flipping.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from clplat.kernels._backend import is_tracing

__all__ = [
    "activate_",
    "conv2d_taps",
    "depthwise_taps",
    "finish_partial",
    "hwc",
    "nchw",
    "pointwise",
]


def hwc(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` in any memory format -> contiguous ``(B, H, W, C)`` (free for channels_last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def nchw(y: Tensor) -> Tensor:
    """``(B, H, W, C)`` -> the logical ``(B, C, H, W)`` view (channels_last memory)."""
    return y.permute(0, 3, 1, 2)


def activate_(y: Tensor, activation: str) -> Tensor:
    """In-place activation on a tensor the caller owns (saves one allocation per layer)."""
    if activation == "relu":
        return y.relu_()
    if activation == "silu":
        return F.silu(y, inplace=True)
    return y


def pointwise(x: Tensor, wt: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> Tensor:
    """1x1 conv as one GEMM: ``x (B, H, W, Cin)``, ``wt (Cin, Cout)`` -> ``(B, H', W', Cout)``."""
    if stride != (1, 1):
        x = x[:, :: stride[0], :: stride[1]]
    b, h, w, c = x.shape
    x2 = x.reshape(b * h * w, c)
    y = torch.mm(x2, wt) if bias is None else torch.addmm(bias, x2, wt)
    return y.view(b, h, w, -1)


def _valid_range(size: int, out: int, k: int, s: int, p: int, d: int) -> list[tuple[int, int]]:
    """Per kernel offset: the output rows ``[lo, hi)`` whose input row lies inside the frame."""
    ranges = []
    for j in range(k):
        shift = j * d - p  # input row = o*s + shift
        lo = 0
        while lo < out and lo * s + shift < 0:
            lo += 1
        hi = min(out, (size - 1 - shift) // s + 1) if size - 1 - shift >= 0 else 0
        ranges.append((lo, max(lo, hi)))
    return ranges


Window = tuple[int, tuple[int, ...], tuple[int, ...], int, tuple[int, ...], int]


@functools.lru_cache(maxsize=256)
def _depthwise_plan(
    b: int, h: int, w: int, c: int, k: int, kernel: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int], dilation: tuple[int, int],
) -> tuple[int, int, int, list[Window]]:
    """``(H', W', first, windows)`` for ``depthwise_taps``; ``first`` is an offset covering every
    output (-1: none). Each window is ``(offset, x size, x strides, x offset, buf strides, buf
    offset)`` for ``as_strided``. Pure integers, so it is cached per shape."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows, cols = _valid_range(h, ho, kh, sh, ph, dh), _valid_range(w, wo, kw, sw, pw, dw)
    xstr = (h * w * c, sh * w * c, sw * c, c, 1)
    bstr = (ho * wo * k * c, wo * k * c, k * c, c, 1)
    first, windows = -1, []
    for i in range(kh * kw):
        (r0, r1), (c0, c1) = rows[i // kw], cols[i % kw]
        if r0 >= r1 or c0 >= c1:
            continue
        iy, ix = r0 * sh + i // kw * dh - ph, c0 * sw + i % kw * dw - pw
        win = (i, (b, r1 - r0, c1 - c0, 1, c), xstr, (iy * w + ix) * c, bstr, (r0 * wo + c0) * k * c)
        if first < 0 and (r0, r1, c0, c1) == (0, ho, 0, wo):
            first = i
            windows.insert(0, win)
        else:
            windows.append(win)
    return ho, wo, first, windows


def depthwise_taps(
    x: Tensor,
    weight: Tensor | list[Tensor],
    acc: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Depthwise conv of one frame for every temporal tap, added onto the partial sums.

    ``x (B, H, W, C)``; ``weight (kh*kw, k, C)`` (or its rows as a list) with slot ``m`` holding
    temporal tap ``k-1-m``; ``acc (B, H'*W', k-1, C)`` (or None for zeros). Returns the buffer
    ``(B, H'*W', k, C)``. One multiply-add per spatial offset over all ``k`` taps and all
    channels at once, each on the output rectangle whose inputs lie inside the frame: zero
    padding is never materialised (``F.pad`` was ~15 % of this function), and every window is
    one ``as_strided`` view from a plan cached per shape.
    """
    if is_tracing():
        return _taps_out_of_place(x, weight, acc, (kernel, stride, padding, dilation))
    x = x.contiguous()
    b, h, w, c = x.shape
    k = weight[0].shape[0]
    ho, wo, first, windows = _depthwise_plan(b, h, w, c, k, kernel, stride, padding, dilation)
    xo, bo = x.storage_offset(), 0
    if first >= 0:  # start from an offset that covers every output: a plain multiply, no zero fill
        i, size, xstr, xoff, _, _ = windows[0]
        buf = torch.mul(x.as_strided(size, xstr, xo + xoff), weight[i], out=x.new_empty(b, ho, wo, k, c))
        windows = windows[1:]
    else:
        buf = x.new_zeros(b, ho, wo, k, c)
    if acc is not None:
        buf.view(b, ho * wo, k, c)[:, :, :-1].add_(acc)
    for i, size, xstr, xoff, bstr, boff in windows:
        out = buf.as_strided((*size[:3], k, c), bstr, bo + boff)
        out.addcmul_(x.as_strided(size, xstr, xo + xoff), weight[i])
    return buf.view(b, ho * wo, k, c)


def _taps_out_of_place(
    x: Tensor, weight: Tensor | list[Tensor], acc: Tensor | None, spatial: tuple[tuple[int, int], ...]
) -> Tensor:
    """``depthwise_taps`` as out-of-place element-wise ops (pad, strided slices, multiply-adds).

    Why: while a step is recorded for a compiler (``clplat.kernels.tracing``), Inductor fuses this
    whole expression, partial sums included, into one loop nest, whereas the in-place
    ``as_strided`` updates would be traced as scatters. Eager, it is slower.
    """
    kernel, stride, padding, dilation = spatial
    b, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (0, 0, pw, pw, ph, ph)).unsqueeze(3)  # (B, H+2ph, W+2pw, 1, C)
    buf = None
    for i in range(kh * kw):
        dy, dx = i // kw * dh, i % kw * dw
        win = xp[:, dy : dy + (ho - 1) * sh + 1 : sh, dx : dx + (wo - 1) * sw + 1 : sw]
        term = win * weight[i]
        buf = term if buf is None else buf + term
    assert buf is not None
    buf = buf.reshape(b, ho * wo, -1, c)
    if acc is not None:
        buf = buf + F.pad(acc, (0, 0, 0, 1))
    return buf.contiguous()  # a broadcast product may come out in another layout at batch > 1


def conv2d_taps(x: Tensor, weight: Tensor, acc: Tensor | None, k: int, groups: int = 1, **conv: object) -> Tensor:
    """Taps from one ``conv2d`` (oneDNN), added onto the partial sums. Returns ``(B, H'W', k, Cout)``.

    ``groups == 1``: ``weight (k*Cout, Cin, kh, kw)`` with rows slot-major (``m*Cout + o``).
    Depthwise (``groups == Cout``): rows ``o*k + m`` (a group's rows must be adjacent), so the
    taps are transposed to slot-major on the way into the buffer.
    """
    taps = F.conv2d(nchw(x), weight, None, groups=groups, **conv)  # type: ignore[arg-type]
    b, kc, ho, wo = taps.shape
    if groups == 1:
        buf = hwc(taps).view(b, ho * wo, k, kc // k)
    else:
        buf = hwc(taps).view(b, ho * wo, kc // k, k).transpose(2, 3).contiguous()
    if acc is not None:
        buf[:, :, :-1].add_(acc)
    return buf


def finish_partial(buf: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """Split a partial buffer ``(B, N, k, C)`` into this frame's output ``(B, N, C)`` (bias and
    activation applied) and the next state ``(B, N, k-1, C)`` (a view of ``buf``)."""
    y = buf[:, :, 0]
    y = y + bias if bias is not None else y.contiguous()
    return activate_(y, activation), buf[:, :, 1:]
