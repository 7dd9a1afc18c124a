"""The Lightning adapter: sequential learning (spec §4).

Each training window is ``warmup_bins + grad_bins`` bins of one scene. The first ``warmup_bins``
run under ``no_grad`` to bring the recurrent state to a steady regime (a stream never starts from
zeros after its first bins); the remaining bins run with gradient from that state, and the loss
(MSE on valid pixels) is on the last ``loss_bins`` outputs. A non-finite loss stops the run with
one ``UserError`` line.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.evflow.metrics import masked_mse
from clplat.streaming.models.evflow_common import FlowUNet


class SequentialFlowModule(L.LightningModule):
    def __init__(self, model: FlowUNet, lr: float, weight_decay: float, warmup_bins: int) -> None:
        super().__init__()
        self.model, self.lr, self.weight_decay, self.warmup_bins = model, lr, weight_decay, warmup_bins

    def predict_window(self, bins: Tensor, loss_bins: int) -> Tensor:
        """``bins (B, T, 2, H, W)`` -> flows of the last ``loss_bins`` bins ``(B, L, 2, H, W)``."""
        clip = bins.movedim(1, 2)  # (B, 2, T, H, W)
        state = None
        if self.warmup_bins:
            with torch.no_grad():
                _, state = self.model.forward_sequence(clip[:, :, : self.warmup_bins])
        flows, _ = self.model.forward_sequence(clip[:, :, self.warmup_bins:], state)
        return flows[:, :, -loss_bins:].movedim(2, 1)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        bins, flow, valid = batch
        pred = self.predict_window(bins, flow.shape[1])
        loss = masked_mse(pred.flatten(0, 1), flow.flatten(0, 1), valid.flatten(0, 1))
        if not torch.isfinite(loss):
            raise UserError(f"training diverged: loss {float(loss.detach())} at step {self.global_step} "
                            f"(lr {self.lr:g}); lower train.lr and run again")
        with torch.no_grad():
            epe = (pred - flow).pow(2).sum(2).sqrt()[valid].mean()
        self.log("train_mse", loss, prog_bar=True)
        self.log("train_epe", epe, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
