"""Stepping a clip frame by frame, shared by the streaming tests."""

from __future__ import annotations

import contextlib

import torch


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
