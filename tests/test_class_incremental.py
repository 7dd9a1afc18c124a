"""Class-incremental split, the StreamPlan and build_plan dispatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clplat.config import ScenarioConfig
from clplat.errors import UserError
from clplat.scenarios import StreamPlan, build_plan, make_eval_points, si_blurry_split
from clplat.scenarios.class_incremental import class_incremental_classes, class_incremental_split


def targets_for(C: int, per_class: int) -> np.ndarray:
    return np.random.default_rng(1).permutation(np.repeat(np.arange(C), per_class))


def test_hand_worked_contiguous():
    targets = [0, 1, 2, 3, 0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    # contiguous: no class draw; tasks {0, 1} -> indices [0, 1, 4, 5]; {2, 3} -> [2, 3, 6, 7]
    p0 = torch.randperm(4, generator=g).tolist()
    p1 = torch.randperm(4, generator=g).tolist()
    expected = [[[0, 1, 4, 5][i] for i in p0], [[2, 3, 6, 7][i] for i in p1]]
    assert class_incremental_split(targets, 4, 2, seed=0, class_order="contiguous") == expected
    assert class_incremental_classes(4, 2, 0, "contiguous") == [[0, 1], [2, 3]]


def test_seeded_order_uses_randperm_first():
    g = torch.Generator().manual_seed(5)
    order = torch.randperm(6, generator=g).tolist()
    assert class_incremental_classes(6, 3, 5) == [order[0:2], order[2:4], order[4:6]]


@settings(max_examples=50, deadline=None)
@given(C=st.integers(1, 25), T=st.integers(1, 8), per=st.integers(1, 6), seed=st.integers(0, 10**6),
       order=st.sampled_from(["seeded", "contiguous"]))
def test_invariants(C, T, per, seed, order):
    targets = targets_for(C, per)
    if T > C:
        with pytest.raises(UserError):
            class_incremental_split(targets, C, T, seed, order)
        return
    tasks = class_incremental_split(targets, C, T, seed, order)
    classes = class_incremental_classes(C, T, seed, order)
    assert len(tasks) == T
    assert sorted(i for t in tasks for i in t) == list(range(len(targets)))
    sizes = [len(c) for c in classes]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # C not multiple of T
    for task, cls in zip(tasks, classes):
        assert set(targets[task]) == set(cls)  # each class in exactly one task
    assert tasks == class_incremental_split(targets, C, T, seed, order)


def test_samples_are_shuffled_within_task_and_seed_matters():
    targets = targets_for(10, 20)
    a = class_incremental_split(targets, 10, 2, seed=1)
    assert any(t != sorted(t) for t in a)
    assert a != class_incremental_split(targets, 10, 2, seed=2)


def test_bad_class_order():
    with pytest.raises(UserError, match="class_order"):
        class_incremental_split([0, 1], 2, 1, 0, class_order="random")


# --- StreamPlan ---------------------------------------------------------------------------------

def test_plan_derived_fields():
    targets = np.array([5, 5, 1, 2, 1, 0, 3, 0])
    plan = StreamPlan(tasks=[[3, 0, 2], [4, 6, 5, 1], [7]], num_classes=6, eval_points=make_eval_points(8, 3))
    assert plan.total == 8 and plan.task_ends == [3, 7, 8]
    assert plan.eval_points == [3, 6]
    assert plan.task_classes(targets) == [[1, 2, 5], [0, 1, 3, 5], [0]]
    # first appearance order: task 0 streams 2, 5, 1; task 1 brings 3 then 0
    assert plan.new_classes(targets) == [[2, 5, 1], [3, 0], []]
    assert plan.exposure_order(targets) == [2, 5, 1, 3, 0]
    d = plan.to_dict()
    assert d["total"] == 8 and d["task_ends"] == [3, 7, 8]
    assert StreamPlan.from_dict(json.loads(json.dumps(d))) == plan


def test_eval_points():
    assert make_eval_points(1000, 100)[-1] == 1000 and len(make_eval_points(1000, 100)) == 10
    assert make_eval_points(999, 100)[-1] == 900
    assert make_eval_points(50, 100) == []
    with pytest.raises(ValueError):
        make_eval_points(10, 0)


def test_build_plan_dispatch():
    targets = targets_for(10, 12)
    sb = build_plan(ScenarioConfig(kind="si_blurry", n_tasks=3, disjoint_pct=40, blurry_pct=20),
                    targets, 10, seed=4, eval_period=25)
    assert sb.kind == "si_blurry"
    assert sb.tasks == si_blurry_split(targets, 10, 3, 40, 20, 4)
    assert sb.eval_points == list(range(25, sb.total + 1, 25))
    assert sum(sb.moved_out) == sum(sb.moved_in) > 0
    ci = build_plan(ScenarioConfig(kind="class_incremental", n_tasks=5, class_order="contiguous"),
                    targets, 10, seed=4, eval_period=40)
    assert ci.kind == "class_incremental" and ci.total == 120
    assert ci.task_classes(targets) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert ci.disjoint_classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    iblurry = build_plan(ScenarioConfig(n_tasks=2, stochastic=False, fix_dataset_order=True),
                         targets, 10, seed=4, eval_period=40)
    assert iblurry.tasks == si_blurry_split(targets, 10, 2, 50, 10, 4, stochastic=False,
                                            fix_dataset_order=True)


def test_build_plan_errors():
    with pytest.raises(UserError, match="empty"):
        build_plan(ScenarioConfig(n_tasks=2), np.array([], dtype=np.int64), 4, 0, 10)
    with pytest.raises(UserError, match="eval_period"):
        build_plan(ScenarioConfig(n_tasks=2), np.arange(4), 4, 0, 0)
