"""Si-Blurry / i-Blurry stream generator: invariants, edge cases and the pinned draw order."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clplat.errors import UserError
from clplat.scenarios.si_blurry import class_counts, si_blurry_layout, si_blurry_split


def reference_split(targets, C, T, N, M, seed, stochastic=True):
    """A deliberately literal re-statement of spec §1.2 (loops, membership tests), kept apart from
    the vectorised implementation so the two can be compared on random inputs."""
    g = torch.Generator().manual_seed(seed)
    D = C * N // 100 // T * T
    B = (C - D) // T * T
    order = torch.randperm(C, generator=g).tolist()
    if stochastic:
        dis = [[] for _ in range(T)]
        if D > 0:
            c = [0] + sorted(torch.randint(0, D, (T - 1,), generator=g).tolist()) + [D]
            dis = [order[c[i]:c[i + 1]] for i in range(T)]
        blu = [[] for _ in range(T)]
        if B > 0:
            c = [0] + sorted(torch.randint(0, B, (T - 1,), generator=g).tolist()) + [B]
            blu = [order[D + c[i]:D + c[i + 1]] for i in range(T)]
    else:
        dis = [order[i * (D // T):(i + 1) * (D // T)] for i in range(T)]
        blu = [order[D + i * (B // T):D + (i + 1) * (B // T)] for i in range(T)]
    di = [[] for _ in range(T)]
    bi = [[] for _ in range(T)]
    for idx, y in enumerate(targets):
        for i in range(T):
            if y in dis[i]:
                di[i].append(idx)
            elif y in blu[i]:
                bi[i].append(idx)
    if stochastic:
        nb = sum(len(b) for b in bi) * M // 100
        if nb > 0:
            c = [0] + sorted(torch.randint(0, nb, (T - 1,), generator=g).tolist()) + [nb]
            k = [c[i + 1] - c[i] for i in range(T)]
            pool = []
            for i in range(T):
                pool += bi[i][:k[i]]
                bi[i] = bi[i][k[i]:]
            pool = [pool[p] for p in torch.randperm(len(pool), generator=g).tolist()]
            for i in range(T):
                bi[i] += pool[:k[i]]
                pool = pool[k[i]:]
    else:
        pool = []
        for i in range(T):
            n = len(bi[i]) * M // 100
            pool += bi[i][:n]
            bi[i] = bi[i][n:]
        pool = [pool[p] for p in torch.randperm(len(pool), generator=g).tolist()]
        k = len(pool) // T
        for i in range(T):
            bi[i] += pool[i * k:(i + 1) * k]
    out = []
    for i in range(T):
        both = di[i] + bi[i]
        out.append([both[p] for p in torch.randperm(len(both), generator=g).tolist()])
    return out


def balanced_targets(C: int, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(C), per_class))


# --- the draw order, worked by hand -------------------------------------------------------------

TINY = [0, 1, 2, 3] * 3  # class c sits at indices c, c+4, c+8


def test_hand_worked_stochastic_draw_order():
    # C=4, T=2, N=50, M=50, seed 4. D = 4*50//100 = 2 (multiple of 2), Bn = 2.
    g = torch.Generator().manual_seed(4)
    assert torch.randperm(4, generator=g).tolist() == [2, 1, 3, 0]  # step 2: order
    # disjoint = [2, 1], blurry = [3, 0]
    assert torch.randint(0, 2, (1,), generator=g).tolist() == [1]  # step 3: disjoint cuts [0, 1, 2]
    # task 0 disjoint [2], task 1 disjoint [1]
    assert torch.randint(0, 2, (1,), generator=g).tolist() == [1]  # step 4: blurry cuts [0, 1, 2]
    # task 0 owns blurry class 3, task 1 owns blurry class 0
    # step 5: disjoint lists [2, 6, 10] | [1, 5, 9]; blurry lists [3, 7, 11] | [0, 4, 8]
    # step 6: NB = 6 * 50 // 100 = 3
    assert torch.randint(0, 3, (1,), generator=g).tolist() == [2]  # cuts [0, 2, 3] -> k = [2, 1]
    # task 0 gives [3, 7] keeps [11]; task 1 gives [0] keeps [4, 8]; pool [3, 7, 0]
    assert torch.randperm(3, generator=g).tolist() == [2, 1, 0]  # pool -> [0, 7, 3]
    # task 0 takes [0, 7] -> blurry [11, 0, 7]; task 1 takes [3] -> blurry [4, 8, 3]
    # step 7: task 0 = [2, 6, 10, 11, 0, 7] permuted; task 1 = [1, 5, 9, 4, 8, 3] permuted
    assert torch.randperm(6, generator=g).tolist() == [0, 2, 4, 5, 3, 1]
    assert torch.randperm(6, generator=g).tolist() == [1, 0, 5, 2, 3, 4]
    expected = [[2, 10, 0, 7, 11, 6], [5, 1, 3, 9, 4, 8]]

    lay = si_blurry_layout(TINY, 4, 2, 50, 50, seed=4)
    assert lay.tasks == expected
    assert lay.disjoint_classes == [[2], [1]]
    assert lay.blurry_classes == [[3], [0]]
    assert lay.moved_out == [2, 1] and lay.moved_in == [2, 1]
    assert si_blurry_split(np.array(TINY), 4, 2, 50, 50, 4) == expected


def test_hand_worked_iblurry_draw_order_and_dropped_leftover():
    # C=4, T=2, N=50, M=50, seed 4, i-Blurry branch; class 0 has one extra sample (index 12).
    targets = TINY + [0]
    g = torch.Generator().manual_seed(4)
    assert torch.randperm(4, generator=g).tolist() == [2, 1, 3, 0]
    # even split: disjoint rows [[2], [1]], blurry rows [[3], [0]] (no random cut)
    # task 0 blurry [3, 7, 11]: first 3*50//100 = 1 -> pool [3], keeps [7, 11]
    # task 1 blurry [0, 4, 8, 12]: first 4*50//100 = 2 -> pool [3, 0, 4], keeps [8, 12]
    assert torch.randperm(3, generator=g).tolist() == [2, 0, 1]  # pool -> [4, 3, 0]
    # k = 3 // 2 = 1: task 0 takes [4], task 1 takes [3]; index 0 is dropped
    assert torch.randperm(6, generator=g).tolist() == [2, 5, 0, 3, 1, 4]  # [2, 6, 10, 7, 11, 4]
    assert torch.randperm(6, generator=g).tolist() == [4, 2, 5, 0, 3, 1]  # [1, 5, 9, 8, 12, 3]
    lay = si_blurry_layout(targets, 4, 2, 50, 50, seed=4, stochastic=False)
    assert lay.tasks == [[10, 4, 2, 7, 6, 11], [12, 9, 3, 1, 8, 5]]
    assert lay.dropped == [0]
    assert lay.moved_out == [1, 2] and lay.moved_in == [1, 1]


def test_hand_worked_fix_dataset_order():
    g = torch.Generator().manual_seed(4)
    torch.randperm(4, generator=g)
    torch.randint(0, 2, (1,), generator=g)
    torch.randint(0, 2, (1,), generator=g)
    assert torch.randint(0, 3, (1,), generator=g).tolist() == [2]  # k = [2, 1], as above
    # the fix: one randperm per task over its blurry list, the first k_i of it are moved
    assert torch.randperm(3, generator=g).tolist() == [2, 1, 0]  # task 0 [3, 7, 11]: gives [11, 7]
    assert torch.randperm(3, generator=g).tolist() == [0, 2, 1]  # task 1 [0, 4, 8]: gives [0]
    assert torch.randperm(3, generator=g).tolist() == [1, 0, 2]  # pool [11, 7, 0] -> [7, 11, 0]
    # task 0 blurry [3] + [7, 11]; task 1 blurry [4, 8] + [0]
    assert torch.randperm(6, generator=g).tolist() == [5, 4, 1, 2, 0, 3]  # [2, 6, 10, 3, 7, 11]
    assert torch.randperm(6, generator=g).tolist() == [1, 0, 2, 4, 3, 5]  # [1, 5, 9, 4, 8, 0]
    assert si_blurry_split(TINY, 4, 2, 50, 50, 4, fix_dataset_order=True) == [
        [11, 7, 6, 10, 2, 3], [5, 1, 9, 8, 4, 0]]


# --- agreement with the literal reference -------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(C=st.integers(1, 20), T=st.integers(1, 6), N=st.integers(0, 100), M=st.integers(0, 100),
       seed=st.integers(0, 2**31 - 1), stochastic=st.booleans(),
       targets=st.lists(st.integers(0, 19), max_size=120))
def test_matches_literal_reference(C, T, N, M, seed, stochastic, targets):
    targets = [y % C for y in targets]
    if T > C:
        with pytest.raises(UserError):
            si_blurry_split(targets, C, T, N, M, seed, stochastic=stochastic)
        return
    got = si_blurry_split(np.asarray(targets, dtype=np.int64), C, T, N, M, seed, stochastic=stochastic)
    assert got == reference_split(targets, C, T, N, M, seed, stochastic)


# --- invariants ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(C=st.integers(2, 30), T=st.integers(1, 6), N=st.integers(0, 100), M=st.integers(0, 100),
       seed=st.integers(0, 10**6), per_class=st.integers(1, 12), fix=st.booleans())
def test_stochastic_invariants(C, T, N, M, seed, per_class, fix):
    if T > C:
        return
    targets = balanced_targets(C, per_class, seed % 7)
    lay = si_blurry_layout(targets, C, T, N, M, seed, fix_dataset_order=fix)
    D, B = class_counts(C, T, N)
    streamed = [i for task in lay.tasks for i in task]
    # every sample of an owned class appears exactly once; unowned classes never appear
    owned = {c for cls in lay.disjoint_classes + lay.blurry_classes for c in cls}
    assert sorted(streamed) == [i for i, y in enumerate(targets) if y in owned]
    assert set(lay.unused_classes) == set(range(C)) - owned and len(owned) == D + B
    assert lay.dropped == []
    # disjoint classes appear only in their own task
    for i, cls in enumerate(lay.disjoint_classes):
        for j, task in enumerate(lay.tasks):
            if j != i:
                assert not set(targets[task]) & set(cls)
    # moved count is M% of the blurry samples (Si-Blurry never drops: pool dealt back in full)
    n_blurry = int(np.isin(targets, [c for cls in lay.blurry_classes for c in cls]).sum())
    assert sum(lay.moved_out) == sum(lay.moved_in)
    assert sum(lay.moved_out) <= n_blurry * M // 100
    # unmoved blurry samples stay in their owner task
    owner = {c: i for i, cls in enumerate(lay.blurry_classes) for c in cls}
    away = sum(1 for i, task in enumerate(lay.tasks) for idx in task
               if targets[idx] in owner and owner[targets[idx]] != i)
    assert away <= sum(lay.moved_in)


def test_moved_count_is_exactly_m_percent():
    # NB = M% of all blurry samples; exact whenever every task owns at least NB blurry samples
    targets = balanced_targets(10, 50)
    exact = 0
    for seed in range(20):
        lay = si_blurry_layout(targets, 10, 2, 0, 10, seed)
        nb = 500 * 10 // 100
        sizes = [50 * len(c) for c in lay.blurry_classes]
        if min(sizes) >= nb:
            assert sum(lay.moved_out) == sum(lay.moved_in) == nb == 50
            exact += 1
        else:  # the documented shortfall when a task's list is shorter than its k_i
            assert sum(lay.moved_out) <= nb
    assert exact >= 5


def test_cifar100_shape_defaults():
    targets = balanced_targets(100, 500)
    tasks = si_blurry_split(targets, 100, 5, 50, 10, seed=1)
    assert sum(map(len, tasks)) == 50_000
    assert sorted(i for t in tasks for i in t) == list(range(50_000))


def test_task_class_counts_vary_with_seed():
    targets = balanced_targets(20, 5)
    counts = {tuple(len(set(targets[t])) for t in si_blurry_split(targets, 20, 4, 50, 10, s))
              for s in range(12)}
    assert len(counts) > 3


def test_same_seed_same_stream_different_seed_different_stream():
    targets = balanced_targets(10, 20)
    a = si_blurry_split(targets, 10, 3, 40, 20, seed=7)
    assert a == si_blurry_split(targets.tolist(), 10, 3, 40, 20, seed=7)
    assert a != si_blurry_split(targets, 10, 3, 40, 20, seed=8)


# --- edge cases ---------------------------------------------------------------------------------

def test_n0_all_blurry():
    targets = balanced_targets(10, 10)
    lay = si_blurry_layout(targets, 10, 5, 0, 10, seed=3)
    assert lay.disjoint_classes == [[]] * 5
    assert sum(map(len, lay.blurry_classes)) == 10
    assert sorted(i for t in lay.tasks for i in t) == list(range(100))


def test_n100_all_disjoint_nothing_moves():
    targets = balanced_targets(10, 10)
    lay = si_blurry_layout(targets, 10, 5, 100, 50, seed=3)
    assert lay.blurry_classes == [[]] * 5
    assert lay.moved_out == [0] * 5 and lay.moved_in == [0] * 5
    for i, task in enumerate(lay.tasks):
        assert set(targets[task]) == set(lay.disjoint_classes[i])


def test_m0_nothing_moves_and_blurry_stay_home():
    targets = balanced_targets(12, 6)
    lay = si_blurry_layout(targets, 12, 3, 50, 0, seed=5)
    assert sum(lay.moved_out) == 0
    for i, task in enumerate(lay.tasks):
        assert set(targets[task]) == set(lay.disjoint_classes[i]) | set(lay.blurry_classes[i])
    # with M=0 no draw happens in step 6: the stream equals the reference without it
    assert lay.tasks == reference_split(targets.tolist(), 12, 3, 50, 0, 5)


def test_classes_not_multiple_of_tasks_drops_a_class():
    # spec example: C=10, T=3, N=20 -> D=0, Bn=9, one class in no task
    targets = balanced_targets(10, 4)
    assert class_counts(10, 3, 20) == (0, 9)
    lay = si_blurry_layout(targets, 10, 3, 20, 10, seed=1)
    assert len(lay.unused_classes) == 1
    streamed = {int(targets[i]) for t in lay.tasks for i in t}
    assert lay.unused_classes[0] not in streamed and len(streamed) == 9


def test_iblurry_even_split_and_documented_drop():
    targets = balanced_targets(10, 7)
    lay = si_blurry_layout(targets, 10, 5, 50, 30, seed=2, stochastic=False)
    assert [len(c) for c in lay.disjoint_classes] == [1] * 5
    assert [len(c) for c in lay.blurry_classes] == [1] * 5
    assert lay.moved_out == [7 * 30 // 100] * 5  # 2 per task, pool of 10, 2 dealt to each
    assert lay.moved_in == [2] * 5 and lay.dropped == []
    lay = si_blurry_layout(targets, 10, 3, 40, 50, seed=2, stochastic=False)  # D=3, Bn=6
    streamed = sorted(i for t in lay.tasks for i in t)
    owned = {c for cls in lay.disjoint_classes + lay.blurry_classes for c in cls}
    expected = sorted(set(i for i, y in enumerate(targets) if y in owned) - set(lay.dropped))
    assert streamed == expected
    assert len(lay.dropped) == sum(lay.moved_out) % 3


def test_single_task_contains_everything():
    targets = balanced_targets(6, 3)
    (task,) = si_blurry_split(targets, 6, 1, 50, 10, seed=0)
    assert sorted(task) == list(range(18))


def test_fix_dataset_order_spreads_moved_samples_over_classes():
    # class-grouped dataset order (ImageFolder): the official rule moves samples of few classes
    targets = np.repeat(np.arange(20), 30)
    base = si_blurry_layout(targets, 20, 2, 0, 20, seed=11)
    fixed = si_blurry_layout(targets, 20, 2, 0, 20, seed=11, fix_dataset_order=True)
    assert base.blurry_classes == fixed.blurry_classes and base.moved_out == fixed.moved_out

    def moved_classes(lay):
        owner = {c: i for i, cls in enumerate(lay.blurry_classes) for c in cls}
        return {int(targets[x]) for i, t in enumerate(lay.tasks) for x in t if owner[int(targets[x])] != i}

    assert len(moved_classes(fixed)) > len(moved_classes(base))
    assert sorted(i for t in fixed.tasks for i in t) == list(range(600))


def test_default_off_equals_official_rule_with_counter():
    targets = balanced_targets(8, 9, seed=3)
    a = si_blurry_split(targets, 8, 2, 50, 25, seed=9)
    assert a == reference_split(targets.tolist(), 8, 2, 50, 25, 9)
    assert Counter(i for t in a for i in t) == Counter(range(72))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_tasks=0), "n_tasks"),
    (dict(n_tasks=11), "larger than"),
    (dict(disjoint_pct=101), "disjoint_pct"),
    (dict(blurry_pct=-1), "blurry_pct"),
])
def test_bad_arguments_raise_user_error(kwargs, match):
    args = dict(n_classes=10, n_tasks=2, disjoint_pct=50, blurry_pct=10, seed=0)
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        si_blurry_split(np.arange(10), **args)


def test_targets_out_of_range():
    with pytest.raises(UserError, match="lie in"):
        si_blurry_split([0, 1, 10], 10, 2, 50, 10, 0)


# --- describe CLI -------------------------------------------------------------------------------

def _write_config(tmp_path, body: str):
    path = tmp_path / "exp.yaml"
    path.write_text(body)
    return str(path)


def test_describe_cli_prints_tasks(tmp_path, capsys):
    from clplat.scenarios.__main__ import main

    cfg = _write_config(tmp_path, "seed: 2\ndata: {dataset: digits}\nstrategy: finetune\nscenario: "
                                  "{kind: si_blurry, n_tasks: 3, disjoint_pct: 40, blurry_pct: 20}\n")
    assert main(["describe", cfg, "online.eval_period=100"]) == 0
    out = capsys.readouterr().out
    assert "3 tasks, " in out and "scenario si_blurry" in out
    assert "task 2: disjoint classes" in out and "moved samples:" in out and "every 100 samples" in out
    assert main(["describe", cfg, "scenario.n_tasks=2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["tasks"]) == 2 and plan["kind"] == "si_blurry"


def test_describe_cli_errors_are_one_line(tmp_path, capsys):
    from clplat.scenarios.__main__ import main

    assert main(["describe", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    cfg = _write_config(tmp_path, "data: {dataset: digits}\nstrategy: finetune\nscenario: {n_tasks: 11}\n")
    assert main(["describe", cfg]) == 2
    assert "larger than the number of classes" in capsys.readouterr().err
    assert main(["describe"]) == 2


# --- golden fixture from the official sampler ---------------------------------------------------

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "si_blurry_golden.json"
GOLDEN_CASES = json.loads(GOLDEN.read_text())["cases"]


def test_golden_fixture_has_provenance() -> None:
    prov = json.loads(GOLDEN.read_text())["provenance"]
    assert prov["repo"].endswith("moonjunyyy/Si-Blurry") and len(prov["commit"]) == 40
    assert prov["file"] == "utils/online_sampler.py" and "OnlineSampler" in prov["function"]
    assert {c["stochastic"] for c in GOLDEN_CASES} == {True, False} and len({c["seed"] for c in GOLDEN_CASES}) >= 3


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
def test_matches_official_sampler_index_for_index(case: dict) -> None:
    """The stream (and class ownership) equals what the official ``OnlineSampler`` produced for the
    same labels and seed, recorded in ``tests/fixtures/si_blurry_golden.json``."""
    lay = si_blurry_layout(np.asarray(case["targets"]), case["n_classes"], case["n_tasks"], case["disjoint_pct"],
                           case["blurry_pct"], case["seed"], stochastic=case["stochastic"])
    assert lay.tasks == case["tasks"]
    assert lay.disjoint_classes == case["disjoint_classes"]
    assert lay.blurry_classes == case["blurry_classes"]
