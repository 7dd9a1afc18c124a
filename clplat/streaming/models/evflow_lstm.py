"""LSTM-FlowNet (Ponghiran et al., ICCV 2023; spec ``streaming.md`` §4): the event-flow U-Net with
a ConvLSTM at every encoder and decoder block.

Each block's input op (3x3 stride-2 conv, or 4x4 stride-2 transposed conv in the decoder) makes the
four gates, each normalised by BatchNorm; a 3x3 recurrent conv on ``h`` (orthogonal init, no bias)
adds to them; the pointwise update is ``clplat.kernels.convlstm_step`` (one Triton pass on CUDA)::

    i, f, g, o = BN(W_x ⋆ x_t) + W_h ⋆ h_{t-1}
    c_t = σ(f)·c_{t-1} + σ(i)·tanh(g),   h_t = σ(o)·tanh(c_t)

Gate order is clplat's ConvLSTM (PyTorch's) order, not the paper's f, i, o, c; the forget gate's BN
shift starts at 1. The bottleneck's residual blocks are frame-local (not recurrent), as in the paper.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from clplat.kernels.convlstm_step import convlstm_step
from clplat.streaming.models.evflow_common import (
    EVFLOW_MODELS,
    EventFlowConfig,
    FlowUNet,
    RecurrentLayer,
    frames,
    input_op,
)
from clplat.streaming.module import State

__all__ = ["ConvLSTMBlock", "LSTMFlowConfig", "LSTMFlowNet"]


class ConvLSTMBlock(RecurrentLayer):
    """Input op + BN on the gates, a 3x3 recurrent conv, the fused gate update. State ``(h, c)``."""

    def __init__(self, cin: int, hidden: int, up: bool) -> None:
        super().__init__()
        self.out_channels, self.up = hidden, up
        self.input = input_op(cin, 4 * hidden, up)
        self.norm = nn.BatchNorm2d(4 * hidden)
        self.recurrent = nn.Conv2d(hidden, 4 * hidden, 3, 1, 1, bias=False)
        nn.init.orthogonal_(self.recurrent.weight.view(4 * hidden, -1))
        with torch.no_grad():
            self.norm.bias[hidden : 2 * hidden] = 1.0

    def init_state(self, x: Tensor) -> State:
        return (x, x.clone())  # zeros shaped like the output

    def sequence(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        gates = frames(lambda f: self.norm(self.input(f)), x)  # all frames in one conv
        h, c = state
        outs = []
        for t in range(gates.shape[1]):
            h, c = convlstm_step(gates[:, t], self.recurrent(h), c)
            outs.append(h)
        return torch.stack(outs, dim=1), (h, c)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        h, c = convlstm_step(self.norm(self.input(x)), self.recurrent(h), c)
        return h, (h, c)


class LSTMFlowConfig(EventFlowConfig):
    res_blocks: int = Field(2, ge=0, description="frame-local residual blocks at the bottleneck (paper: 2)")


@EVFLOW_MODELS.register("evflow_lstm", config=LSTMFlowConfig)
class LSTMFlowNet(FlowUNet):
    """ConvLSTM U-Net; ``width=64, res_blocks=2`` is the paper's size (about 54 M parameters)."""

    def __init__(self, width: int = 8, downsample: int = 1, flow_scale: float = 4.0, res_blocks: int = 2) -> None:
        super().__init__(width, downsample, flow_scale, res_blocks)

    def make_layer(self, cin: int, cout: int, up: bool) -> RecurrentLayer:
        return ConvLSTMBlock(cin, cout, up)
