"""Metrics against a hand-computed three-task example and edge cases."""

from __future__ import annotations

import json
import math

import pytest

from clplat.engine.metrics import (
    EvalRecord,
    a_avg,
    a_last,
    accuracy_matrix,
    anytime_auc,
    anytime_due,
    bwt,
    f_last,
    summarize,
    task_end_records,
)


def rec(samples, task, kind, correct, total):
    return EvalRecord(samples_seen=samples, task_id=task, kind=kind, correct=correct, total=total)


# 4 classes, 3 tasks; task 0 exposes classes 0 and 1, task 1 class 2, task 2 class 3.
RECORDS = [
    rec(10, 0, "anytime", [3, 1, 0, 0], [4, 4, 0, 0]),  # 4/8 = 0.5
    rec(20, 0, "task_end", [4, 2, 0, 0], [4, 4, 0, 0]),  # 6/8 = 0.75; per class 1, .5, -, -
    rec(30, 1, "anytime", [2, 2, 1, 0], [4, 4, 2, 0]),  # 5/10 = 0.5
    rec(40, 1, "task_end", [2, 3, 2, 0], [4, 4, 2, 0]),  # 7/10 = 0.7; per class .5, .75, 1, -
    rec(50, 2, "anytime", [1, 1, 1, 2], [4, 4, 2, 4]),  # 5/14
    rec(60, 2, "task_end", [1, 4, 1, 0], [4, 4, 2, 4]),  # 6/14 = 3/7; per class .25, 1, .5, 0
]
NEW_CLASSES = [[0, 1], [2], [3]]


def test_record_properties_and_roundtrip():
    r = RECORDS[3]
    assert r.accuracy == pytest.approx(0.7)
    assert r.class_accuracy == [0.5, 0.75, 1.0, None]
    assert EvalRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert rec(0, 0, "anytime", [0, 0], [0, 0]).accuracy == 0.0


def test_record_validation():
    with pytest.raises(ValueError, match="kind"):
        rec(0, 0, "final", [0], [1])
    with pytest.raises(ValueError, match="length"):
        rec(0, 0, "anytime", [0], [1, 1])
    with pytest.raises(ValueError, match="correct"):
        rec(0, 0, "anytime", [2], [1])


def test_anytime_auc_uses_anytime_records_only():
    assert anytime_auc(RECORDS) == pytest.approx((0.5 + 0.5 + 5 / 14) / 3)  # = 19/42


def test_a_last_and_a_avg():
    assert a_last(RECORDS) == pytest.approx(3 / 7)
    assert a_avg(RECORDS) == pytest.approx((3 / 4 + 7 / 10 + 3 / 7) / 3)  # = 263/420


def test_f_last_by_hand():
    # class 0: max(1, .5) - .25 = .75; class 1: max(.5, .75) - 1 = -.25;
    # class 2: only evaluated after task 1 (1.0) -> 1 - .5 = .5; class 3: never before the end -> skipped
    assert f_last(RECORDS) == pytest.approx((0.75 - 0.25 + 0.5) / 3)


def test_f_last_skips_classes_never_above_zero():
    records = [rec(1, 0, "task_end", [0, 2], [2, 2]), rec(2, 1, "task_end", [1, 1], [2, 2])]
    # class 0 was 0 before the end -> excluded (its +0.5 gain does not count); class 1: 1 - .5
    assert f_last(records) == pytest.approx(0.5)


def test_accuracy_matrix_and_bwt_by_hand():
    R = accuracy_matrix(RECORDS, NEW_CLASSES)
    assert R[0] == [pytest.approx(0.75), None, None]
    assert R[1] == [pytest.approx(5 / 8), pytest.approx(1.0), None]
    assert R[2] == [pytest.approx(5 / 8), pytest.approx(0.5), pytest.approx(0.0)]
    # BWT = mean(R[2][0] - R[0][0], R[2][1] - R[1][1]) = mean(-1/8, -1/2)
    assert bwt(R) == pytest.approx(-0.3125)


def test_summarize():
    s = summarize(RECORDS, NEW_CLASSES)
    assert set(s) == {"A_auc", "A_avg", "A_last", "F_last", "BWT", "acc_matrix", "n_evals"}
    assert s["A_auc"] == pytest.approx(19 / 42)
    assert s["A_avg"] == pytest.approx(263 / 420)
    assert s["A_last"] == pytest.approx(3 / 7)
    assert s["F_last"] == pytest.approx(1 / 3)
    assert s["BWT"] == pytest.approx(-0.3125)
    assert s["n_evals"] == 6
    json.dumps(s)  # JSON-ready (None, not NaN)


def test_one_task():
    records = [rec(5, 0, "anytime", [1, 0], [2, 2]), rec(8, 0, "task_end", [2, 1], [2, 2])]
    s = summarize(records, [[0, 1]])
    assert s["A_auc"] == pytest.approx(0.25)
    assert s["A_avg"] == s["A_last"] == pytest.approx(0.75)
    assert s["F_last"] is None and s["BWT"] is None
    assert s["acc_matrix"] == [[pytest.approx(0.75)]]


def test_empty_records_raise_clear_error():
    for fn in (anytime_auc, a_last, a_avg, f_last):
        with pytest.raises(ValueError, match="no evaluation records"):
            fn([])
    with pytest.raises(ValueError, match="no evaluation records"):
        summarize([], [[0]])
    with pytest.raises(ValueError, match="empty accuracy matrix"):
        bwt([])


def test_missing_kinds():
    only_end = [rec(1, 0, "task_end", [1], [1])]
    with pytest.raises(ValueError, match="no 'anytime'"):
        anytime_auc(only_end)
    assert summarize(only_end, [[0]])["A_auc"] is None
    with pytest.raises(ValueError, match="no 'task_end'"):
        a_last([rec(1, 0, "anytime", [1], [1])])


def test_duplicate_task_end_keeps_last_and_orders_by_task():
    records = [rec(9, 1, "task_end", [1, 1], [1, 1]), rec(4, 0, "task_end", [0, 0], [1, 0]),
               rec(5, 0, "task_end", [1, 0], [1, 0])]
    ends = task_end_records(records)
    assert [r.samples_seen for r in ends] == [5, 9]
    assert a_avg(records) == pytest.approx(1.0)


def test_bwt_skips_undefined_pairs():
    assert bwt([[0.5, None], [0.25, 0.9]]) == pytest.approx(-0.25)
    assert bwt([[None, None], [0.3, 0.9]]) is None
    assert not math.isnan(bwt([[1.0, None], [1.0, 1.0]]))


# --- when anytime evaluations happen (the official rule) -----------------------------------------


def _schedule(step_sizes: list[int], period: int, eval_at_end: bool = False) -> list[int]:
    """Sample counts after which ``anytime_due`` evaluates, for a stream of these step sizes."""
    total = sum(step_sizes)
    points = list(range(period, total + 1, period))
    seen, nxt, at = 0, 0, []
    for i, n in enumerate(step_sizes):
        seen += n
        if anytime_due(seen, points, nxt, stream_end=i == len(step_sizes) - 1, eval_at_end=eval_at_end):
            at.append(seen)
            nxt += 1
    return at


def test_anytime_points_follow_the_official_rule() -> None:
    # 100 samples in steps of 16 (last step 4), period 20. Official: after a step, evaluate if
    # samples > num_eval, then num_eval += 20. Steps end at 16 32 48 64 80 96 100:
    # 32 > 20 (next 40), 48 > 40 (next 60), 64 > 60 (next 80), 80 is not > 80, 96 > 80 (next 100),
    # 100 is not > 100 -> evaluations at 32, 48, 64, 96 and none at the stream's end.
    steps = [16] * 6 + [4]
    assert _schedule(steps, 20) == [32, 48, 64, 96]
    assert _schedule(steps, 20, eval_at_end=True) == [32, 48, 64, 96, 100]  # the extra end point
    # a step landing exactly on a point waits for the next step (20 is not > 20; 40 > 20, ...):
    # each evaluation is one step late, and the last one falls on the stream's last step
    assert _schedule([20] * 5, 20) == [40, 60, 80, 100]
    # steps longer than the period: one evaluation per step while num_eval catches up
    assert _schedule([50] * 3, 20) == [50, 100, 150]
    # eval_at_end adds nothing when the last step already evaluated
    assert _schedule([16] * 6 + [24], 20, eval_at_end=True) == [32, 48, 64, 96, 120]


def test_a_auc_has_no_stream_end_point_by_default(small_overrides: list[str]) -> None:
    from clplat.config import load_config
    from clplat.engine.experiment import run_experiment
    from tests.conftest import REPO

    er = REPO / "experiments" / "si_blurry_er.yaml"
    runs = {}
    for at_end in (False, True):
        cfg = load_config(er, [*small_overrides, "online.online_iter=1", "online.eval_period=479",
                               f"online.eval_at_end={str(at_end).lower()}", f"name=end{at_end}"])
        runs[at_end] = run_experiment(cfg)
    total = runs[False]["total_samples"]
    assert total == 3 * 479  # the stream's end is itself a multiple of the period
    official = [e for e in runs[False]["evals"] if e["kind"] == "anytime"]
    extra = [e for e in runs[True]["evals"] if e["kind"] == "anytime"]
    assert [e["samples_seen"] > p for e, p in zip(official, (479, 958))] == [True, True]
    assert len(official) == 2 and all(e["samples_seen"] < total for e in official)
    assert extra[:2] == official and len(extra) == 3 and extra[2]["samples_seen"] == total
    acc = [EvalRecord.from_dict(e).accuracy for e in extra]
    assert runs[False]["metrics"]["A_auc"] == pytest.approx(sum(acc[:2]) / 2)
    assert runs[True]["metrics"]["A_auc"] == pytest.approx(sum(acc) / 3)
