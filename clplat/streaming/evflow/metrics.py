"""Flow scores (spec §4, the temporally-dense-flow repo's ``multiscaleloss``): EPE = mean ‖Δflow‖₂
over valid ground-truth pixels; nPE = % of those pixels with an error above n px (n = 1..5); the
same EPE restricted to pixels that saw events. Sums are kept so that scores add up over bins and
scenes exactly (a mean of per-bin means would weight sparse bins like full ones)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["FlowScores", "masked_mse"]

THRESHOLDS = (1, 2, 3, 4, 5)


def masked_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels of the squared flow error ``|Δu|² + |Δv|²``; flows ``(B, 2, ...)``,
    ``valid`` ``(B, ...)``. Zero (with gradient) when no pixel is valid."""
    sq = (pred - target).pow(2).sum(1)
    m = valid.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp_min(1.0)


@dataclass
class FlowScores:
    """Running EPE / nPE sums; ``add`` one or more flows, ``summary`` for the figures."""

    pixels: int = 0
    epe_sum: float = 0.0
    over: dict[int, int] = field(default_factory=lambda: dict.fromkeys(THRESHOLDS, 0))
    event_pixels: int = 0
    event_epe_sum: float = 0.0
    bins: int = 0

    def add(self, pred: Tensor, target: Tensor, valid: Tensor, events: Tensor | None = None) -> Tensor:
        """Flows ``(..., 2, H, W)``, ``valid`` and ``events`` (pixels that saw an event) ``(..., H, W)``.
        Returns the per-pixel EPE map."""
        epe = (pred.float() - target.float()).pow(2).sum(-3).sqrt()
        valid = valid.bool()
        sel = epe[valid]
        self.pixels += sel.numel()
        self.epe_sum += float(sel.sum())
        for n in THRESHOLDS:
            self.over[n] += int((sel > n).sum())
        if events is not None:
            both = valid & events.bool()
            self.event_pixels += int(both.sum())
            self.event_epe_sum += float(epe[both].sum())
        self.bins += max(1, epe[..., 0, 0].numel())
        return epe

    def summary(self) -> dict[str, float | int | None]:
        px = max(self.pixels, 1)
        out: dict[str, float | int | None] = {"epe": round(self.epe_sum / px, 4)}
        out.update({f"{n}pe": round(100.0 * self.over[n] / px, 2) for n in THRESHOLDS})
        out["epe_event_pixels"] = round(self.event_epe_sum / self.event_pixels, 4) if self.event_pixels else None
        out.update({"valid_pixels": self.pixels, "event_pixels": self.event_pixels, "bins": self.bins})
        return out


def zero_flow_like(target: Tensor) -> Tensor:
    return torch.zeros_like(target)
