"""clplat scenarios as Avalanche 0.6 benchmarks, and Avalanche strategies built by name.

Why lazily imported: avalanche-lib is an optional extra (``pip install -e '.[avalanche]'``; it
pins nothing and drags TensorBoard, pytorchcv, qpsolvers), so ``import clplat`` never needs it and
a missing install is one error line.

:func:`export_benchmark` turns the plan the engine would run into a ``CLScenario``: the train
stream's experiences are the online stream batches (``granularity="batch"``, Avalanche's online
protocol) or the tasks / sessions (``"task"``), each a lazy subset of clplat's own dataset in
stream order, so every sample and the order are kept. The test stream has one experience per task:
the test samples of the classes that task introduced. Labels are the original class ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Subset

from clplat.errors import UserError


def require_avalanche() -> Any:
    """Import avalanche (quietly: it warns about its own deprecations) or fail with one line."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import avalanche
            import avalanche.benchmarks  # noqa: F401
            import avalanche.training  # noqa: F401
    except ModuleNotFoundError as err:
        raise UserError(f"the Avalanche interop needs avalanche-lib (missing '{err.name}'): "
                        "pip install -e '.[avalanche]'") from None
    return avalanche


def av_dataset(base: Any, indices: list[int], targets: list[int], task_label: int = 0) -> Any:
    """A lazy Avalanche classification dataset over ``base[indices]`` (order kept), with
    ``targets`` and a constant task label (DER and task-aware plugins need one)."""
    require_avalanche()
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset

    return _make_taskaware_classification_dataset(Subset(base, list(indices)), targets=list(targets),
                                                  task_labels=task_label)


@dataclass
class ExportedStream:
    """The benchmark plus the clplat indices behind each experience (for checks and joins)."""

    benchmark: Any
    train_indices: list[list[int]]
    test_indices: list[list[int]]
    task_of_experience: list[int]


def _experiences(plan: Any, granularity: str, stream_batch: int) -> tuple[list[list[int]], list[int]]:
    if granularity == "task":
        return [list(t) for t in plan.tasks], list(range(plan.n_tasks))
    if granularity != "batch":
        raise UserError(f"granularity must be 'batch' or 'task', not {granularity!r}")
    from clplat.engine.driver import plan_batches

    batches = [b for b in plan_batches(plan.tasks, stream_batch) if b.indices]
    return [list(b.indices) for b in batches], [b.task_id for b in batches]


def export_benchmark(cfg: Any, granularity: str | None = None) -> ExportedStream:
    """Export the scenario of experiment config ``cfg`` (a :class:`clplat.config.Config`) as an
    Avalanche benchmark. ``granularity`` defaults to ``batch`` for online runs (experience = one
    ``online.stream_batch``) and ``task`` for sessions runs (experience = one session)."""
    require_avalanche()
    import numpy as np
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    from clplat.data import build_dataset
    from clplat.engine.experiment import seed_all
    from clplat.scenarios import build_scenario

    seed_all(cfg.seed)  # the same draws as the engine: same plan for the same seed
    data = build_dataset(cfg.data, cfg.seed)
    plan = build_scenario(cfg.scenario, data, cfg.seed, cfg.online.eval_period)
    gran = granularity or ("task" if cfg.regime == "sessions" else "batch")
    train_idx, task_of = _experiences(plan, gran, cfg.online.stream_batch)
    ytr, yte = np.asarray(data.train_targets), np.asarray(data.test_targets)
    train = [av_dataset(data.train, idx, [int(v) for v in ytr[idx]]) for idx in train_idx]
    test_idx = []
    for classes in plan.new_classes(data.train_targets):
        test_idx.append([int(i) for i in np.flatnonzero(np.isin(yte, list(classes)))])
    test = [av_dataset(data.test, idx, [int(v) for v in yte[idx]]) for idx in test_idx]
    bench = benchmark_from_datasets(train=train, test=test)
    return ExportedStream(bench, train_idx, test_idx, task_of)
