"""The stream plan: everything the driver needs to replay a scenario, as plain data.

A plan is made once from ``(targets, scenario config, seed)`` and saved with the run, so a run can
be audited (which sample came when, which classes were exposed where) without re-running the
generator. Indices are positions in the dataset's training split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from clplat.errors import UserError
from clplat.registry import Registry, TaggedConfig


class ScenarioConfig(TaggedConfig):
    """The ``scenario:`` section. ``kind`` selects the registered scenario, whose own config model
    (a subclass adding its fields) validates the rest; a key that kind lacks is an error."""

    tag_field = "kind"
    # the regimes this kind of scenario makes sense in (few-shot sessions are not an online stream)
    regimes: ClassVar[tuple[str, ...]] = ("online", "sessions")

    kind: str = "si_blurry"

    @classmethod
    def registry(cls) -> Registry[Any]:
        return SCENARIOS


# builder(cfg, data: ClassificationData, seed, eval_period) -> StreamPlan (eval points filled in later)
SCENARIOS: Registry[Callable[..., StreamPlan]] = Registry("scenario", "clplat.scenarios",
                                                         default_config=ScenarioConfig)


def make_eval_points(total: int, eval_period: int) -> list[int]:
    """Anytime eval points: every multiple of ``eval_period`` stream samples up to ``total``."""
    if eval_period < 1:
        raise ValueError(f"eval_period must be >= 1, got {eval_period}")
    return list(range(eval_period, total + 1, eval_period))


def int_targets(targets) -> np.ndarray:
    """The training targets as a 1-D int64 array; anything else is a one-line ``UserError``."""
    t = np.asarray(targets)
    if t.ndim != 1:
        raise UserError(f"scenario: targets must be 1-D, got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise UserError(f"scenario: targets must be integer class ids, got dtype {t.dtype}")
    return t.astype(np.int64)


def class_order_of(n_classes: int, class_order: str, g: torch.Generator) -> list[int]:
    """All class ids in ``class_order``: ``seeded`` draws one ``randperm`` from ``g``, ``contiguous`` none."""
    if class_order == "seeded":
        return torch.randperm(n_classes, generator=g).tolist()
    if class_order == "contiguous":
        return list(range(n_classes))
    raise UserError(f"scenario.class_order must be 'seeded' or 'contiguous', got {class_order!r}")


@dataclass
class StreamPlan:
    """Per-task ordered training indices plus where to evaluate.

    ``tasks[i]`` is streamed in order, tasks in order 0..T-1, each sample once.
    ``disjoint_classes[i]`` / ``blurry_classes[i]`` are the classes task i owns (class-incremental
    plans own all their classes as disjoint); ``moved_out[i]`` / ``moved_in[i]`` count the blurry
    samples task i gave to and took from the shared pool; ``dropped`` lists training indices the
    generator never streams (i-Blurry leftovers). Counting metadata is for reports only.
    """

    tasks: list[list[int]]
    num_classes: int
    eval_points: list[int]
    kind: str = "custom"
    disjoint_classes: list[list[int]] = field(default_factory=list)
    blurry_classes: list[list[int]] = field(default_factory=list)
    moved_out: list[int] = field(default_factory=list)
    moved_in: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def total(self) -> int:
        """Number of stream samples."""
        return sum(len(t) for t in self.tasks)

    @property
    def task_ends(self) -> list[int]:
        """Cumulative sample count at the end of each task (``task_ends[-1] == total``)."""
        return np.cumsum([len(t) for t in self.tasks], dtype=np.int64).tolist()

    def task_classes(self, targets: np.ndarray) -> list[list[int]]:
        """Sorted classes present in each task's samples."""
        t = np.asarray(targets)
        return [np.unique(t[np.asarray(task, dtype=np.int64)]).tolist() for task in self.tasks]

    def new_classes(self, targets: np.ndarray) -> list[list[int]]:
        """Classes first seen in each task, in order of first appearance in the stream."""
        t = np.asarray(targets)
        seen: set[int] = set()
        out: list[list[int]] = []
        for task in self.tasks:
            ys = t[np.asarray(task, dtype=np.int64)]
            _, first = np.unique(ys, return_index=True)
            fresh = [int(ys[i]) for i in np.sort(first) if int(ys[i]) not in seen]
            seen.update(fresh)
            out.append(fresh)
        return out

    def exposure_order(self, targets: np.ndarray) -> list[int]:
        """All streamed classes in order of first exposure (head unit j = j-th class seen)."""
        return [c for cls in self.new_classes(targets) for c in cls]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; includes the derived ``total`` and ``task_ends`` for readers of results."""
        out = asdict(self)
        out["total"] = self.total
        out["task_ends"] = self.task_ends
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamPlan:
        fields = {k: v for k, v in data.items() if k not in ("total", "task_ends")}
        return cls(**fields)
