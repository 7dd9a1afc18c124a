"""Continual Conv3d: the offline ``nn.Conv3d`` plus a per-frame step with explicit state.

Per frame the step runs ``k`` 2D convs' worth of work (never the k² padded-3D trick of
continual-inference) in one of two layouts (streaming spec §1.3):

- ``"partial"`` (B): one conv2d with the weight reshaped to ``(k*Cout, Cin/g, kh, kw)`` gives
  all ``k`` taps of the new frame; the fused epilogue (``clplat.kernels.conv_epilogue``) shifts
  the ``k-1`` partial sums, adds the taps, bias and activation. State: ``(B, Cout, k-1, H'*W')``.
- ``"ring"`` (A): the last ``k-1`` input frames; one conv2d over the ``k`` frames stacked on
  channels (weight ``(Cout, k*Cin/g, kh, kw)``). State: ``(B, g, k-1, Cin/g, H, W)``. It only
  convolves on the steps that emit, which pays off with temporal stride.

``"auto"`` picks the smaller state: partial when ``Cout / (sh*sw) <= Cin``.
Temporal padding is ``(left, right)``; only the left part matters to a stream (it is the
initial fill: zeros, or the first frame repeated with ``temporal_fill="replicate"``);
right padding only changes the last offline positions, which a stream never emits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.kernels import conv_epilogue
from clplat.streaming.module import State, StreamModule, new_counter, should_emit, tick

__all__ = ["ContinualConv3d", "apply_activation"]

_ACTS = ("identity", "relu", "silu")


def apply_activation(x: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "silu":
        return F.silu(x)
    return x


class ContinualConv3d(StreamModule, nn.Conv3d):
    """``nn.Conv3d`` (same parameters and names) with ``step``; see the module docstring.

    ``padding`` is the spatial padding (its temporal entry must be 0); ``temporal_padding`` is
    ``(left, right)`` frames. ``activation`` (identity/relu/silu) is fused into the output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        dilation: int | tuple[int, int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        temporal_padding: tuple[int, int] = (0, 0),
        temporal_fill: str = "zeros",
        layout: str = "auto",
        activation: str = "identity",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Conv3d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            device=device,
            dtype=dtype,
        )
        if self.padding[0] != 0:
            raise ValueError("give temporal padding as temporal_padding=(left, right), not padding[0]")
        if self.dilation[0] != 1:
            raise NotImplementedError("temporal dilation is not supported by continual convs")
        if self.padding_mode != "zeros":
            raise NotImplementedError("only zero spatial padding is supported")
        if temporal_fill not in ("zeros", "replicate"):
            raise ValueError(f"temporal_fill must be 'zeros' or 'replicate', got {temporal_fill!r}")
        if layout not in ("auto", "partial", "ring"):
            raise ValueError(f"layout must be auto, partial or ring, got {layout!r}")
        if activation not in _ACTS:
            raise ValueError(f"activation must be one of {_ACTS}, got {activation!r}")
        self.temporal_padding = (int(temporal_padding[0]), int(temporal_padding[1]))
        if self.temporal_padding[0] > self.kernel_size[0] - 1:
            raise ValueError("left temporal padding larger than kernel_size[0] - 1 is not streamable")
        self.temporal_fill = temporal_fill
        self.layout = layout
        self.activation = activation
        self._weight_cache: tuple[tuple, Tensor] | None = None

    @classmethod
    def from_conv3d(cls, conv: nn.Conv3d, **kwargs) -> ContinualConv3d:
        """Same weights (copied), with ``conv.padding[0]`` turned into symmetric temporal padding."""
        if isinstance(conv.padding, str):
            raise NotImplementedError(f"string padding {conv.padding!r} is not supported; use integers")
        pt = conv.padding[0]
        kwargs.setdefault("temporal_padding", (pt, pt))
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            (0, *conv.padding[1:]),
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **kwargs,
        )
        if conv.padding_mode != "zeros":
            raise NotImplementedError("only zero spatial padding is supported")
        new.load_state_dict(conv.state_dict())
        return new

    # ----- timing ---------------------------------------------------------------------------
    @property
    def delay(self) -> int:
        return self.kernel_size[0] - 1 - self.temporal_padding[0]

    @property
    def temporal_stride(self) -> int:
        return self.stride[0]

    @property
    def receptive_field(self) -> int:
        return self.kernel_size[0]

    def resolved_layout(self) -> str:
        """``"stateless"`` for 1-frame kernels, else the layout with the smaller state."""
        k = self.kernel_size[0]
        if k == 1:
            return "stateless"
        if self.layout != "auto":
            return self.layout
        sh, sw = self.stride[1:]
        return "partial" if self.out_channels <= self.in_channels * sh * sw else "ring"

    # ----- offline ----------------------------------------------------------------------------
    def forward(self, clip: Tensor) -> Tensor:
        left, right = self.temporal_padding
        if left or right:
            if self.temporal_fill == "replicate":
                first = clip[:, :, :1].expand(-1, -1, left, -1, -1)
                last = clip[:, :, -1:].expand(-1, -1, right, -1, -1)
                clip = torch.cat([first, clip, last], dim=2)
            else:
                clip = F.pad(clip, (0, 0, 0, 0, left, right))
        y = F.conv3d(clip, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return apply_activation(y, self.activation)

    # ----- streaming ------------------------------------------------------------------------
    def _conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride[1:], self.padding[1:], self.dilation[1:], self.groups)

    def _step_weight(self, layout: str) -> Tensor:
        """The 2D weight for ``layout``; cached while the parameter is unchanged and grad is off."""
        w = self.weight
        key = (layout, w.data_ptr(), w._version, w.device, w.dtype)
        if not torch.is_grad_enabled() and self._weight_cache is not None and self._weight_cache[0] == key:
            return self._weight_cache[1]
        co, ci, k, kh, kw = w.shape
        if layout == "partial":  # tap j of output channel o sits at row o*k + j
            w2 = w.permute(0, 2, 1, 3, 4).reshape(co * k, ci, kh, kw)
        elif layout == "ring":  # input channel j*ci + c of each group = frame j, channel c
            w2 = w.permute(0, 2, 1, 3, 4).reshape(co, k * ci, kh, kw)
        else:
            w2 = w[:, :, 0]
        if not torch.is_grad_enabled():
            self._weight_cache = (key, w2)
        return w2

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        out = []
        for size, i in ((h, 1), (w, 2)):
            k, s, p, d = self.kernel_size[i], self.stride[i], self.padding[i], self.dilation[i]
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def init_state(self, frame: Tensor) -> State:
        layout, k = self.resolved_layout(), self.kernel_size[0]
        b, _, h, w = frame.shape
        if layout == "stateless":
            return () if self.temporal_stride == 1 else (new_counter(),)
        if layout == "partial":
            ho, wo = self._out_hw(h, w)
            acc = frame.new_zeros(b, self.out_channels, k - 1, ho * wo)
            return (acc, new_counter())
        g = self.groups
        ring = frame.new_zeros(b, g, k - 1, self.in_channels // g, h, w)
        return (ring, new_counter())

    def example_output(self, frame: Tensor) -> Tensor:
        return self._conv2d(frame, self.weight[:, :, 0], self.bias)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        layout, k, s = self.resolved_layout(), self.kernel_size[0], self.temporal_stride
        if layout == "stateless":
            if s == 1:
                return apply_activation(
                    self._conv2d(frame, self._step_weight(layout), self.bias), self.activation
                ), ()
            (count,) = state
            y = None
            if should_emit(count, 0, s):
                y = apply_activation(
                    self._conv2d(frame, self._step_weight(layout), self.bias), self.activation
                )
            return y, (tick(count, 0, s),)
        buf, count = state
        first = int(count) == 0 and self.temporal_fill == "replicate"
        emit = should_emit(count, self.delay, s)
        if layout == "partial":
            b = frame.shape[0]
            taps = self._conv2d(frame, self._step_weight(layout), None)
            ho, wo = taps.shape[-2:]
            taps = taps.reshape(b, self.out_channels, k, ho * wo)
            if first:  # every earlier frame equals this one: partial j = sum of taps 0..k-2-j
                buf = taps[:, :, : k - 1].cumsum(2).flip(2).to(buf.dtype)
            y, buf = conv_epilogue(taps, buf, self.bias, self.activation)
            out = y.reshape(b, self.out_channels, ho, wo) if emit else None
            return out, (buf, tick(count, self.delay, s))
        b, _, h, w = frame.shape
        g = self.groups
        x = frame.reshape(b, g, 1, self.in_channels // g, h, w)
        if first:
            buf = x.expand(-1, -1, k - 1, -1, -1, -1)
        window = torch.cat([buf, x], dim=2)
        out = None
        if emit:
            y = self._conv2d(window.reshape(b, -1, h, w), self._step_weight(layout), self.bias)
            out = apply_activation(y, self.activation)
        return out, (window[:, :, 1:], tick(count, self.delay, s))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", temporal_padding={self.temporal_padding}, temporal_fill={self.temporal_fill!r}"
            + f", layout={self.resolved_layout()!r}, activation={self.activation!r}"
        )
