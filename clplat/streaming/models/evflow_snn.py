"""EfficientSpike-FlowNet (Ponghiran et al., ICCV 2023; spec ``streaming.md`` §4): the event-flow
U-Net with Conv+BN+LIF blocks.

Each block's input op (3x3 stride-2 conv, or 4x4 stride-2 transposed conv in the decoder) and
BatchNorm give the current ``I_t``; a leaky integrate-and-fire neuron per channel and pixel turns it
into binary spikes (``clplat.kernels.lif_step``: one Triton pass on CUDA)::

    v_t = leak·v_{t-1}·(1 - z_{t-1}) + I_t       (hard reset; z detached in the reset)
    z_t = Θ(v_t - θ)                             (arctan surrogate gradient, α = 10)

``leak = sigmoid(p)`` per channel with ``p`` initialised to 0 (leak 0.5, τ = 2); ``θ`` per channel
is learnable, initialised from N(0, 1) and clamped at >= 0.01 where used. The flow heads read the
decoders' spikes and produce analog flow. No residual blocks (the spiking net has none).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clplat.kernels.lif_step import lif_step
from clplat.streaming.models.evflow_common import (
    EVFLOW_MODELS,
    EventFlowConfig,
    FlowUNet,
    RecurrentLayer,
    frames,
    input_op,
)
from clplat.streaming.module import State

__all__ = ["LIFBlock", "SpikeFlowConfig", "SpikeFlowNet"]

THETA_MIN = 0.01


class LIFBlock(RecurrentLayer):
    """Input op + BN + LIF neurons. State ``(v,)``: the membrane after the last step's reset."""

    def __init__(self, cin: int, cout: int, up: bool) -> None:
        super().__init__()
        self.out_channels, self.up = cout, up
        self.input = input_op(cin, cout, up)
        self.norm = nn.BatchNorm2d(cout)
        self.leak_logit = nn.Parameter(torch.zeros(cout))
        self.theta = nn.Parameter(torch.randn(cout))

    def neuron(self) -> tuple[Tensor, Tensor]:
        """Per-channel ``(leak, θ)`` as the update uses them."""
        return torch.sigmoid(self.leak_logit), self.theta.clamp(min=THETA_MIN)

    def init_state(self, x: Tensor) -> State:
        return (x,)

    def sequence(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        current = frames(lambda f: self.norm(self.input(f)), x)  # all frames in one conv
        leak, theta = self.neuron()
        (v,) = state
        outs = []
        for t in range(current.shape[1]):
            z, v = lif_step(current[:, t], v, leak, theta)
            outs.append(z)
        return torch.stack(outs, dim=1), (v,)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        leak, theta = self.neuron()
        z, v = lif_step(self.norm(self.input(x)), state[0], leak, theta)
        return z, (v,)


class SpikeFlowConfig(EventFlowConfig):
    pass


@EVFLOW_MODELS.register("evflow_snn", config=SpikeFlowConfig)
class SpikeFlowNet(FlowUNet):
    """Spiking U-Net; ``width=64`` is the paper's size (about 5 M parameters)."""

    def __init__(self, width: int = 8, downsample: int = 1, flow_scale: float = 4.0) -> None:
        super().__init__(width, downsample, flow_scale, res_blocks=0)

    def make_layer(self, cin: int, cout: int, up: bool) -> RecurrentLayer:
        return LIFBlock(cin, cout, up)
