"""Class-incremental (and task-incremental) splits: each class belongs to exactly one task.

A pure function of ``(targets, C, T, seed, class_order)``. Draw order on one private CPU
``torch.Generator(seed)``: ``randperm(C)`` for the class order (only when ``class_order="seeded"``),
then one ``randperm(len(task_i))`` per task, in task order, for the order inside the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from clplat.errors import UserError
from clplat.scenarios.plan import SCENARIOS, ScenarioConfig, StreamPlan, class_order_of


def class_incremental_classes(n_classes: int, n_tasks: int, seed: int,
                              class_order: Literal["seeded", "contiguous"] = "seeded") -> list[list[int]]:
    """Classes of each task: ``C`` classes in contiguous or seeded order, cut into T chunks whose
    sizes differ by at most one (the first ``C % T`` tasks get the extra class)."""
    return _classes(n_classes, n_tasks, class_order, torch.Generator().manual_seed(int(seed)))


def class_incremental_split(targets: Sequence[int] | np.ndarray, n_classes: int, n_tasks: int, seed: int,
                            class_order: Literal["seeded", "contiguous"] = "seeded") -> list[list[int]]:
    """Per-task ordered training indices; a task holds every sample of its classes, shuffled."""
    t = np.asarray(targets)
    if t.ndim != 1:
        raise UserError(f"scenario: targets must be 1-D, got shape {t.shape}")
    t = t.astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise UserError(f"scenario: targets must lie in [0, {n_classes}), got [{t.min()}, {t.max()}]")
    g = torch.Generator().manual_seed(int(seed))
    tasks = []
    for cls in _classes(n_classes, n_tasks, class_order, g):
        idx = np.flatnonzero(np.isin(t, cls))
        perm = torch.randperm(len(idx), generator=g).numpy()
        tasks.append(idx[perm].tolist())
    return tasks


def _classes(n_classes: int, n_tasks: int, class_order: str, g: torch.Generator) -> list[list[int]]:
    if n_tasks < 1:
        raise UserError(f"scenario.n_tasks must be >= 1, got {n_tasks}")
    if n_tasks > n_classes:
        raise UserError(f"scenario.n_tasks={n_tasks} is larger than the number of classes ({n_classes})")
    order = class_order_of(n_classes, class_order, g)
    return [chunk.tolist() for chunk in np.array_split(np.asarray(order, dtype=np.int64), n_tasks)]


# --- registration: ``scenario.kind: class_incremental`` ------------------------------------------
class ClassIncrementalConfig(ScenarioConfig):
    n_tasks: int = Field(5, ge=1)
    class_order: Literal["seeded", "contiguous"] = "seeded"


@SCENARIOS.register("class_incremental", config=ClassIncrementalConfig)
def build_class_incremental(cfg: ClassIncrementalConfig, data, seed: int, eval_period: int) -> StreamPlan:
    n = data.num_classes
    tasks = class_incremental_split(data.train_targets, n, cfg.n_tasks, seed, cfg.class_order)
    classes = class_incremental_classes(n, cfg.n_tasks, seed, cfg.class_order)
    zeros = [0] * cfg.n_tasks
    return StreamPlan(tasks=tasks, num_classes=n, eval_points=[], kind="class_incremental",
                      disjoint_classes=classes, blurry_classes=[[] for _ in classes],
                      moved_out=zeros, moved_in=list(zeros))


# --- ``scenario.kind: task_incremental``: the same split; the task of every class is known ---------
class TaskIncrementalConfig(ClassIncrementalConfig):
    """Equal class blocks per task. Task labels are given only to the task-incremental (TIL)
    evaluation; training and the class-incremental (CIL) evaluation never see them."""


@SCENARIOS.register("task_incremental", config=TaskIncrementalConfig)
def build_task_incremental(cfg: TaskIncrementalConfig, data, seed: int, eval_period: int) -> StreamPlan:
    if data.num_classes % cfg.n_tasks:
        raise UserError(f"scenario.n_tasks={cfg.n_tasks} does not divide the {data.num_classes} classes "
                        "(task_incremental needs equal tasks; class_incremental splits unevenly)")
    plan = build_class_incremental(cfg, data, seed, eval_period)
    plan.kind = "task_incremental"
    return plan
