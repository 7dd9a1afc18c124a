"""The U-Net shared by the event-flow networks (spec ``streaming.md`` §4), and their registry.

One 10 ms event bin ``(B, 2, H, W)`` (ON/OFF counts) in, one dense flow ``(B, 2, H, W)`` out, per
step. The topology is EV-FlowNet's, with every encoder and decoder block a *recurrent layer*
(ConvLSTM in ``evflow_lstm``, Conv+BN+LIF in ``evflow_snn``)::

    e1..e4 = encoders (3x3, stride 2; widths w, 2w, 4w, 8w)      r = residual blocks(e4)
    d1 = dec1(cat(r, e4))            f1 = head1(d1)                (4x4 transposed, stride 2)
    dk = deck(cat(d_{k-1}, e_{5-k}, f_{k-1}))  fk = headk(dk)      k = 2..4; widths 4w, 2w, w, w/2
    flow = flow_scale * f4 (full resolution; upsampled x ``downsample`` when the input was pooled)

Scalable in width (``width``) and resolution (any H, W: zero-padded to a multiple of
``16·downsample`` and cropped back; ``downsample`` sum-pools the bin first, for CPU-sized nets).

A recurrent layer has two faces: ``sequence`` (its input op on all T frames at once, then the
pointwise recurrence looped over time) and ``step`` (one frame). ``forward_sequence`` runs the
network layer by layer over a whole clip; ``step`` runs it frame by frame; both must agree (tests).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from clplat.registry import Registry, TaggedConfig
from clplat.streaming.module import State, StreamModule

__all__ = ["EVFLOW_MODELS", "EventFlowConfig", "FlowUNet", "RecurrentLayer", "build_evflow"]

EVFLOW_MODELS: Registry[type] = Registry("event-flow model", "clplat.streaming.models")


class EventFlowConfig(TaggedConfig):
    """The ``model`` section of an event-flow config: ``arch`` picks the registered network."""

    tag_field: ClassVar[str] = "arch"

    arch: str = "evflow_lstm"
    width: int = Field(8, ge=2, description="channels of the first encoder (the paper: 64)")
    downsample: int = Field(1, ge=1, description="sum-pool the bin by this factor first (CPU-sized nets)")
    flow_scale: float = Field(4.0, gt=0, description="multiplier of the last head's output (px)")

    @classmethod
    def registry(cls) -> Registry:
        return EVFLOW_MODELS


def build_evflow(cfg: EventFlowConfig) -> FlowUNet:
    """The network a validated model section describes."""
    return EVFLOW_MODELS.get(cfg.arch)(**cfg.model_dump(exclude={"arch"}))


class RecurrentLayer(nn.Module):
    """A stateful block: input op (stride-2 conv or transposed conv) + a pointwise recurrence."""

    out_channels: int
    up: bool  # transposed (x2) rather than strided (/2)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return (2 * h, 2 * w) if self.up else ((h + 1) // 2, (w + 1) // 2)

    def init_state(self, x: Tensor) -> State:
        raise NotImplementedError

    def sequence(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``(B, T, C, H, W)`` -> ``(B, T, C', H', W')`` and the final state."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError


def input_op(cin: int, cout: int, up: bool) -> nn.Module:
    """3x3 stride-2 conv (encoders) or 4x4 stride-2 transposed conv (decoders); no bias (BN follows)."""
    if up:
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return nn.Conv2d(cin, cout, 3, 2, 1, bias=False)


def frames(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a frame-local module to ``(B, C, H, W)`` or, time folded into batch, ``(B, T, C, H, W)``."""
    if x.dim() == 4:
        return module(x)
    b, t = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.view(b, t, *y.shape[1:])


class ResBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))``, frame-local (the bottleneck is not recurrent)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class FlowUNet(StreamModule):
    """Base of the event-flow networks; subclasses say how to build one recurrent layer."""

    ALIGN = 16  # four stride-2 levels

    def __init__(self, width: int = 8, downsample: int = 1, flow_scale: float = 4.0, res_blocks: int = 0) -> None:
        super().__init__()
        if width < 2 or downsample < 1:
            raise ValueError(f"width must be >= 2 and downsample >= 1, got {width}, {downsample}")
        self.width, self.downsample, self.flow_scale = width, downsample, flow_scale
        enc = [width, 2 * width, 4 * width, 8 * width]
        dec = [4 * width, 2 * width, width, max(width // 2, 1)]
        self.encoders = nn.ModuleList(self.make_layer(cin, cout, up=False) for cin, cout in zip([2, *enc], enc))
        self.res = nn.Sequential(*[ResBlock(enc[3]) for _ in range(res_blocks)])
        dec_in = [2 * enc[3], dec[0] + enc[2] + 2, dec[1] + enc[1] + 2, dec[2] + enc[0] + 2]
        self.decoders = nn.ModuleList(self.make_layer(cin, cout, up=True) for cin, cout in zip(dec_in, dec))
        self.heads = nn.ModuleList(nn.Conv2d(c, 2, 1) for c in dec)

    def make_layer(self, cin: int, cout: int, up: bool) -> RecurrentLayer:
        raise NotImplementedError

    @property
    def receptive_field(self) -> int | None:
        return None

    def layers(self) -> list[RecurrentLayer]:
        return [*self.encoders, *self.decoders]

    # --- input / output geometry ------------------------------------------------------------------
    def _prepare(self, x: Tensor) -> Tensor:
        """Sum-pool by ``downsample`` and zero-pad (right, bottom) to a multiple of 16·downsample."""
        if x.shape[-3] != 2:
            raise ValueError(f"an event bin has 2 polarity channels, got shape {tuple(x.shape)}")
        align = self.ALIGN * self.downsample
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % align, 0, -h % align))
        if self.downsample > 1:
            x = frames(lambda f: F.avg_pool2d(f, self.downsample) * self.downsample ** 2, x)
        return x

    def _finish(self, raw: Tensor, h: int, w: int) -> Tensor:
        """Last head's output -> flow in input pixels, cropped to ``(h, w)``."""
        flow = raw * (self.flow_scale * self.downsample)
        if self.downsample > 1:
            flow = frames(lambda f: F.interpolate(f, scale_factor=self.downsample, mode="bilinear",
                                                  align_corners=False), flow)
        return flow[..., :h, :w]

    def init_state(self, frame: Tensor) -> State:
        self._check_bin(frame)
        x = self._prepare(frame)
        b, (h, w), states = x.shape[0], x.shape[-2:], []
        for layer in self.layers():
            h, w = layer.out_size(h, w)
            states.append(layer.init_state(x.new_zeros(b, layer.out_channels, h, w)))
        return tuple(states)

    def example_output(self, frame: Tensor) -> Tensor:
        return frame.new_zeros(frame.shape[0], 2, *frame.shape[-2:])

    # --- the network, over a clip or one frame ---------------------------------------------------
    def _unet(self, x: Tensor, state: State, sequence: bool) -> tuple[Tensor, State]:
        run = (lambda layer, v, s: layer.sequence(v, s)) if sequence else (lambda layer, v, s: layer.step(v, s))
        new, skips, k = [], [], 0
        for layer in self.encoders:
            x, s = run(layer, x, state[k])
            new.append(s)
            skips.append(x)
            k += 1
        d = frames(self.res, x) if len(self.res) else x
        inp = torch.cat([d, x], dim=-3)
        for j, (layer, head) in enumerate(zip(self.decoders, self.heads, strict=True)):
            d, s = run(layer, inp, state[k])
            new.append(s)
            k += 1
            raw = frames(head, d)
            if j < 3:
                inp = torch.cat([d, skips[2 - j], raw], dim=-3)
        return raw, tuple(new)

    def forward_sequence(self, clip: Tensor, state: State = None) -> tuple[Tensor, State]:
        """Bins ``(B, 2, T, H, W)`` -> flows ``(B, 2, T, H, W)`` and the final state, layer by layer."""
        if clip.dim() != 5:
            raise ValueError(f"expected event bins (B, 2, T, H, W), got shape {tuple(clip.shape)}")
        h, w = clip.shape[-2:]
        state = self.init_state(clip[:, :, 0]) if state is None else state
        raw, state = self._unet(self._prepare(clip.movedim(2, 1)), state, sequence=True)
        return self._finish(raw, h, w).movedim(1, 2), state

    def forward(self, clip: Tensor) -> Tensor:
        return self.forward_sequence(clip)[0]

    @staticmethod
    def _check_bin(frame: Tensor) -> None:
        if frame.dim() != 4:
            raise ValueError(f"expected one event bin (B, 2, H, W), got shape {tuple(frame.shape)}")

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        self._check_bin(frame)
        raw, state = self._unet(self._prepare(frame), state, sequence=False)
        return self._finish(raw, *frame.shape[-2:]), state

    def extra_repr(self) -> str:
        return f"width={self.width}, downsample={self.downsample}, flow_scale={self.flow_scale}"
