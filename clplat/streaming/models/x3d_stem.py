"""The streaming X3D stem's CPU inference step in C++ (used by ``clplat.streaming.models.x3d``'s
converter, which makes every converted ``X3DS`` stem an ``X3DStemStream``)."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from clplat.kernels import triton_forced, x3d_block_cpu
from clplat.streaming.containers import StreamSequential
from clplat.streaming.conv import ContinualConv3d
from clplat.streaming.module import State, StreamModule, tick

__all__ = ["X3DStemStream"]


class X3DStemStream(StreamSequential):
    """The streaming X3D stem (spatial conv, then the depthwise temporal conv): a
    ``StreamSequential`` whose two convs run as one C++ call each on float32 CPU inference.

    Why: the 3-channel 3x3 conv (27 products per output) runs far below peak in oneDNN, and its
    NCHW output is then copied channels-last; ``x3d_block_cpu.conv_small`` computes it directly
    into channels-last memory. At 112 px the temporal (5,1,1) conv's Python fast path makes a
    5-slot buffer by a multiply, adds the partial sums, then adds the bias and applies the
    activation to slot 0: three passes over ~1.5 MB; ``x3d_block_cpu.taps_step`` (the block
    step's depthwise code) does it in one. State and outputs are the generic ones (same tree,
    same partial-sum layout), so either path continues the other's state. Off with
    ``X3DBlockStream.cpp_step``'s switch (``CLPLAT_X3D_CPP=0``; settable per stem as ``cpp_step``).
    """

    cpp_step: bool = os.environ.get("CLPLAT_X3D_CPP", "1") != "0"

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        mods = self._mods()
        if not (self.cpp_step and len(mods) == 2 and frame.device.type == "cpu" and frame.dtype == torch.float32
                and not torch.is_grad_enabled() and not triton_forced()):
            return super()._step(frame, state)
        spatial, temporal = mods
        acc_count = state[1]
        if not (_taps_eligible(temporal) and x3d_block_cpu.available()) or (
            int(acc_count[1]) == 0 and temporal.temporal_fill == "replicate"
        ):
            return super()._step(frame, state)
        if _small_conv_eligible(spatial):
            y, s0 = x3d_block_cpu.conv_small(frame, spatial._step_weight("hwio"), spatial._parameters["bias"],
                                             x3d_block_cpu.ACTIVATIONS[spatial.activation],
                                             _spatial_spec(spatial)), state[0]
        else:
            y, s0 = spatial._step(frame, state[0])
            if y is None:
                return None, (s0, acc_count)
        acc, count = acc_count
        w = temporal._step_weight("dw_partial")
        out, acc = x3d_block_cpu.taps_step(y, acc, w, temporal._parameters["bias"],
                                           x3d_block_cpu.ACTIVATIONS[temporal.activation], _spatial_spec(temporal),
                                           int(count) >= temporal.delay)
        return out, (s0, (acc, tick(count, temporal.delay, 1)))


def _spatial_spec(c: ContinualConv3d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return tuple(c.kernel_size[1:]), tuple(c.stride[1:]), tuple(c.padding[1:])  # type: ignore[return-value]


def _small_conv_eligible(c: StreamModule) -> bool:
    """A float32 stateless conv with few inputs per output (kh*kw*Cin <= 64, Cout <= 32, groups 1,
    no dilation, temporal stride 1): ``x3d_block_cpu.conv_small``'s case (the stem's spatial conv)."""
    return (
        isinstance(c, ContinualConv3d) and c.resolved_layout() == "stateless" and c.temporal_stride == 1
        and c.groups == 1 and c.dilation[1:] == (1, 1) and c.out_channels <= 32
        and c.in_channels * c.kernel_size[1] * c.kernel_size[2] <= 64 and c.activation in x3d_block_cpu.ACTIVATIONS
        and c.weight.dtype == torch.float32 and (c.bias is None or c.bias.dtype == torch.float32)
    )


def _taps_eligible(c: StreamModule) -> bool:
    """A float32 depthwise partial-sum conv that ``x3d_block_cpu.taps_step`` computes (2-5
    temporal taps, temporal stride 1, no dilation, activation identity/relu/silu)."""
    return (
        isinstance(c, ContinualConv3d) and c.groups == c.in_channels == c.out_channels
        and 2 <= c.kernel_size[0] <= 5 and c.stride[0] == 1 and c.dilation[1:] == (1, 1)
        and c.resolved_layout() == "partial" and c.activation in x3d_block_cpu.ACTIVATIONS
        and c.weight.dtype == torch.float32 and (c.bias is None or c.bias.dtype == torch.float32)
    )
