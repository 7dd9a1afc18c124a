"""Next-frame prediction with a ConvS5 (or ConvLSTM) stack between a frame encoder and decoder.

Spec ``streaming.md`` §2: a residual CNN encodes each frame to a latent grid (``/4`` per side),
a stack of recurrent layers runs over time on that grid, and a decoder maps each layer-stack
output back to the logits of the *next* frame. Each recurrent layer is post-norm::

    y = core(x);   y = y + conv(act(GN(conv(act(GN(y))))));   x = LayerNorm(x + dropout(y))

with ``core`` a :class:`~clplat.streaming.ConvS5` (trained with the parallel scan) or a
:class:`~clplat.streaming.ConvLSTM` (the baseline, same everything else). Generation "observes"
a context clip in one pass (``observe``: outputs and the final state of every layer) and then
"imagines" one frame at a time with ``step``, feeding each predicted frame back in.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.kernels import is_tracing
from clplat.streaming.convlstm import ConvLSTM
from clplat.streaming.module import State, StreamModule
from clplat.streaming.ssm import ConvS5

__all__ = ["FramePredictor", "PredictorLayer", "count_parameters"]

CoreKind = Literal["convs5", "convlstm"]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels at every pixel of ``(N, C, H, W)`` (a frame-local op)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps).movedim(-1, 1)


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResBlock(nn.Module):
    """``x + conv(act(GN(conv(act(GN(x))))))`` on frames; optional stride-2 downsampling shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, stride, 1),
            nn.GroupNorm(_groups(cout), cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, 1, 1),
        )
        self.skip = nn.Identity() if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class PredictorLayer(StreamModule):
    """One post-norm recurrent layer on the latent grid; state = the core's state."""

    def __init__(self, channels: int, core: CoreKind, state_channels: int, kernel_size: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if core == "convs5":
            self.core: ConvS5 | ConvLSTM = ConvS5(channels, state_channels, kernel_size, check_inputs=False)
        elif core == "convlstm":
            self.core = ConvLSTM(channels, channels, kernel_size, check_inputs=False)
        else:
            raise ValueError(f"core must be 'convs5' or 'convlstm', got {core!r}")
        self.block = ResBlock(channels, channels)
        self.drop = nn.Dropout(dropout)
        self.norm = ChannelLayerNorm(channels)

    @property
    def receptive_field(self) -> int | None:
        return None

    def _post(self, x: Tensor, y: Tensor) -> Tensor:
        return self.norm(x + self.drop(self.block(y)))

    def forward_with_state(self, clip: Tensor, state: State = None) -> tuple[Tensor, State]:
        if isinstance(self.core, ConvS5):
            y, state = self.core.forward_scan(clip, state)
        else:
            y, state = self.core.forward_sequence(clip, state)
        b, c, t, h, w = clip.shape
        fold = lambda v: v.movedim(2, 1).reshape(b * t, c, h, w)  # noqa: E731
        out = self._post(fold(clip), fold(y))
        return out.view(b, t, c, h, w).movedim(1, 2), state

    def forward(self, clip: Tensor) -> Tensor:
        return self.forward_with_state(clip)[0]

    def init_state(self, frame: Tensor) -> State:
        return self.core.init_state(frame)

    def example_output(self, frame: Tensor) -> Tensor:
        return frame

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        y, state = self.core.step(frame, state)
        return self._post(frame, y), state


class FramePredictor(StreamModule):
    """Frames ``(B, in_channels, T, H, W)`` in [0, 1] -> logits of the next frames, same shape.

    Output ``t`` predicts frame ``t + 1`` from frames ``0..t``. ``H`` and ``W`` must be divisible
    by 4 (the latent grid is ``H/4 x W/4`` with ``latent`` channels). ``core="convs5"`` uses
    ``state_channels`` (P) per layer; ``core="convlstm"`` ignores it (hidden = ``latent``).
    ``check_inputs``: every call checks its input for nan/inf (a host read, one device sync); a
    stream that validates its frames where they come from sets it False, so its ``step`` has no
    host read and can be compiled or captured in a CUDA graph (shapes are always checked).
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, int] = (16, 32), latent: int = 32,
                 layers: int = 2, core: CoreKind = "convs5", state_channels: int = 32,
                 kernel_size: int = 3, dropout: float = 0.0, check_inputs: bool = True) -> None:
        super().__init__()
        self.in_channels, self.core_kind, self.latent = in_channels, core, latent
        self.check_inputs = check_inputs
        w1, w2 = widths
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, 2, 1), ResBlock(w1, w2, stride=2), ResBlock(w2, latent),
        )
        self.layers = nn.ModuleList(
            PredictorLayer(latent, core, state_channels, kernel_size, dropout) for _ in range(layers)
        )
        self.decoder = nn.Sequential(
            ResBlock(latent, w2), nn.Upsample(scale_factor=2, mode="nearest"), ResBlock(w2, w1),
            nn.GroupNorm(_groups(w1), w1), nn.SiLU(), nn.ConvTranspose2d(w1, in_channels, 4, 2, 1),
        )

    @property
    def receptive_field(self) -> int | None:
        return None

    def _check(self, x: Tensor, dims: int) -> None:
        if x.dim() != dims or x.shape[1] != self.in_channels or x.shape[-1] % 4 or x.shape[-2] % 4:
            want = "(B, C, T, H, W)" if dims == 5 else "(B, C, H, W)"
            raise ValueError(f"FramePredictor expects {want} with C={self.in_channels} and H, W divisible by 4, "
                             f"got shape {tuple(x.shape)}")
        if self.check_inputs and not is_tracing() and not bool(torch.isfinite(x).all()):
            raise ValueError("FramePredictor got non-finite values (nan/inf) in its input")

    def observe(self, clip: Tensor, state: State = None) -> tuple[Tensor, State]:
        """One parallel pass over ``clip``: ``(next-frame logits (B, C, T, H, W), per-layer states)``."""
        self._check(clip, 5)
        b, c, t, h, w = clip.shape
        z = self.encoder(clip.movedim(2, 1).reshape(b * t, c, h, w))
        z = z.view(b, t, *z.shape[1:]).movedim(1, 2)
        states = []
        for i, layer in enumerate(self.layers):
            z, s = layer.forward_with_state(z, None if state is None else state[i])
            states.append(s)
        out = self.decoder(z.movedim(2, 1).flatten(0, 1))
        return out.view(b, t, c, h, w).movedim(1, 2), tuple(states)

    def forward(self, clip: Tensor) -> Tensor:
        return self.observe(clip)[0]

    def init_state(self, frame: Tensor) -> State:
        b, _, h, w = frame.shape
        z = frame.new_zeros(b, self.latent, h // 4, w // 4)
        return tuple(layer.init_state(z) for layer in self.layers)

    def example_output(self, frame: Tensor) -> Tensor:
        return frame

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        self._check(frame, 4)
        z, new = self.encoder(frame), []
        for layer, s in zip(self.layers, state, strict=True):
            z, s = layer.step(z, s)
            new.append(s)
        return self.decoder(z), tuple(new)

    @torch.no_grad()
    def imagine(self, context: Tensor, horizon: int) -> Tensor:
        """Observe ``context`` with the parallel pass, then predict ``horizon`` frames one at a time,
        each fed back as the next input: probabilities ``(B, C, horizon, H, W)``."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        logits, state = self.observe(context)
        frame, frames = torch.sigmoid(logits[:, :, -1]), []
        for _ in range(horizon):
            frames.append(frame)
            if len(frames) == horizon:
                break
            logits, state = self.step(frame, state)
            frame = torch.sigmoid(logits)
        return torch.stack(frames, dim=2)
