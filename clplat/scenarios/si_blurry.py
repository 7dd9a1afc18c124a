"""The Si-Blurry stream (Moon et al., ICCV 2023) and its even-split ancestor, i-Blurry.

A pure function of ``(targets, C, T, N, M, seed)``. All randomness comes from one private CPU
``torch.Generator`` seeded with ``seed`` and is drawn in the order of the official sampler
(``moonjunyyy/Si-Blurry`` ``utils/online_sampler.py``), so one seed yields the official stream
index for index. The draw order is part of the contract; ``docs/scenarios.md`` writes it out and
``tests/test_si_blurry.py`` pins it on a hand-worked example. Do not reorder the draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import Field

from clplat.errors import UserError
from clplat.scenarios.plan import SCENARIOS, ScenarioConfig, StreamPlan, int_targets


@dataclass
class SiBlurryLayout:
    """The stream plus how it was made (what ``describe`` prints).

    ``tasks[i]`` is task i's ordered list of training indices. ``disjoint_classes[i]`` and
    ``blurry_classes[i]`` are the classes task i owns. ``moved_out[i]`` counts samples task i put into
    the shared pool and ``moved_in[i]`` the pooled samples it took back (possibly its own).
    ``dropped`` lists indices that were pooled but never dealt back (i-Blurry leftovers) and
    ``unused_classes`` the classes no task owns (when C is not a multiple of T).
    """

    tasks: list[list[int]]
    disjoint_classes: list[list[int]]
    blurry_classes: list[list[int]]
    moved_out: list[int]
    moved_in: list[int]
    dropped: list[int] = field(default_factory=list)
    unused_classes: list[int] = field(default_factory=list)


def class_counts(n_classes: int, n_tasks: int, disjoint_pct: int) -> tuple[int, int]:
    """``(D, Bn)``: disjoint and blurry class counts, each rounded down to a multiple of T."""
    disjoint = (n_classes * disjoint_pct // 100) // n_tasks * n_tasks
    blurry = (n_classes - disjoint) // n_tasks * n_tasks
    return disjoint, blurry


def si_blurry_split(targets: Sequence[int] | np.ndarray, n_classes: int, n_tasks: int, disjoint_pct: int,
                    blurry_pct: int, seed: int, stochastic: bool = True,
                    fix_dataset_order: bool = False) -> list[list[int]]:
    """Per-task ordered training indices of the Si-Blurry (``stochastic``) or i-Blurry stream.

    ``disjoint_pct`` is N (% of classes seen in one task only); ``blurry_pct`` is M (% of the
    samples of blurry classes moved to random tasks). ``fix_dataset_order`` picks the moved samples
    at random instead of the first ones in dataset order (changes the stream; see the docs).
    ``stochastic=False`` is i-Blurry: equal class counts per task, and the ``len(pool) % T`` pooled
    samples left after the even deal are dropped, as in the official code (see ``dropped``).
    """
    return si_blurry_layout(targets, n_classes, n_tasks, disjoint_pct, blurry_pct, seed,
                            stochastic=stochastic, fix_dataset_order=fix_dataset_order).tasks


def si_blurry_layout(targets: Sequence[int] | np.ndarray, n_classes: int, n_tasks: int, disjoint_pct: int,
                     blurry_pct: int, seed: int, stochastic: bool = True,
                     fix_dataset_order: bool = False) -> SiBlurryLayout:
    """Like :func:`si_blurry_split`, but also returns the class ownership and moved counts."""
    t = _check_args(targets, n_classes, n_tasks, disjoint_pct, blurry_pct)
    n_dis, n_blur = class_counts(n_classes, n_tasks, disjoint_pct)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_classes, generator=g).tolist()
    if stochastic:
        dis_cls = _cut(order[:n_dis], n_tasks, g)
        blur_cls = _cut(order[n_dis:n_dis + n_blur], n_tasks, g)
    else:
        dis_cls = _even(order[:n_dis], n_tasks)
        blur_cls = _even(order[n_dis:n_dis + n_blur], n_tasks)
    dis_idx, blur_idx = _assign(t, n_classes, dis_cls, blur_cls)

    if stochastic:
        n_moved = sum(len(b) for b in blur_idx) * blurry_pct // 100
        k = [0] * n_tasks
        if n_moved > 0:  # nothing is drawn when nothing moves
            # Per-task amounts k_i from sorted random cut points; a task may give (and get) 0.
            cuts = [0, *_sorted_randint(n_moved, n_tasks - 1, g), n_moved]
            k = [cuts[i + 1] - cuts[i] for i in range(n_tasks)]
        blur_idx, taken = _take(blur_idx, k, fix_dataset_order and n_moved > 0, g)
        pool = _shuffle(_flat(taken), g) if n_moved > 0 else []
        deal = k
    else:
        k = [len(b) * blurry_pct // 100 for b in blur_idx]
        blur_idx, taken = _take(blur_idx, k, fix_dataset_order, g)
        pool = _shuffle(_flat(taken), g)  # drawn even when empty, as the official code does
        deal = [len(pool) // n_tasks] * n_tasks
    moved_out = [len(p) for p in taken]

    moved_in = [0] * n_tasks
    pos = 0
    for i in range(n_tasks):
        got = pool[pos:pos + deal[i]]  # comes up short when the pool runs out
        pos += len(got)
        moved_in[i] = len(got)
        blur_idx[i] = blur_idx[i] + got
    dropped = pool[pos:]  # i-Blurry: the len(pool) % T leftovers; Si-Blurry: always empty

    tasks = [_shuffle(dis_idx[i] + blur_idx[i], g) for i in range(n_tasks)]
    return SiBlurryLayout(tasks=tasks, disjoint_classes=dis_cls, blurry_classes=blur_cls,
                          moved_out=moved_out, moved_in=moved_in, dropped=dropped,
                          unused_classes=order[n_dis + n_blur:])


def _check_args(targets: Sequence[int] | np.ndarray, n_classes: int, n_tasks: int, disjoint_pct: int,
                blurry_pct: int) -> np.ndarray:
    t = int_targets(targets)
    if n_tasks < 1:
        raise UserError(f"scenario.n_tasks must be >= 1, got {n_tasks}")
    if n_classes < n_tasks:
        raise UserError(f"scenario.n_tasks={n_tasks} is larger than the number of classes ({n_classes})")
    for name, v in (("disjoint_pct", disjoint_pct), ("blurry_pct", blurry_pct)):
        if not 0 <= v <= 100:
            raise UserError(f"scenario.{name} must be in [0, 100], got {v}")
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise UserError(f"scenario: targets must lie in [0, {n_classes}), got [{t.min()}, {t.max()}]")
    return t


def _sorted_randint(high: int, n: int, g: torch.Generator) -> list[int]:
    return torch.randint(0, high, (n,), generator=g).sort().values.tolist()


def _cut(classes: list[int], n_tasks: int, g: torch.Generator) -> list[list[int]]:
    """Split at T-1 sorted random cut points (drawn only if there is something to split)."""
    if not classes:
        return [[] for _ in range(n_tasks)]
    cuts = [0, *_sorted_randint(len(classes), n_tasks - 1, g), len(classes)]
    return [classes[cuts[i]:cuts[i + 1]] for i in range(n_tasks)]


def _even(classes: list[int], n_tasks: int) -> list[list[int]]:
    per = len(classes) // n_tasks
    return [classes[i * per:(i + 1) * per] for i in range(n_tasks)]


def _assign(t: np.ndarray, n_classes: int, dis_cls: list[list[int]],
            blur_cls: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Each training index to its owner task's disjoint or blurry list, in dataset order."""
    owner = np.full(n_classes, -1, dtype=np.int64)
    blurry = np.zeros(n_classes, dtype=bool)
    for i, cls in enumerate(dis_cls):
        owner[cls] = i
    for i, cls in enumerate(blur_cls):
        owner[cls] = i
        blurry[cls] = True
    task_of, is_blur = owner[t], blurry[t]
    dis = [np.flatnonzero((task_of == i) & ~is_blur).tolist() for i in range(len(dis_cls))]
    blur = [np.flatnonzero((task_of == i) & is_blur).tolist() for i in range(len(dis_cls))]
    return dis, blur


def _take(blur_idx: list[list[int]], k: list[int], randomize: bool,
          g: torch.Generator) -> tuple[list[list[int]], list[list[int]]]:
    """Task i gives up k_i blurry samples to the pool: the first ones in dataset order (official),
    or, with ``randomize``, the first ones of a seeded permutation of its list (one
    ``randperm(len(list_i))`` per task, in task order). Kept samples stay in dataset order."""
    kept, taken = [], []
    for lst, ki in zip(blur_idx, k):
        if randomize:
            perm = torch.randperm(len(lst), generator=g).tolist()
            chosen = set(perm[:ki])
            taken.append([lst[p] for p in perm[:ki]])
            kept.append([x for j, x in enumerate(lst) if j not in chosen])
        else:
            taken.append(lst[:ki])
            kept.append(lst[ki:])
    return kept, taken


def _flat(parts: list[list[int]]) -> list[int]:
    return [x for part in parts for x in part]


def _shuffle(items: list[int], g: torch.Generator) -> list[int]:
    perm = torch.randperm(len(items), generator=g).tolist()
    return [items[p] for p in perm]


# --- registration: ``scenario.kind: si_blurry`` --------------------------------------------------
class SiBlurryConfig(ScenarioConfig):
    n_tasks: int = Field(5, ge=1)
    disjoint_pct: int = Field(50, ge=0, le=100, description="N: % of classes that are disjoint")
    blurry_pct: int = Field(10, ge=0, le=100, description="M: % of blurry-class samples moved")
    stochastic: bool = True
    fix_dataset_order: bool = False


@SCENARIOS.register("si_blurry", config=SiBlurryConfig)
def build_si_blurry(cfg: SiBlurryConfig, data, seed: int, eval_period: int) -> StreamPlan:
    lay = si_blurry_layout(data.train_targets, data.num_classes, cfg.n_tasks, cfg.disjoint_pct, cfg.blurry_pct,
                           seed, stochastic=cfg.stochastic, fix_dataset_order=cfg.fix_dataset_order)
    return StreamPlan(tasks=lay.tasks, num_classes=data.num_classes, eval_points=[], kind="si_blurry",
                      disjoint_classes=lay.disjoint_classes, blurry_classes=lay.blurry_classes,
                      moved_out=lay.moved_out, moved_in=lay.moved_in, dropped=lay.dropped)
