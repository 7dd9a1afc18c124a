"""Evaluation on the test samples of the classes exposed so far, recorded raw (per-class counts)
so every metric is derived later from the same records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from clplat.engine.metrics import EvalRecord
from clplat.strategies.base import Strategy, StreamContext


def fetch(dataset, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(idx)
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(list(xs)), torch.as_tensor([int(y) for y in ys])


@contextmanager
def eval_mode(strategy: Strategy, ctx: StreamContext) -> Iterator[None]:
    """The strategy and its context in evaluation mode for the block; the training mode after."""
    was_training = strategy.training
    strategy.eval()
    ctx.training = False
    try:
        yield
    finally:
        strategy.train(was_training)
        ctx.training = True


def exposed_predictions(strategy: Strategy, test_set, test_targets: np.ndarray, ctx: StreamContext, *,
                        batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]]:
    """Batches ``(x on device, y, CIL prediction)`` over the test samples of the exposed classes;
    the prediction is the argmax of the masked logits over every exposed class. Use inside
    :func:`eval_mode` and ``torch.no_grad``."""
    exposed_t = torch.as_tensor(np.asarray(ctx.exposed_classes, dtype=np.int64), dtype=torch.long)
    idx = np.flatnonzero(np.isin(test_targets, exposed_t.numpy())).tolist()
    for s in range(0, len(idx), batch_size):
        x, y = fetch(test_set, idx[s : s + batch_size])
        x = x.to(device)
        logits = ctx.mask_logits(strategy.predict(x, ctx)).float().cpu()
        yield x, y.long(), exposed_t[logits[:, : len(exposed_t)].argmax(dim=1)]


@torch.no_grad()
def evaluate(strategy: Strategy, test_set, test_targets: np.ndarray, ctx: StreamContext, *,
             num_classes: int, batch_size: int, device: torch.device, samples_seen: int,
             task_id: int, kind: str) -> EvalRecord:
    correct = torch.zeros(num_classes, dtype=torch.long)
    total = torch.zeros(num_classes, dtype=torch.long)
    with eval_mode(strategy, ctx):
        for _, y, pred in exposed_predictions(strategy, test_set, test_targets, ctx,
                                              batch_size=batch_size, device=device):
            total += torch.bincount(y, minlength=num_classes)
            correct += torch.bincount(y[pred == y], minlength=num_classes)
    return EvalRecord(samples_seen=samples_seen, task_id=task_id, kind=kind,
                      correct=correct.tolist(), total=total.tolist())
