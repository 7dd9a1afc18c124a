"""Continual Conv3d: the offline ``nn.Conv3d`` plus a per-frame step with explicit state.

Per frame the step runs ``k`` 2D convs' worth of work (never the k² padded-3D trick of
continual-inference) in one of two layouts (streaming spec §1.3):

- ``"partial"`` (B): one conv2d with the weight reshaped to ``(k*Cout, Cin/g, kh, kw)`` gives
  all ``k`` taps of the new frame; the fused epilogue (``clplat.kernels.conv_epilogue``) shifts
  the ``k-1`` partial sums, adds the taps, bias and activation. State: ``(B, Cout, k-1, H'*W')``.
- ``"ring"`` (A): the last ``k-1`` input frames; one conv2d over the ``k`` frames stacked on
  channels (weight ``(Cout, k*Cin/g, kh, kw)``). State: ``(B, g, k-1, Cin/g, H, W)``. It only
  convolves on the steps that emit, which pays off with temporal stride.

``"auto"`` picks ring for temporally strided convs, else the smaller state (partial when
``Cout / (sh*sw) <= Cin``).

On CPU, when no gradient is needed, ``step`` takes a channels-last fast path
(``clplat.kernels.conv_step_cpu``): 1x1 convs are one GEMM, depthwise taps are shifted
multiply-adds on small maps (oneDNN's grouped conv on large ones), and the partial sums live
channels-last as ``(B, H'*W', k-1, Cout)``, handed out as a permuted view with the logical
shape above. Autograd, CUDA and half precision take the generic path (conv2d + epilogue
kernel); the two paths accept each other's states.
Temporal padding is ``(left, right)``; only the left part matters to a stream (it is the
initial fill: zeros, or the first frame repeated with ``temporal_fill="replicate"``);
right padding only changes the last offline positions, which a stream never emits.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.kernels import conv_epilogue, is_tracing, triton_forced
from clplat.kernels.conv_step_cpu import (
    activate_,
    conv2d_taps,
    depthwise_taps,
    finish_partial,
    hwc,
    nchw,
    pointwise,
)
from clplat.nn import apply_activation, check_activation
from clplat.streaming.module import State, TemporalKernelModule, new_counter, should_emit, tick

__all__ = ["ContinualConv3d", "apply_activation"]

def _param_key(t: Tensor) -> tuple:
    """Identity of a parameter's values for weight caches. Inference tensors (made under
    ``torch.inference_mode``) have no version counter; they can only change in place inside
    inference mode, which ``load_state_dict`` then does through ``copy_`` on the same storage."""
    version = -1 if t.is_inference() else t._version
    return (t.data_ptr(), version, t.device, t.dtype, t.shape)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _Plan(NamedTuple):
    """What a CPU fast step needs, derived once per frame shape and weight version."""

    key: tuple
    kind: str | None
    weight: Any
    delay: int
    k: int
    stride: int
    out_hw: tuple[int, int]
    spatial: tuple[tuple[int, int], ...]


_SHIFT_MAX_WORK = 9 * 64 * 1024  # multiply-adds; see ContinualConv3d._shift_is_cheaper


class ContinualConv3d(TemporalKernelModule, nn.Conv3d):
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
        check_activation(activation)
        self.temporal_padding = (int(temporal_padding[0]), int(temporal_padding[1]))
        if self.temporal_padding[0] > self.kernel_size[0] - 1:
            raise ValueError("left temporal padding larger than kernel_size[0] - 1 is not streamable")
        self.temporal_fill = temporal_fill
        self.layout = layout
        self.activation = activation
        self._weight_cache: dict[str, tuple[tuple, Tensor]] = {}
        self._plan: _Plan | None = None

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

    # ----- timing (delay / stride / receptive field from TemporalKernelModule) ------------------
    @property
    def left_pad(self) -> int:
        return self.temporal_padding[0]

    def resolved_layout(self) -> str:
        """``"stateless"`` for 1-frame kernels; ``"ring"`` with temporal stride (it convolves only
        on the steps that emit, 1/stride of the work); else the layout with the smaller state."""
        k = self.kernel_size[0]
        if k == 1:
            return "stateless"
        if self.layout != "auto":
            return self.layout
        if self.stride[0] > 1:
            return "ring"
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
        if not torch.is_grad_enabled():
            hit = self._cached(layout)
            if hit is not None:
                return hit
        co, ci, k, kh, kw = w.shape
        if layout == "partial":  # tap j of output channel o sits at row o*k + j
            w2 = w.permute(0, 2, 1, 3, 4).reshape(co * k, ci, kh, kw)
        elif layout == "ring":  # input channel j*ci + c of each group = frame j, channel c
            w2 = w.permute(0, 2, 1, 3, 4).reshape(co, k * ci, kh, kw)
        elif layout == "pointwise":  # (Cin, Cout) for a GEMM on channels-last rows
            w2 = w[:, :, 0, 0, 0].t().contiguous()
        elif layout == "pw_partial":  # column m*Cout + o = tap k-1-m of channel o
            w2 = w[:, :, :, 0, 0].flip(2).permute(1, 2, 0).reshape(ci, k * co).contiguous()
        elif layout == "pw_ring":  # row j*Cin + c = frame j, channel c
            w2 = w[:, :, :, 0, 0].permute(2, 1, 0).reshape(k * ci, co).contiguous()
        elif layout == "dw_partial":  # (kh*kw, k, C), slot m = tap k-1-m
            w2 = w[:, 0].flip(1).permute(2, 3, 1, 0).reshape(kh * kw, k, co).contiguous()
        elif layout == "conv_partial":  # row m*Cout + o = tap k-1-m of channel o (groups=1)
            w2 = w.flip(2).permute(2, 0, 1, 3, 4).reshape(k * co, ci, kh, kw).contiguous()
        elif layout == "dwconv_partial":  # row o*k + m = tap k-1-m of channel o (depthwise)
            w2 = w.flip(2).reshape(co * k, ci, kh, kw).contiguous()
        elif layout == "hwio":  # (kh*kw*Cin, Cout), rows (dy, dx, c): a direct conv's weight (k == 1)
            w2 = w[:, :, 0].permute(2, 3, 1, 0).reshape(kh * kw * ci, co).contiguous()
        else:
            w2 = w[:, :, 0]
        if not torch.is_grad_enabled():
            self._weight_cache[layout] = (_param_key(w), w2)
        return w2

    def _cached(self, layout: str) -> Tensor | None:
        hit = self._weight_cache.get(layout)
        if hit is not None and hit[0] == _param_key(self.weight):
            return hit[1]
        return None

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

    def _fast_kind(self, layout: str, frame: Tensor) -> str | None:
        """Which CPU fast path (``clplat.kernels.conv_step_cpu``) applies, if any."""
        _, kh, kw = self.kernel_size
        one = kh == kw == 1 and self.padding[1:] == (0, 0) and self.groups == 1
        if layout == "stateless":
            return "pointwise" if one else "conv"
        if layout == "partial":
            if self.groups == self.in_channels == self.out_channels:
                return "dw_partial" if self._shift_is_cheaper(frame) else "dwconv_partial"
            if self.groups == 1:
                return "pw_partial" if one else "conv_partial"
            return None
        return "pw_ring" if one else "ring"

    def _shift_is_cheaper(self, frame: Tensor) -> bool:
        """Shifted multiply-adds beat oneDNN's grouped conv (~170-250 µs a call, 1 thread) on small
        maps; past ~64K buffer elements per 3x3 window they turn memory-bound (X3D-S at 112 px:
        28x28x54 shift 450 µs vs conv 220 µs; 7x7x216 91 vs 170; 4x4x432 73 vs 247; the
        stem's (5,1,1) on 56x56x24 is one multiply-add, ~150 µs vs ~900)."""
        if is_tracing():  # compiled, the multiply-adds fuse into one loop at every size
            return True
        k, kh, kw = self.kernel_size
        ho, wo = self._out_hw(frame.shape[2], frame.shape[3])
        return frame.shape[0] * ho * wo * k * self.out_channels * kh * kw <= _SHIFT_MAX_WORK

    def _fast_plan(self, frame: Tensor) -> _Plan | None:
        """The CPU fast-path plan for ``frame``, or None where the generic path must run."""
        params = self._parameters
        w, bias = params["weight"], params["bias"]  # direct dict reads: no nn.Module __getattr__
        if (
            frame.device.type != "cpu"
            or frame.dtype not in (torch.float32, torch.float64)
            or _needs_grad(frame, w, bias)
            or triton_forced()  # CLPLAT_KERNELS=triton: run the kernels, not the fast path
        ):
            return None
        # One cached plan per frame shape and weight version: a step at batch 1 is so small
        # that re-deriving the layout, weights and sizes each call was a visible share of it.
        key = (frame.shape, frame.dtype, self.layout, self.temporal_padding, _param_key(w), is_tracing())
        plan = self._plan
        if plan is None or plan.key != key:
            plan = self._plan = self._make_plan(key, frame)
        return plan if plan.kind is not None else None

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        plan = self._fast_plan(frame)
        if plan is not None:
            return self._step_fast(plan, self._parameters["bias"], frame, state)
        return self._step_generic(self.resolved_layout(), frame, state)

    def step_residual(self, frame: Tensor, skip: Tensor, activation: str) -> Tensor | None:
        """``activation(conv(frame) + skip)`` as one GEMM with ``skip`` as its addend, for a
        stateless 1x1 conv with no activation of its own on the CPU fast path; None otherwise
        (then the caller runs ``step`` and adds). Used by fused residual blocks."""
        plan = self._fast_plan(frame)
        if plan is None or plan.kind != "pointwise" or self.activation != "identity" or plan.stride != 1:
            return None
        x = hwc(frame)
        if plan.spatial[1] != (1, 1):
            x = x[:, :: plan.spatial[1][0], :: plan.spatial[1][1]]
        b, h, w, c = x.shape
        y = torch.addmm(hwc(skip).view(b * h * w, -1), x.reshape(b * h * w, c), plan.weight)
        bias = self._parameters["bias"]
        if bias is not None:
            y.add_(bias)
        return nchw(activate_(y, activation).view(b, h, w, -1))

    def _make_plan(self, key: tuple, frame: Tensor) -> _Plan:
        kind = self._fast_kind(self.resolved_layout(), frame)
        w2: Tensor | list[Tensor] | None = None
        if kind is not None:
            w2 = self._step_weight(kind)
            if kind == "dw_partial":
                w2 = list(w2.unbind(0))  # one row per spatial offset, selected once
        hw = self._out_hw(frame.shape[2], frame.shape[3])
        spatial = (self.kernel_size[1:], self.stride[1:], self.padding[1:], self.dilation[1:])
        return _Plan(key, kind, w2, self.delay, self.kernel_size[0], self.stride[0], hw, spatial)

    def _step_fast(self, plan: _Plan, bias: Tensor | None, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        """Channels-last CPU step (inference only); same outputs and state shapes as the generic one.

        State is stored channels-last and handed out as a permuted view, so its logical shape is
        the documented one and either path can continue a state made by the other.
        """
        kind, w2, k, s, delay = plan.kind, plan.weight, plan.k, plan.stride, plan.delay
        stride2 = plan.spatial[1]
        if kind in ("pointwise", "conv"):
            count = None
            if s != 1:
                (count,) = state
                if not should_emit(count, 0, s):
                    return None, (tick(count, 0, s),)
            if kind == "pointwise":
                y = nchw(activate_(pointwise(hwc(frame), w2, bias, stride2), self.activation))
            else:
                # NCHW input: a channels-last one makes oneDNN reorder the weight on every call
                # (r2plus1d_18: +12-40 MiB peak per step, and no faster on its 3x3 convs)
                y = activate_(self._conv2d(frame.contiguous(), w2, bias), self.activation)
            return y, (() if count is None else (tick(count, 0, s),))
        buf, count = state
        n = int(count)
        emit = n >= delay and (n - delay) % s == 0
        new_count = tick(count, delay, s)
        x = hwc(frame)
        if kind in ("pw_ring", "ring"):
            b, h, w, _ = x.shape
            x = x.view(b, h, w, self.groups, 1, -1)
            ring = buf.permute(0, 4, 5, 1, 2, 3)  # (B, H, W, g, k-1, Cin/g)
            if n == 0 and self.temporal_fill == "replicate":
                ring = x.expand(-1, -1, -1, -1, k - 1, -1)
            window = torch.cat([ring, x], dim=4)
            out = None
            if emit:
                flat = window.view(b, h, w, -1)
                if kind == "pw_ring":
                    y = pointwise(flat, w2, bias, stride2)
                else:
                    y = hwc(self._conv2d(nchw(flat), w2, bias))
                out = nchw(activate_(y, self.activation))
            return out, (window[:, :, :, :, 1:].permute(0, 3, 4, 5, 1, 2), new_count)
        acc = buf.permute(0, 3, 2, 1)  # (B, H'W', k-1, Cout)
        if n == 0 and self.temporal_fill == "replicate":
            acc = None  # every earlier frame equals this one: feed it k-1 times first
            for _ in range(k - 1):
                acc = self._taps(plan, x, acc)[:, :, 1:]
        taps = self._taps(plan, x, acc)
        out = None
        if emit:
            y, _ = finish_partial(taps, bias, self.activation)
            out = nchw(y.view(y.shape[0], *plan.out_hw, -1))
        return out, (taps[:, :, 1:].permute(0, 3, 2, 1), new_count)

    def _taps(self, plan: _Plan, x: Tensor, acc: Tensor | None) -> Tensor:
        """This frame's taps added onto the partial sums: ``(B, H'W', k, Cout)``."""
        kind, w2, k = plan.kind, plan.weight, plan.k
        if kind == "dw_partial":
            return depthwise_taps(x, w2, acc, *plan.spatial)
        _, stride, padding, dilation = plan.spatial
        if kind in ("conv_partial", "dwconv_partial"):
            groups = 1 if kind == "conv_partial" else self.groups
            return conv2d_taps(x, w2, acc, k, groups, stride=stride, padding=padding, dilation=dilation)
        y = pointwise(x, w2, None, stride)
        b, ho, wo, _ = y.shape
        taps = y.view(b, ho * wo, k, -1)
        if acc is not None:
            taps[:, :, :-1].add_(acc)
        return taps

    def _step_generic(self, layout: str, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        k, s = self.kernel_size[0], self.temporal_stride
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
