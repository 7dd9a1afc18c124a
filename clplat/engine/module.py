"""The Lightning adapter: a thin ``LightningModule`` that feeds each incoming stream batch to the
strategy for ``online_iter`` manual optimizer updates. Precision, devices and the loop itself
belong to the ``Trainer``; evaluation, checkpoints and logging live in callbacks."""

from __future__ import annotations

import math
import os

import lightning as L
import torch
from torch import Tensor

from clplat.engine.distributed import SplitAugment, average_gradients, gather_rows, split_update, splits
from clplat.engine.exposure import ExposureTracker
from clplat.errors import UserError
from clplat.strategies.base import Strategy, StreamContext


def build_optimizer(strategy: Strategy, cfg) -> torch.optim.Optimizer:  # cfg: OptimConfig
    groups = [g for g in strategy.optimizer_param_groups(cfg.lr) if g["params"]]
    if not groups:
        raise UserError("the strategy has no trainable parameters (is the whole backbone frozen?)")
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


class ContinualModule(L.LightningModule):
    def __init__(self, strategy: Strategy, optim_cfg, *, num_classes: int, online_iter: int,
                 augment, generator: torch.Generator, cursor, gradient_clip_val: float | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strategy = strategy
        self.optim_cfg = optim_cfg
        self.online_iter = online_iter
        self.augment = augment
        self.generator = generator
        self.gradient_clip_val = gradient_clip_val
        self.tracker = ExposureTracker(num_classes)
        self.cursor = cursor  # its ``samples_seen`` (samples trained on before this batch) is the only count
        self.task_id = 0
        self.session = 0  # sessions regime: session and epoch in progress
        self.epoch = 0
        self.session_epochs = 0  # epochs of the session in progress (0: not in a session)
        self.last_loss = float("nan")
        self._optimizer: torch.optim.Optimizer | None = None
        self.split = None  # DDP: the ShareSampler of the fit in progress (engine/distributed.py)

    # the optimizer is created eagerly so a checkpoint can restore its state before fit starts
    def make_optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = build_optimizer(self.strategy, self.optim_cfg)
        return self._optimizer

    def configure_optimizers(self):
        return self.make_optimizer()

    # Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (fork-safe CUDA checks). Every
    # ``optimizer.step()`` asks ``torch.cuda.is_available()`` (its graph-capture health check), and
    # where no CUDA device is visible that answer is never cached: each step re-tries loading NVML
    # and then asks the CUDA runtime anyway. On CPU-only machines this was the largest per-step cost
    # of small models, so the flag is dropped for the fit there (same answers) and put back after.
    _NVML_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"

    def on_fit_start(self) -> None:
        self._nvml_flag = None
        if os.environ.get(self._NVML_ENV) == "1" and not torch.cuda.is_available():
            self._nvml_flag = os.environ.pop(self._NVML_ENV)

    def on_fit_end(self) -> None:
        if getattr(self, "_nvml_flag", None) is not None:
            os.environ[self._NVML_ENV] = self._nvml_flag
            self._nvml_flag = None

    def context(self) -> StreamContext:
        return StreamContext(
            n_exposed=self.tracker.n_exposed, exposed_classes=self.tracker.exposed,
            label_index=self.tracker.label_index, task_id=self.task_id, samples_seen=self.cursor.samples_seen,
            generator=self.generator, augment=self.augment, training=self.training,
            session=self.session, epoch=self.epoch, session_epochs=self.session_epochs,
        )

    # --- DDP (engine/distributed.py); each is a no-op in one process -----------------------------------
    def use_split(self, sampler) -> None:
        """Train on this process's share of each batch of ``sampler`` (a ``ShareSampler``, or None)."""
        self.split = sampler
        if sampler is not None and not isinstance(self.augment, SplitAugment):
            self.augment = SplitAugment(self.augment)

    def global_batch(self, x: Tensor, y: Tensor, batch_idx: int) -> tuple[Tensor, Tensor]:
        """The whole incoming batch: gathered from every process when it was split across them."""
        if self.split is None or not splits(self.split.global_size(batch_idx), self.split.world):
            return x, y
        return gather_rows(x, equal=True)[0], gather_rows(y, equal=True)[0]

    def split_update(self, batch_idx: int, rows: int):
        """Context of one update; its ``scale(loss)`` weights this process's rows in the global mean."""
        return split_update(self.split, batch_idx, rows)

    def synced_backward(self, loss: Tensor) -> None:
        """``manual_backward``, then the gradients averaged over the processes."""
        self.manual_backward(loss)
        average_gradients(self.strategy.parameters())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y_orig = batch
        x_all, y_all = self.global_batch(x, y_orig, batch_idx)
        if x_all.shape[0] == 0:
            return None
        self.tracker.expose(y_all.cpu())
        ctx = self.context()
        y = ctx.to_index(y_orig)
        opt = self.optimizers()
        for _ in range(self.online_iter):
            with self.split_update(batch_idx, x.shape[0]) as update:
                xa = self.augment.share_of(x, x_all) if self.split is not None else self.augment(x)
                out = self.strategy.training_loss(xa, y, ctx)
            loss = out["loss"] if isinstance(out, dict) else out
            value = float(loss.detach())  # the one host sync of an update
            if not math.isfinite(value):
                raise UserError(f"loss became {value} at stream sample {self.cursor.samples_seen} "
                                f"(strategy '{type(self.strategy).__name__}', lr {self.optim_cfg.lr}); "
                                "lower optim.lr or check the data")
            opt.zero_grad(set_to_none=True)
            self.synced_backward(update.scale(loss))
            if self.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            opt.step()
        self.last_loss = value  # finite: checked above
        self.strategy.on_stream_batch(x_all, y_all, ctx)
        return None
