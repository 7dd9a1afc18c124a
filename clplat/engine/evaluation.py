"""Evaluation on the test samples of the classes exposed so far, recorded raw (per-class counts)
so every metric is derived later from the same records."""

from __future__ import annotations

import numpy as np
import torch

from clplat.engine.metrics import EvalRecord
from clplat.strategies.base import Strategy, StreamContext


def fetch(dataset, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(idx)
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(list(xs)), torch.as_tensor([int(y) for y in ys])


@torch.no_grad()
def evaluate(strategy: Strategy, test_set, test_targets: np.ndarray, ctx: StreamContext, *,
             num_classes: int, batch_size: int, device: torch.device, samples_seen: int,
             task_id: int, kind: str) -> EvalRecord:
    exposed = np.asarray(ctx.exposed_classes, dtype=np.int64)
    idx = np.flatnonzero(np.isin(test_targets, exposed)).tolist()
    correct = torch.zeros(num_classes, dtype=torch.long)
    total = torch.zeros(num_classes, dtype=torch.long)
    exposed_t = torch.as_tensor(exposed, dtype=torch.long)
    was_training = strategy.training
    strategy.eval()
    ctx.training = False
    try:
        for s in range(0, len(idx), batch_size):
            x, y = fetch(test_set, idx[s : s + batch_size])
            logits = ctx.mask_logits(strategy.predict(x.to(device), ctx)).float().cpu()
            pred = exposed_t[logits[:, : len(exposed)].argmax(dim=1)]
            y = y.long()
            total += torch.bincount(y, minlength=num_classes)
            correct += torch.bincount(y[pred == y], minlength=num_classes)
    finally:
        strategy.train(was_training)
        ctx.training = True
    return EvalRecord(samples_seen=samples_seen, task_id=task_id, kind=kind,
                      correct=correct.tolist(), total=total.tolist())
