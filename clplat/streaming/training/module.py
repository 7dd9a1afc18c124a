"""The Lightning adapter: per-frame cross-entropy on ``model.forward_frames``.

Thin on purpose (the Trainer owns the loop, devices and logging). It stops a diverged run: a
non-finite loss raises a one-line ``UserError`` at the step where it appears, before any weights
are written.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.errors import UserError
from clplat.streaming.sources import FrameSpec


class FrameClassifier(L.LightningModule):
    """Per-frame classifier of clips ``(B, T, H, W, 3)`` uint8 with labels ``(B, T)``.

    Positions ``t < warmup`` of a clip count ``warmup_weight`` in the loss (the others 1): their
    receptive field still holds the zero padding before the clip, which a stream never sees
    after its first frames. ``*_ctx`` metrics score only positions ``t >= warmup``.
    """

    def __init__(self, model: nn.Module, spec: FrameSpec, lr: float, weight_decay: float,
                 warmup: int = 0, warmup_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.warmup_weight = warmup_weight

    def _logits(self, video: Tensor) -> Tensor:
        return self.model.forward_frames(self.spec.clip_tensor(video))  # (B, K, T)

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Position-weighted mean cross-entropy over ``(B, T)``."""
        w = torch.ones(labels.shape[1], dtype=logits.dtype, device=logits.device)
        w[: self.warmup] = self.warmup_weight
        ce = F.cross_entropy(logits, labels, reduction="none")  # (B, T)
        return (ce * w).sum() / (w.sum() * labels.shape[0])

    def _check_finite(self, loss: Tensor) -> None:
        if not torch.isfinite(loss):
            raise UserError(f"training diverged: loss {float(loss.detach())} at epoch {self.current_epoch} step "
                            f"{self.global_step} (lr {self.lr:g}); lower train.lr and run again")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        video, labels = batch
        logits = self._logits(video)
        loss = self._loss(logits, labels)
        self._check_finite(loss)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        hit = (logits.argmax(1) == labels).float()
        self.log("train_acc_ctx", hit[:, self.warmup:].mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        video, labels = batch
        logits = self._logits(video)
        hit = (logits.argmax(1) == labels).float()
        self.log("val_loss", self._loss(logits, labels), prog_bar=True)
        self.log("val_frame_acc", hit.mean(), prog_bar=True)
        self.log("val_frame_acc_ctx", hit[:, self.warmup:].mean(), prog_bar=True)
        self.log("val_last_frame_acc", hit[:, -1].mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(total, 1),
                                                    pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
