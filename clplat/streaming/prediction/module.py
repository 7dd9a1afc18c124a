"""The Lightning adapter: teacher-forced next-frame loss, computed in one parallel pass over time.

Inputs are frames ``0..T-2`` of a clip, targets frames ``1..T-1``; the loss is per-pixel binary
cross-entropy on the decoder's logits (pixels are intensities in [0, 1], mostly black, as in
Moving MNIST). A non-finite loss stops the run with one ``UserError`` line.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.models.convs5_predictor import FramePredictor
from clplat.streaming.prediction.metrics import to_clip


class NextFrameModule(L.LightningModule):
    def __init__(self, model: FramePredictor, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay

    def _loss(self, videos: Tensor) -> tuple[Tensor, Tensor]:
        clip = to_clip(videos)
        logits = self.model(clip[:, :, :-1])
        target = clip[:, :, 1:]
        return F.binary_cross_entropy_with_logits(logits, target), F.mse_loss(torch.sigmoid(logits), target)

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        loss, mse = self._loss(batch[0])
        if not torch.isfinite(loss):
            raise UserError(f"training diverged: loss {float(loss.detach())} at step {self.global_step} "
                            f"(lr {self.lr:g}); lower train.lr and run again")
        self.log("train_bce", loss, prog_bar=True)
        self.log("train_mse", mse, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
