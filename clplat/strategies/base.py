"""The strategy contract: a plain ``nn.Module`` that owns its model and its loss.

A strategy never sees the Lightning ``Trainer``. The engine hands it augmented batches whose labels
are already re-indexed in order of first exposure (head unit j = the j-th class seen), and a
:class:`StreamContext` with what it may know about the stream at that moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from torch.utils.data import DataLoader


class StrategyConfig(BaseModel):
    """Base of every strategy's own typed config (the YAML section named after the strategy)."""

    model_config = ConfigDict(extra="forbid")

    def trains_after_session_0(self) -> bool:
        """False for methods that only add prototypes after session 0: the config check then
        refuses ``sessions.incremental.epochs > 0`` before anything runs."""
        return True


@dataclass
class StreamContext:
    """What a strategy may know at a training or evaluation step.

    ``label_index[c]`` maps an original class id to its exposure index (-1 while unexposed).
    ``generator`` is the engine's checkpointed RNG: strategies draw replay batches from it so a
    resumed run repeats the same draws. ``augment`` applies a fresh random training augmentation.
    ``task_id`` is the (hidden) task, in the sessions regime the session; ``session`` and ``epoch``
    are the session and its epoch (both 0 in the online regime); ``session_epochs`` the session's
    number of epochs (0 when unknown: the online regime).
    """

    n_exposed: int
    exposed_classes: list[int]
    label_index: Tensor
    task_id: int = 0
    samples_seen: int = 0
    generator: torch.Generator | None = None
    augment: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    training: bool = True
    session: int = 0
    epoch: int = 0
    session_epochs: int = 0

    def to_index(self, y_orig: Tensor) -> Tensor:
        """Original class ids -> exposure indices (all must be exposed)."""
        idx = self.label_index.to(y_orig.device)[y_orig]
        if bool((idx < 0).any()):
            raise ValueError("label of an unexposed class reached the strategy")
        return idx

    def mask_logits(self, logits: Tensor) -> Tensor:
        """-inf on head units of classes not exposed yet (training and evaluation alike)."""
        if self.n_exposed >= logits.shape[1]:
            return logits
        mask = torch.zeros(logits.shape[1], device=logits.device, dtype=logits.dtype)
        mask[self.n_exposed :] = float("-inf")
        return logits + mask


class Strategy(nn.Module):
    """Base class: subclasses set ``config_model`` and implement ``training_loss`` and ``predict``.

    Constructor signature used by the engine::

        Strategy(cfg, backbone, num_classes, input_shape)

    ``backbone`` is a feature extractor with an integer ``num_features``; ``input_shape`` is the
    (C, H, W) of one sample (what memories preallocate). State that must survive a restart
    (memory buffers, counters) is kept in registered buffers so ``state_dict`` carries it.
    """

    config_model: ClassVar[type[StrategyConfig]] = StrategyConfig
    # True: ``training_loss`` gets the UN-augmented batch and calls ``ctx.augment`` itself (e.g. two
    # views for a contrastive loss). Sessions regime only; online batches are always augmented.
    augments_itself: ClassVar[bool] = False

    def __init__(self, cfg: StrategyConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)

    # --- required -----------------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor | dict[str, Tensor]:
        """Loss of one optimizer update on an augmented stream batch ``x`` with exposure-index
        labels ``y``. May return a dict with key ``loss`` plus scalars to log."""
        raise NotImplementedError

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        """Logits ``(B, num_classes)`` for evaluation; the engine applies ``ctx.mask_logits``."""
        raise NotImplementedError

    def predict_task(self, x: Tensor, task: int, ctx: StreamContext) -> Tensor:
        """Task-incremental evaluation: logits when the task (session index) is given; the engine
        reads only that task's classes. Default: ``predict`` (one shared head, no task input)."""
        return self.predict(x, ctx)

    # --- optional hooks -----------------------------------------------------------------------
    def check_resumable(self) -> None:
        """Called before ``--resume`` loads a checkpoint: a strategy whose state is not all in
        ``state_dict`` raises a ``UserError`` here (loading its weights for evaluation still works)."""

    def on_stream_batch(self, x: Tensor, y_orig: Tensor, ctx: StreamContext) -> None:
        """Called once per incoming stream batch after its ``online_iter`` updates (raw, un-augmented
        inputs and original class ids), e.g. to update a replay memory."""

    def on_task_end(self, ctx: StreamContext) -> None:
        """Online regime: called after the last batch of each (hidden) task."""

    # --- sessions regime (``regime: sessions``) ----------------------------------------------------
    # A session's new classes are exposed in ``ctx`` before ``on_session_start``. ``loader`` yields
    # un-augmented ``(x, y_orig)`` CPU batches of that session's training data, one pass, in a fixed
    # order. On ``--resume`` the engine restores ``state_dict`` and every parameter's
    # ``requires_grad``; it does not re-run hooks that ran before the checkpoint, so anything else a
    # hook sets must live in buffers, or be re-derived by ``on_epoch_start`` from (session, epoch).
    def on_session_start(self, session: int, loader: DataLoader, ctx: StreamContext) -> None:
        """Before a session's training (prototypes, Fisher estimates, masks, freezing)."""

    def on_epoch_start(self, session: int, epoch: int, ctx: StreamContext) -> None:
        """Before each training epoch of a session, after the learning rate of that epoch is set
        (e.g. unfreeze blocks from some epoch on). Called again for the epoch a resumed run starts."""

    def on_session_end(self, session: int, loader: DataLoader, ctx: StreamContext) -> None:
        """After a session's last epoch, before its evaluation (e.g. class-mean prototypes)."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates (frozen backbones are excluded by ``requires_grad``)."""
        return (p for p in self.parameters() if p.requires_grad)

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Override to give parts of the model their own learning rate. Sessions regime: called once
        per session; groups may hold parameters frozen now and unfrozen by a later hook (optimizers
        skip parameters without ``.grad``); the schedule scales every group's own ``lr``."""
        return [{"params": list(self.trainable_parameters()), "lr": lr}]
