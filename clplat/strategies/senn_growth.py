"""Growth keeps the optimizer: old parameters' state carried over bit for bit, new ones fresh.

After a growth step the optimizer must look exactly like one the engine would build for the grown
model (its parameter list in ``strategy.parameters()`` order, so a checkpoint of it loads into a
freshly built optimizer on ``--resume``) while keeping what it learnt:

* a parameter that was not touched keeps its state object as is (Adam's ``step``, ``exp_avg``,
  ``exp_avg_sq``; SGD's momentum buffer);
* a widened parameter (``Replacement``): every state tensor shaped like the old parameter is
  zero-padded to the new shape (old entries copied exactly), scalar entries (Adam's ``step``,
  one per tensor) are kept, so the new entries start with zero moments under the tensor's step;
* a brand-new parameter (an inserted block) has no state: the optimizer initialises it at its first
  step (Adam: step 0, zero moments), like any fresh parameter.

The parameter groups' hyperparameters (``lr``, ``initial_lr`` the engine's schedule scales from)
are untouched, so the learning-rate schedule simply continues.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from clplat.backbones.expandable_cnn import Replacement


def _pad(t: torch.Tensor, new_shape: torch.Size, dim: int) -> torch.Tensor:
    out = torch.zeros(new_shape, dtype=t.dtype, device=t.device)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


@torch.no_grad()
def migrate_optimizer(opt: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                      replacements: list[Replacement]) -> None:
    """Point the optimizer's single parameter group at ``params`` (the grown model's, in order) and
    move the state of replaced parameters onto their successors (see the module docstring)."""
    if len(opt.param_groups) != 1:
        raise ValueError("growth supports an optimizer with one parameter group")
    new_of = {id(r.old): r for r in replacements}
    for r in replacements:
        state = opt.state.pop(r.old, None)
        if not state:
            continue
        opt.state[r.new] = {k: _pad(v, r.new.shape, r.dim) if torch.is_tensor(v) and v.shape == r.old.shape else v
                            for k, v in state.items()}
    params = list(params)
    kept = {id(p) for p in params}
    for p in list(opt.state):
        if id(p) not in kept:  # a parameter that left the model without a successor
            del opt.state[p]
    assert all(id(p) not in new_of for p in params), "a replaced parameter is still in the model"
    opt.param_groups[0]["params"] = params
