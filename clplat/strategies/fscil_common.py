"""Pieces the few-shot class-incremental strategies share (CoACT, LoRA-finetune, SimpleCIL):
class-mean prototypes streamed from a session's loader, the supervised contrastive loss and the
EMA teacher update. Written once here; each strategy file composes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from clplat.strategies.base import StreamContext


@torch.no_grad()
def class_means(extract: Callable[[Tensor], Tensor], loader: Iterable, ctx: StreamContext,
                num_rows: int, dim: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Per-class mean feature over one pass of ``loader`` (``(x, y_orig)`` batches).

    Streams: only a ``(num_rows, dim)`` running sum and a count per row are kept, never the
    features. Row = the class's exposure index (``ctx.to_index``). Returns ``(means, counts)``;
    rows with count 0 are zero.
    """
    sums = torch.zeros(num_rows, dim, dtype=torch.float64, device=device)
    counts = torch.zeros(num_rows, dtype=torch.long, device=device)
    for x, y_orig in loader:
        rows = ctx.to_index(y_orig).to(device)
        feats = extract(x.to(device)).to(torch.float64)
        sums.index_add_(0, rows, feats)
        counts += torch.bincount(rows, minlength=num_rows)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    return means.to(torch.float32), counts


@torch.no_grad()
def write_prototypes(weight: Tensor, means: Tensor, counts: Tensor) -> list[int]:
    """Copy the mean of every class seen in the pass into its row of a ``(C, D)`` weight;
    returns the rows written."""
    rows = torch.nonzero(counts > 0).flatten()
    weight[rows] = means[rows].to(weight.dtype)
    return rows.tolist()


def supcon_loss(z: Tensor, labels: Tensor, tau: float = 0.07, base_tau: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "all" anchors) on L2-normalised ``z``.

    ``z`` is ``(N, D)`` with every view of every sample stacked (e.g. ``[student_v1; teacher_v2]``)
    and ``labels`` their ``(N,)`` classes. For anchor i with positives P(i) (same label, not i):
    ``l_i = -(tau/base_tau) * mean_{p in P(i)} log(exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau))``;
    the loss is the mean over anchors that have a positive.
    """
    n = z.shape[0]
    logits = z @ z.T / tau
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp_min(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return z.sum() * 0.0
    return -(tau / base_tau) * mean_pos[has_pos].mean()


@torch.no_grad()
def ema_update_(teacher: list[Tensor], student: list[Tensor], momentum: float) -> None:
    """``theta_k <- m * theta_k + (1 - m) * theta_q`` in place, as a lerp so an unchanged student
    weight leaves the teacher's bit for bit unchanged."""
    if teacher:
        torch._foreach_lerp_(teacher, student, 1.0 - momentum)
