"""Task-incremental evaluation (``scenario.kind: task_incremental``, sessions regime).

After each session, every test sample of the classes seen so far is scored three ways in one pass:
- CIL: ``strategy.predict`` with no task given, argmax over every exposed class (the plain record);
- task identification: the class CIL predicted belongs to the sample's true task;
- TIL: ``strategy.predict_task(x, t)`` with the true task t given, argmax over t's classes only.
Counts are kept per original class id, like :class:`EvalRecord`, so every metric below is derived
from the raw counts: ``til_matrix[k][t]`` / ``cil_matrix[k][t]`` are the accuracies (%) on task t's
test samples after session k; ``til_acc`` / ``cil_acc`` the mean over tasks after the last session
(the paper's "average accuracy"); ``task_id_acc`` the same mean of task-identification accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clplat.engine.evaluation import eval_mode, exposed_predictions
from clplat.engine.metrics import EvalRecord
from clplat.strategies.base import Strategy, StreamContext


@torch.no_grad()
def evaluate_tasks(strategy: Strategy, test_set, test_targets: np.ndarray, ctx: StreamContext,
                   session_classes: Sequence[Sequence[int]], *, num_classes: int, batch_size: int,
                   device: torch.device, samples_seen: int, session: int) -> tuple[EvalRecord, dict[str, list[int]]]:
    """The CIL :class:`EvalRecord` plus per-class ``til_correct`` and ``task_correct`` counts."""
    task_of = torch.full((num_classes,), -1, dtype=torch.long)
    for t, cls in enumerate(session_classes[: session + 1]):
        task_of[torch.as_tensor(list(cls), dtype=torch.long)] = t
    counts = {k: torch.zeros(num_classes, dtype=torch.long) for k in ("correct", "total", "til", "task")}
    with eval_mode(strategy, ctx):
        for x, y, pred in exposed_predictions(strategy, test_set, test_targets, ctx,
                                              batch_size=batch_size, device=device):
            til = _til_predictions(strategy, x, y, task_of, ctx, session_classes)
            counts["total"] += torch.bincount(y, minlength=num_classes)
            counts["correct"] += torch.bincount(y[pred == y], minlength=num_classes)
            counts["til"] += torch.bincount(y[til == y], minlength=num_classes)
            counts["task"] += torch.bincount(y[task_of[pred] == task_of[y]], minlength=num_classes)
    rec = EvalRecord(samples_seen=samples_seen, task_id=session, kind="task_end",
                     correct=counts["correct"].tolist(), total=counts["total"].tolist())
    return rec, {"til_correct": counts["til"].tolist(), "task_correct": counts["task"].tolist()}


def _til_predictions(strategy: Strategy, x: torch.Tensor, y: torch.Tensor, task_of: torch.Tensor,
                     ctx: StreamContext, session_classes: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per sample, the class argmax over its true task's classes of ``predict_task``."""
    pred = torch.full_like(y, -1)
    tasks = task_of[y]
    for t in tasks.unique().tolist():
        rows = (tasks == t).nonzero().squeeze(1)
        cls = torch.as_tensor(list(session_classes[t]), dtype=torch.long)
        cols = ctx.label_index[cls]  # head units of task t's classes
        logits = strategy.predict_task(x[rows.to(x.device)], t, ctx).float().cpu()
        pred[rows] = cls[logits[:, cols].argmax(dim=1)]
    return pred


def _per_task(correct: Sequence[int], total: Sequence[int], session_classes: Sequence[Sequence[int]],
              upto: int) -> list[float | None]:
    out: list[float | None] = []
    for cls in session_classes[: upto + 1]:
        n = sum(total[c] for c in cls)
        out.append(100.0 * sum(correct[c] for c in cls) / n if n else None)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def task_metrics(records: Sequence[dict[str, Any]], extra: Sequence[dict[str, list[int]]],
                 session_classes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """results.json keys of a task-incremental run (percentages)."""
    til, cil, tid = [], [], []
    for k, (rec, ex) in enumerate(zip(records, extra, strict=True)):
        til.append(_per_task(ex["til_correct"], rec["total"], session_classes, k))
        cil.append(_per_task(rec["correct"], rec["total"], session_classes, k))
        tid.append(_per_task(ex["task_correct"], rec["total"], session_classes, k))
    return {"til_acc": _mean(til[-1]) if til else None, "cil_acc": _mean(cil[-1]) if cil else None,
            "task_id_acc": _mean(tid[-1]) if tid else None,
            "til_matrix": til, "cil_matrix": cil, "task_id_matrix": tid,
            "til_avg": [_mean(r) for r in til], "cil_avg": [_mean(r) for r in cil]}


def parameter_metrics(strategy: Strategy) -> dict[str, Any]:
    """``params_per_task`` (from the strategy, if it counts them) and ``params_total``."""
    counts = getattr(strategy, "task_parameter_counts", None)
    if counts is None:
        return {"params_per_task": None, "params_total": sum(p.numel() for p in strategy.parameters())}
    per = [int(c) for c in counts()]
    return {"params_per_task": per, "params_total": sum(per)}
