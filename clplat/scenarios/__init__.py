"""Scenario generators: pure functions of (training targets, scenario config, seed) -> StreamPlan.

``build_plan`` is the one door the engine uses; the generators themselves are importable for
tests and notebooks. No model, no dataset images, no global RNG state is touched.
"""

from __future__ import annotations

import numpy as np

from clplat.errors import UserError
from clplat.scenarios.class_incremental import class_incremental_classes, class_incremental_split
from clplat.scenarios.plan import StreamPlan, make_eval_points
from clplat.scenarios.si_blurry import SiBlurryLayout, si_blurry_layout, si_blurry_split


def build_plan(cfg, targets: np.ndarray, num_classes: int, seed: int, eval_period: int) -> StreamPlan:
    """Make the stream plan for ``cfg.kind`` (cfg: :class:`clplat.config.ScenarioConfig`)."""
    if eval_period < 1:
        raise UserError(f"online.eval_period must be >= 1, got {eval_period}")
    t = np.asarray(targets)
    if cfg.kind == "si_blurry":
        lay = si_blurry_layout(t, num_classes, cfg.n_tasks, cfg.disjoint_pct, cfg.blurry_pct, seed,
                               stochastic=cfg.stochastic, fix_dataset_order=cfg.fix_dataset_order)
        plan = StreamPlan(tasks=lay.tasks, num_classes=num_classes, eval_points=[], kind="si_blurry",
                          disjoint_classes=lay.disjoint_classes, blurry_classes=lay.blurry_classes,
                          moved_out=lay.moved_out, moved_in=lay.moved_in, dropped=lay.dropped)
    elif cfg.kind == "class_incremental":
        tasks = class_incremental_split(t, num_classes, cfg.n_tasks, seed, cfg.class_order)
        classes = class_incremental_classes(num_classes, cfg.n_tasks, seed, cfg.class_order)
        zeros = [0] * cfg.n_tasks
        plan = StreamPlan(tasks=tasks, num_classes=num_classes, eval_points=[], kind="class_incremental",
                          disjoint_classes=classes, blurry_classes=[[] for _ in classes],
                          moved_out=zeros, moved_in=list(zeros))
    else:
        raise UserError(f"unknown scenario.kind '{cfg.kind}' (known: si_blurry, class_incremental)")
    if plan.total == 0:
        raise UserError(f"scenario {cfg.kind}: the stream is empty (no training sample of any task class)")
    plan.eval_points = make_eval_points(plan.total, eval_period)
    return plan


__all__ = [
    "SiBlurryLayout",
    "StreamPlan",
    "build_plan",
    "class_incremental_classes",
    "class_incremental_split",
    "make_eval_points",
    "si_blurry_layout",
    "si_blurry_split",
]
