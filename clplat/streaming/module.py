"""The StreamModule contract: one module, two faces (offline ``forward`` and ``step``).

- ``forward(clip)``: the ordinary offline computation on ``(B, C, T, ...)``; time is dim 2.
- ``step(frame, state=None) -> (output | None, new_state)``: one frame ``(B, C, ...)``.
  ``state=None`` starts a fresh stream. The output is ``None`` while the module warms up
  (the first ``delay`` steps) and on the skipped steps of a temporal stride; otherwise it is
  position ``j`` of ``forward``'s output, emitted at step ``temporal_stride * j + delay``.
- ``init_state(frame)``: the fresh state for frames shaped like ``frame``.
- State is a nested tuple of tensors, never mutated: ``step`` is a pure function of
  ``(frame, state)``, so a state can be saved, restored, reset, or batched across streams
  that are in the same phase. Warm-up / stride counters are 0-dim int64 tensors kept on the
  CPU, so the Python branch on "emit or not" never waits for the GPU.
- ``delay``, ``temporal_stride`` and ``receptive_field`` (``None`` = unbounded, e.g. an LSTM) describe
  the timing, in input frames, as in spec §1.4.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FrameLocal", "State", "StreamModule", "new_counter", "tick", "should_emit"]

State = Any  # nested tuples of Tensors (empty tuple for stateless modules)


def new_counter() -> Tensor:
    """A fresh step counter (host tensor: reading it never synchronises the GPU)."""
    return torch.zeros((), dtype=torch.int64)


def should_emit(count: Tensor, delay: int, stride: int) -> bool:
    """Whether the step numbered ``count`` (0-based, in this module's input frames) emits."""
    n = int(count) - delay
    return n >= 0 and n % stride == 0


def tick(count: Tensor, delay: int, stride: int) -> Tensor:
    """The next counter. Past warm-up it cycles through ``delay+1 .. delay+stride`` (with stride 1
    it saturates: same tensor, no allocation), so a steady stream's counters repeat with the
    stride's period, which lets ``compile_step`` reuse one compiled graph per phase. It stays
    above 0, so ``count == 0`` always means "first frame of the stream"."""
    n = int(count)
    if n > delay and stride == 1:
        return count
    if n >= delay + stride:  # wrap to the same phase, one period earlier
        return count - (stride - 1)
    return count + 1


class StreamModule(nn.Module):
    """Base class; subclasses implement ``forward``, ``init_state``, ``_step`` and ``example_output``."""

    @property
    def delay(self) -> int:
        """Input frames before the first output (``receptive_field - 1 - left padding``)."""
        return 0

    @property
    def temporal_stride(self) -> int:
        """After the delay, one output every ``temporal_stride`` input frames."""
        return 1

    @property
    def receptive_field(self) -> int | None:
        """Input frames one output depends on; ``None`` when unbounded (recurrent state)."""
        return 1

    def init_state(self, frame: Tensor) -> State:
        return ()

    def example_output(self, frame: Tensor) -> Tensor:
        """A tensor shaped like one output frame for ``frame`` (used to size child states)."""
        raise NotImplementedError

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        raise NotImplementedError

    def step(self, frame: Tensor, state: State = None) -> tuple[Tensor | None, State]:
        """Process one frame; ``state=None`` means a fresh stream. Returns ``(output | None, state)``."""
        if state is None:
            state = self.init_state(frame)
        return self._step(frame, state)

    def forward_steps(self, clip: Tensor, state: State = None) -> tuple[Tensor | None, State]:
        """Step through ``clip`` along dim 2; returns the emitted outputs stacked on dim 2 (or None)."""
        outputs = []
        for t in range(clip.shape[2]):
            y, state = self.step(clip[:, :, t], state)
            if y is not None:
                outputs.append(y)
        return (torch.stack(outputs, dim=2) if outputs else None), state


def _fold_time(clip: Tensor) -> tuple[Tensor, int]:
    """``(B, C, T, ...) -> (B*T, C, ...)``."""
    b, t = clip.shape[0], clip.shape[2]
    return clip.movedim(2, 1).reshape(b * t, clip.shape[1], *clip.shape[3:]), b


def _unfold_time(x: Tensor, b: int) -> Tensor:
    """``(B*T, C', ...) -> (B, C', T, ...)``."""
    return x.reshape(b, x.shape[0] // b, *x.shape[1:]).movedim(1, 2)


class TemporalKernelModule(StreamModule):
    """Timing of a layer with a temporal kernel ``kernel_size[0]``, stride ``stride[0]`` and
    ``left_pad`` frames of initial fill (continual convs and temporal pools)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def left_pad(self) -> int:
        raise NotImplementedError

    @property
    def delay(self) -> int:
        return self.kernel_size[0] - 1 - self.left_pad

    @property
    def temporal_stride(self) -> int:
        return self.stride[0]

    @property
    def receptive_field(self) -> int:
        return self.kernel_size[0]


class FrameLocal(StreamModule):
    """A module that sees one frame at a time (activation, norm, dropout, linear, 2D CNN...).

    ``fold=True``: the module takes frames ``(N, C, ...)``; ``forward`` folds time into the batch.
    ``fold=False``: the module takes clips ``(B, C, T, ...)`` (e.g. BatchNorm3d); ``step`` feeds a
    one-frame clip. The wrapped module's ``state_dict`` keys are kept unprefixed, so offline
    checkpoints load unchanged.
    """

    def __init__(self, module: nn.Module, fold: bool = True) -> None:
        super().__init__()
        self.module = module
        self.fold = fold
        # Element-wise modules take a frame as it is: no unsqueeze/squeeze round trip per step.
        self._any_rank = isinstance(module, ANY_RANK)
        self._register_state_dict_hook(_strip_module_prefix)
        self._register_load_state_dict_pre_hook(_add_module_prefix, with_module=True)

    def forward(self, clip: Tensor) -> Tensor:
        if not self.fold:
            return self.module(clip)
        frames, b = _fold_time(clip)
        return _unfold_time(self.module(frames), b)

    def _apply_frame(self, frame: Tensor) -> Tensor:
        if self.fold or self._any_rank:
            return self.module(frame)
        return self.module(frame.unsqueeze(2)).squeeze(2)

    def example_output(self, frame: Tensor) -> Tensor:
        return self._apply_frame(frame)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        return self._apply_frame(frame), state


# modules that act on each element (or each channel vector) alike, whatever the tensor rank
ANY_RANK = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Identity,
)


def _strip_module_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "module.")]:
        state_dict[prefix + key[len(prefix) + len("module.") :]] = state_dict.pop(key)


def _add_module_prefix(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool, *args: Any
) -> None:
    own = {prefix + name for name in module.module.state_dict()}
    for key in [k for k in state_dict if k in own]:
        state_dict[prefix + "module." + key[len(prefix) :]] = state_dict.pop(key)
