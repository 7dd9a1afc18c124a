"""Scenario generators: pure functions of (training data, scenario config, seed) -> StreamPlan.

Each file of this package registers one ``scenario.kind`` with
``@SCENARIOS.register(kind, config=Model)``; :func:`build_scenario` is the one door the engine
uses. The generators themselves are importable for tests and notebooks. No model and no global RNG
state is touched.
"""

from __future__ import annotations

import numpy as np

from clplat.data.base import ClassificationData
from clplat.errors import UserError
from clplat.scenarios.class_incremental import class_incremental_classes, class_incremental_split
from clplat.scenarios.plan import SCENARIOS, ScenarioConfig, StreamPlan, make_eval_points
from clplat.scenarios.si_blurry import SiBlurryLayout, si_blurry_layout, si_blurry_split


def build_scenario(cfg: ScenarioConfig, data: ClassificationData, seed: int, eval_period: int) -> StreamPlan:
    """Make the stream plan of ``cfg.kind`` over ``data``'s training split, with anytime eval points."""
    if eval_period < 1:
        raise UserError(f"online.eval_period must be >= 1, got {eval_period}")
    builder = SCENARIOS.get(cfg.kind)
    if type(cfg) is not SCENARIOS.config_model(cfg.kind):  # e.g. a bare ``ScenarioConfig()`` default
        cfg = ScenarioConfig.model_validate(cfg.model_dump())
    plan = builder(cfg, data, seed, eval_period)
    if plan.total == 0:
        raise UserError(f"scenario {cfg.kind}: the stream is empty (no training sample of any task class)")
    plan.eval_points = make_eval_points(plan.total, eval_period)
    return plan


def build_plan(cfg: ScenarioConfig, targets: np.ndarray, num_classes: int, seed: int, eval_period: int) -> StreamPlan:
    """:func:`build_scenario` from labels only (for scenarios that need nothing but the targets)."""
    t = np.asarray(targets)
    labels = ClassificationData(name="labels", train=None, test=None, train_targets=t,
                                test_targets=np.zeros(0, dtype=np.int64),
                                class_names=[str(c) for c in range(num_classes)], input_shape=(0, 0, 0))
    return build_scenario(cfg, labels, seed, eval_period)


__all__ = [
    "SCENARIOS",
    "ScenarioConfig",
    "SiBlurryLayout",
    "StreamPlan",
    "build_plan",
    "build_scenario",
    "class_incremental_classes",
    "class_incremental_split",
    "make_eval_points",
    "si_blurry_layout",
    "si_blurry_split",
]
