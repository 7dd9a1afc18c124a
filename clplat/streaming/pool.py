"""Temporal pooling: windowed avg/max pools and the causal global pool of classifier heads.

Pooling is separable, so each frame is pooled spatially once when it arrives and only the small
pooled maps are kept in a ring of ``k-1`` frames; the temporal reduction runs over that ring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clplat.streaming.module import State, StreamModule, TemporalKernelModule, new_counter, should_emit, tick

__all__ = ["TemporalPool3d", "WindowAvgPool"]


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class TemporalPool3d(TemporalKernelModule):
    """``nn.AvgPool3d`` / ``nn.MaxPool3d`` semantics with a temporal kernel ``kt``.

    Left temporal padding is the initial fill (zeros for avg, -inf for max); with
    ``count_include_pad=False`` the average divides by the number of real frames in the window.
    """

    def __init__(
        self,
        mode: str,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] | None = None,
        padding: int | tuple[int, int, int] = 0,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        self.mode = mode
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride if stride is not None else kernel_size)
        self.padding = _triple(padding)
        self.count_include_pad = count_include_pad

    @property
    def left_pad(self) -> int:
        return self.padding[0]

    def forward(self, clip: Tensor) -> Tensor:
        if self.mode == "max":
            return F.max_pool3d(clip, self.kernel_size, self.stride, self.padding)
        return F.avg_pool3d(clip, self.kernel_size, self.stride, self.padding, False, self.count_include_pad)

    def _pool2d(self, frame: Tensor) -> Tensor:
        k, s, p = self.kernel_size[1:], self.stride[1:], self.padding[1:]
        if self.mode == "max":
            return F.max_pool2d(frame, k, s, p)
        return F.avg_pool2d(frame, k, s, p, False, self.count_include_pad)

    def example_output(self, frame: Tensor) -> Tensor:
        return self._pool2d(frame)

    def init_state(self, frame: Tensor) -> State:
        pooled = self._pool2d(frame)
        fill = float("-inf") if self.mode == "max" else 0.0
        ring = pooled.new_full((pooled.shape[0], self.kernel_size[0] - 1, *pooled.shape[1:]), fill)
        return (ring, new_counter())

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        ring, count = state
        k = self.kernel_size[0]
        window = torch.cat([ring, self._pool2d(frame).unsqueeze(1)], dim=1)
        out = None
        if should_emit(count, self.delay, self.temporal_stride):
            if self.mode == "max":
                out = window.amax(dim=1)
            else:
                real = k if self.count_include_pad else min(k, int(count) + 1)
                out = window.sum(dim=1) / real
        return out, (window[:, 1:], tick(count, max(self.delay, k - 1), self.temporal_stride))


class WindowAvgPool(StreamModule):
    """Global spatial average, then a causal average over the last ``window`` frames.

    ``(B, C, T, H, W) -> (B, C, T, 1, 1)``; output ``t`` averages positions
    ``max(0, t-window+1) .. t``, dividing by the number of real positions; ``window=None``
    averages every position so far (a running mean). Delay 0: one output per frame. This is the
    streaming reading of a classifier's global pool: at the last frame of a causal clip,
    ``window=None`` equals the offline global average.
    """

    def __init__(self, window: int | None = None) -> None:
        super().__init__()
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window

    @property
    def receptive_field(self) -> int | None:
        return self.window

    def forward(self, clip: Tensor) -> Tensor:
        s = clip.mean(dim=(3, 4))
        if self.window is None:
            total = s.cumsum(dim=-1)
            count = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=s.dtype)
        else:
            w = self.window
            # an explicit windowed sum (no cumsum differences, so no cancellation error)
            total = torch.stack([s[..., max(0, t - w + 1) : t + 1].sum(-1) for t in range(s.shape[-1])], -1)
            count = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=s.dtype).clamp(max=w)
        return (total / count)[..., None, None]

    def example_output(self, frame: Tensor) -> Tensor:
        return frame.mean(dim=(2, 3), keepdim=True)

    def init_state(self, frame: Tensor) -> State:
        b, c = frame.shape[:2]
        if self.window is None:
            return (frame.new_zeros(b, c), new_counter())
        return (frame.new_zeros(b, c, self.window - 1), new_counter())

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        buf, count = state
        pooled = frame.mean(dim=(2, 3))
        if self.window == 1:  # per-frame squeeze (X3D's SE): no ring, no counter update
            return pooled[..., None, None], state
        n = int(count) + 1
        if self.window is None:
            total = buf + pooled
            return (total / n)[..., None, None], (total, count + 1)
        window = torch.cat([buf, pooled.unsqueeze(-1)], dim=-1)
        out = window.sum(-1) / min(n, self.window)
        next_count = count if n > self.window else count + 1
        return out[..., None, None], (window[..., 1:], next_count)
