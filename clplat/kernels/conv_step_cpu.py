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

import torch
import torch.nn.functional as F
from torch import Tensor

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


def depthwise_taps(
    x: Tensor,
    weight: Tensor,
    acc: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Depthwise conv of one frame for every temporal tap, added onto the partial sums.

    ``x (B, H, W, C)``; ``weight (kh*kw, k, C)`` with slot ``m`` holding temporal tap ``k-1-m``;
    ``acc (B, H'*W', k-1, C)`` (or None for zeros). Returns the buffer ``(B, H'*W', k, C)``.
    One multiply-add per spatial offset over all ``k`` taps and all channels at once.
    """
    kh, kw = kernel
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    b, h, w, c = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = F.pad(x, (0, 0, pw, pw, ph, ph)) if (ph or pw) else x.contiguous()
    hp, wp = h + 2 * ph, w + 2 * pw
    # Each spatial offset is one strided view of the padded frame: as_strided is one cheap call,
    # where basic slicing costs ~5 µs of Python per window (it was 1/3 of this function's time).
    size = (b, ho, wo, 1, c)
    strides = (hp * wp * c, sh * wp * c, sw * c, c, 1)
    base = x.storage_offset()
    buf: Tensor | None = None
    for i in range(kh * kw):
        win = x.as_strided(size, strides, base + ((i // kw) * dh * wp + (i % kw) * dw) * c)
        if buf is None:
            buf = win * weight[i]  # (B, H', W', k, C)
            if acc is not None:
                buf.view(b, ho * wo, -1, c)[:, :, :-1].add_(acc)
        else:
            buf.addcmul_(win, weight[i])
    assert buf is not None
    return buf.view(b, ho * wo, -1, c)


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
