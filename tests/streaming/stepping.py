"""Stepping a clip frame by frame, and the long-stream equivalence check, shared by the streaming tests.

Why long streams: a stream's state machinery (stride-phase counters that cycle, rings that wrap,
running means whose counters must keep growing, head windows that fill) only shows its steady
regime after warm-up and after several periods of the coarsest stride. A clip that yields only
2-4 outputs after the delay leaves that regime unchecked, so equivalence tests step at least
``MIN_PERIODS`` whole periods past the delay and compare every emitted output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

MIN_PERIODS = 6  # whole periods of the module's temporal stride stepped past its delay
MIN_FRAMES = 60  # and at least this many frames (long memory: running means, head windows)


def step_clip(module, clip: torch.Tensor, grad: bool = True) -> tuple[torch.Tensor, list[int]]:
    """Step through ``clip`` (dim 2); returns (stacked outputs, indices of the steps that emitted).
    ``grad=False`` steps under ``torch.no_grad()`` (the CPU inference fast paths)."""
    outs, emitted, state = [], [], None
    with contextlib.nullcontext() if grad else torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = module.step(clip[:, :, t], state)
            if y is not None:
                outs.append(y)
                emitted.append(t)
    return torch.stack(outs, 2), emitted


def long_clip_frames(module, extra_periods: int = MIN_PERIODS, min_frames: int = MIN_FRAMES) -> int:
    """Frames to step so that ``extra_periods`` whole stride periods follow the delay (and at
    least ``min_frames``): every stride phase recurs several times in the compared outputs."""
    return max(min_frames, module.delay + extra_periods * module.temporal_stride + 1)


def assert_steps_match(module, clip: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5,
                       grad: bool = False) -> torch.Tensor:
    """Step ``clip`` through ``module`` and check the stream against the offline ``ref`` ``(B, C, P, ...)``.

    - the clip is long: at least ``MIN_PERIODS`` periods past the delay and ``MIN_FRAMES`` frames;
    - outputs come exactly at steps ``stride * j + delay``, one for every position whose window
      ends inside the clip (none missing at the end, none extra);
    - every one of them equals the offline output for its position (``atol``, rtol 0), and the
      reference is not near zero (so the comparison is not vacuous).
    """
    d, s, frames = module.delay, module.temporal_stride, clip.shape[2]
    assert frames - d >= MIN_PERIODS * s and frames >= MIN_FRAMES, (
        f"clip of {frames} frames is too short for delay {d}, stride {s}")
    out, emitted = step_clip(module, clip, grad=grad)
    n = (frames - 1 - d) // s + 1
    assert emitted == [s * j + d for j in range(n)]
    assert ref.shape[2] >= n
    assert ref[:, :, :n].abs().max() > 1e-2
    torch.testing.assert_close(out, ref[:, :, :n], atol=atol, rtol=0)
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Batch-1 steps of tiny nets gain nothing from more threads (and spin-wait on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibrate(model: nn.Module, clip_shape: tuple[int, ...], reset_linear: bool = True) -> nn.Module:
    """Give BatchNorm realistic statistics (two seeded training forwards) and, with ``reset_linear``,
    the classifier non-tiny weights, so an output comparison means something; then eval()."""
    torch.manual_seed(0)
    if reset_linear:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(*clip_shape))
    return model.eval()


def strided_net() -> nn.Sequential:
    """Three 3-D convs with temporal strides 1, 2, 2 (stride 4 in all: four recurring step phases)."""
    torch.manual_seed(6)
    return nn.Sequential(
        nn.Conv3d(3, 8, (3, 3, 3), padding=(1, 1, 1)),
        nn.ReLU(),
        nn.Conv3d(8, 8, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
        nn.ReLU(),
        nn.Conv3d(8, 6, (3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1)),
    ).eval()


def stream_outputs(step, clip: torch.Tensor, state=None) -> tuple[list[torch.Tensor], list[int], object]:
    """Call ``step(frame, state)`` over ``clip`` in inference mode; (outputs, their steps, last state).
    Outputs are cloned: a compiled or graph step may overwrite its output on the next call."""
    outs, at = [], []
    with torch.inference_mode():
        for t in range(clip.shape[2]):
            y, state = step(clip[:, :, t], state)
            if y is not None:
                outs.append(y.clone())
                at.append(t)
    return outs, at, state
