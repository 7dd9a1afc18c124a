"""Continual-learning metrics, derived only from recorded raw evaluations.

The engine stores per-class correct/total counts at every evaluation (:class:`EvalRecord`); every
reported number is a function of that list, so results can be recomputed from ``results.json``
and never drift from what was measured. Definitions follow the Si-Blurry code (spec §1.4) and are
written out with formulas in ``docs/metrics.md``. All values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

ANYTIME = "anytime"
TASK_END = "task_end"


@dataclass
class EvalRecord:
    """One evaluation: per original class id, how many test samples were right out of how many.

    ``total[c] == 0`` means class c was not evaluated (not yet exposed).
    """

    samples_seen: int  # stream samples seen when evaluated
    task_id: int  # index of the task being trained when evaluated
    kind: str  # "anytime" or "task_end"
    correct: list[int]  # per ORIGINAL class id (len = num_classes): correct test predictions
    total: list[int]  # per original class id: test samples evaluated (0 for unexposed classes)

    def __post_init__(self) -> None:
        if self.kind not in (ANYTIME, TASK_END):
            raise ValueError(f"EvalRecord.kind must be '{ANYTIME}' or '{TASK_END}', got {self.kind!r}")
        if len(self.correct) != len(self.total):
            raise ValueError("EvalRecord.correct and .total differ in length")
        if any(c < 0 or c > n for c, n in zip(self.correct, self.total)):
            raise ValueError("EvalRecord needs 0 <= correct[c] <= total[c] for every class")

    @property
    def accuracy(self) -> float:
        """Sample-weighted accuracy over all evaluated test samples (0.0 if there are none)."""
        n = sum(self.total)
        return sum(self.correct) / n if n else 0.0

    @property
    def class_accuracy(self) -> list[float | None]:
        """Per-class accuracy; ``None`` for classes not evaluated."""
        return [c / n if n else None for c, n in zip(self.correct, self.total)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        return cls(samples_seen=int(data["samples_seen"]), task_id=int(data["task_id"]),
                   kind=str(data["kind"]), correct=[int(v) for v in data["correct"]],
                   total=[int(v) for v in data["total"]])


def _require(records: Sequence[EvalRecord], kind: str) -> list[EvalRecord]:
    if not records:
        raise ValueError("no evaluation records: nothing was evaluated, so no metric is defined")
    chosen = [r for r in records if r.kind == kind]
    if not chosen:
        raise ValueError(f"no '{kind}' evaluation records among {len(records)} records")
    return chosen


def task_end_records(records: Sequence[EvalRecord]) -> list[EvalRecord]:
    """One end-of-task record per task, ordered by task id (the last one wins if a task has two)."""
    by_task = {r.task_id: r for r in _require(records, TASK_END)}
    return [by_task[t] for t in sorted(by_task)]


def anytime_due(samples_seen: int, points: Sequence[int], next_eval: int, *, stream_end: bool = False,
                eval_at_end: bool = False) -> bool:
    """Whether to run an anytime evaluation after the training step that brought the stream to
    ``samples_seen`` samples; ``points[next_eval]`` is the next eval point (multiples of the period).

    The official rule (Si-Blurry ``methods/_trainer.py::Trainer.main_worker``): after each step, if
    ``samples_cnt > num_eval``, evaluate once and advance ``num_eval`` by ONE period. So a step
    that lands exactly on a point waits for the next step, at most one evaluation follows a step
    (a step that passes several points is followed by one per later step until caught up), and the
    stream's end adds no point. ``eval_at_end=True`` adds one after the last step (``stream_end``),
    which the official code never does (it raises A_auc: the last point is the best-trained).
    The caller advances ``next_eval`` by one after every evaluation this returns True for.
    """
    if next_eval < len(points) and samples_seen > points[next_eval]:
        return True
    return eval_at_end and stream_end


def anytime_auc(records: Sequence[EvalRecord]) -> float:
    """A_auc = (1/K) Σ_k a_k over the K anytime evaluations (equal spacing, so this is the area
    under the accuracy-vs-samples curve divided by its length)."""
    accs = [r.accuracy for r in _require(records, ANYTIME)]
    return sum(accs) / len(accs)


def a_last(records: Sequence[EvalRecord]) -> float:
    """A_last = accuracy at the end of the last task."""
    return task_end_records(records)[-1].accuracy


def a_avg(records: Sequence[EvalRecord]) -> float:
    """A_avg = mean of the T end-of-task accuracies."""
    accs = [r.accuracy for r in task_end_records(records)]
    return sum(accs) / len(accs)


def f_last(records: Sequence[EvalRecord]) -> float | None:
    """F_last = mean over classes c with max_{t<T} acc_t(c) > 0 of [max_{t<T} acc_t(c) − acc_T(c)].

    End-of-task per-class accuracies only. A class not evaluated at a task end does not count for
    that task; a class not evaluated at the final task end is skipped. ``None`` when no class
    qualifies (e.g. a single task), where the official code would produce NaN.
    """
    ends = task_end_records(records)
    last = ends[-1].class_accuracy
    diffs = []
    for c, final in enumerate(last):
        earlier = [a for r in ends[:-1] if (a := r.class_accuracy[c]) is not None]
        if final is None or not earlier or max(earlier) <= 0:
            continue
        diffs.append(max(earlier) - final)
    return sum(diffs) / len(diffs) if diffs else None


def accuracy_matrix(records: Sequence[EvalRecord],
                    task_classes: Sequence[Sequence[int]]) -> list[list[float | None]]:
    """R[i][j] = accuracy after task i's end on the test samples of the classes of task j.

    Pass ``plan.new_classes(targets)`` as ``task_classes`` (each class counted in the task that
    first exposes it). ``None`` where none of task j's classes was evaluated after task i. Rows
    follow the task-end records, so ``len(R)`` is the number of completed tasks.
    """
    rows = []
    for r in task_end_records(records):
        row: list[float | None] = []
        for cls in task_classes:
            n = sum(r.total[c] for c in cls)
            row.append(sum(r.correct[c] for c in cls) / n if n else None)
        rows.append(row)
    return rows


def bwt(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1][j] − R[j][j]), over the pairs where both are defined.

    ``None`` for a single task or when no pair is defined.
    """
    if not matrix:
        raise ValueError("empty accuracy matrix")
    last = len(matrix) - 1
    diffs = [matrix[last][j] - matrix[j][j] for j in range(last)
             if j < len(matrix[last]) and matrix[last][j] is not None and matrix[j][j] is not None]
    return sum(diffs) / len(diffs) if diffs else None


def summarize(records: Sequence[EvalRecord], task_classes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Every headline number at once; keys ``A_auc, A_avg, A_last, F_last, BWT, acc_matrix, n_evals``.

    ``A_auc`` is ``None`` if no anytime evaluation happened (e.g. a stream shorter than one eval
    period); ``F_last`` and ``BWT`` are ``None`` when undefined (one task).
    """
    ends = task_end_records(records)
    has_anytime = any(r.kind == ANYTIME for r in records)
    matrix = accuracy_matrix(ends, task_classes)
    return {
        "A_auc": anytime_auc(records) if has_anytime else None,
        "A_avg": a_avg(ends),
        "A_last": a_last(ends),
        "F_last": f_last(ends),
        "BWT": bwt(matrix),
        "acc_matrix": matrix,
        "n_evals": len(records),
    }
