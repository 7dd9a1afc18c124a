"""Avalanche interop: a clplat scenario exported as an Avalanche 0.6 benchmark keeps every sample in
stream order, and ``strategy: avalanche`` runs Avalanche strategies on clplat streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clplat.config import build_config, load_config
from clplat.errors import UserError
from tests.conftest import REPO

pytest.importorskip("avalanche")

from clplat.interop.avalanche import export_benchmark  # noqa: E402

TINY = REPO / "tests/fixtures/sweeps/tiny_er.yaml"


def _sessions_raw(tmp_path: Path, **avalanche: Any) -> dict[str, Any]:
    return {"name": "tiny_sessions", "data": {"dataset": "digits", "image_size": 8},
            "scenario": {"kind": "class_incremental", "n_tasks": 3},
            "regime": "sessions", "sessions": {"base": {"epochs": 0}, "incremental": {"epochs": 0}},
            "backbone": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "strategy": "avalanche", "avalanche": {"lr": 0.005, "train_epochs": 2, **avalanche},
            "logging": {"wandb": "disabled", "progress": False, "runs_dir": str(tmp_path / "runs")}}


def _reference(cfg: Any) -> tuple[Any, Any]:
    """The dataset and plan the engine builds for ``cfg`` (built here independently)."""
    from clplat.data import build_dataset
    from clplat.engine.experiment import seed_all
    from clplat.scenarios import build_scenario

    seed_all(cfg.seed)
    data = build_dataset(cfg.data, cfg.seed)
    return data, build_scenario(cfg.scenario, data, cfg.seed, cfg.online.eval_period)


def _samples(stream: Any) -> tuple[torch.Tensor, list[int]]:
    xs, ys = [], []
    for exp in stream:
        for i in range(len(exp.dataset)):
            x, y, t = exp.dataset[i]
            xs.append(x)
            ys.append(int(y))
            assert t == 0
        assert list(exp.dataset.targets) == ys[-len(exp.dataset):]
    return torch.stack(xs), ys


@pytest.mark.parametrize("granularity", ["batch", "task"])
def test_online_export_keeps_every_sample_in_stream_order(granularity: str) -> None:
    from clplat.engine.driver import plan_batches

    cfg = load_config(TINY)
    data, plan = _reference(cfg)
    out = export_benchmark(cfg, granularity)
    order = [i for t in plan.tasks for i in t]
    x, y = _samples(out.benchmark.train_stream)
    assert len(y) == plan.total == len(order)
    assert torch.equal(x, torch.stack([data.train[i][0] for i in order]))
    assert y == [int(data.train_targets[i]) for i in order]
    if granularity == "batch":  # the engine's stream batches, one experience each
        assert out.train_indices == [b.indices for b in plan_batches(plan.tasks, cfg.online.stream_batch) if b.indices]
    else:
        assert out.train_indices == plan.tasks
    tests = [set(np.asarray(data.test_targets)[idx].tolist()) for idx in out.test_indices]
    assert tests == [set(c) for c in plan.new_classes(data.train_targets)]


def test_sessions_export_is_one_experience_per_session(tmp_path: Path) -> None:
    cfg = build_config(_sessions_raw(tmp_path))
    data, plan = _reference(cfg)
    out = export_benchmark(cfg)
    assert len(out.benchmark.train_stream) == plan.n_tasks == 3
    for exp, idx in zip(out.benchmark.train_stream, plan.tasks, strict=True):
        assert [int(v) for v in exp.dataset.targets] == [int(data.train_targets[i]) for i in idx]
    assert sum(len(e.dataset) for e in out.benchmark.test_stream) == len(data.test_targets)


@pytest.mark.parametrize("name", ["EWC", "ER_ACE"])
def test_avalanche_strategy_runs_on_a_clplat_stream(tmp_path: Path, name: str) -> None:
    from clplat.engine.experiment import run_experiment

    cfg = load_config(TINY, ["strategy=avalanche", f"avalanche.name={name}", "threads=1",
                             f"logging.runs_dir={tmp_path}"])
    res = run_experiment(cfg)
    rd = Path(res["run_dir"])
    assert res["strategy"] == "avalanche" and res["metrics"]["A_last"] > 0.3  # 10 classes: chance 0.1
    for f in ("results.json", "curve.csv", "accuracy_curve.png", "accuracy_matrix.png", "config.yaml"):
        assert (rd / f).is_file(), f
    with pytest.raises(UserError, match="cannot be resumed"):
        from clplat.engine.experiment import resume_experiment

        resume_experiment(rd)


def test_avalanche_strategy_in_the_sessions_regime(tmp_path: Path) -> None:
    from clplat.engine.experiment import run_experiment

    res = run_experiment(build_config(_sessions_raw(tmp_path, name="LwF")))
    assert len(res["session_acc"]) == 3 and res["session_acc"][0] > 50.0


@pytest.mark.parametrize("section,needle", [
    ({"name": "EWCC"}, "unknown Avalanche strategy 'EWCC'"),
    ({"name": "EWC", "kwargs": {"ewc_lambdaa": 1.0}}, "ewc_lambdaa not an argument of EWC"),
    ({"name": "Naive", "kwargs": {"train_epochs": 3}}, "train_epochs not an argument"),
])
def test_bad_avalanche_section_is_one_line(tmp_path: Path, section: dict[str, Any], needle: str) -> None:
    from clplat.engine.experiment import Experiment

    raw = _sessions_raw(tmp_path)
    raw["avalanche"] = section
    with pytest.raises(UserError, match=needle):
        Experiment(build_config(raw))


def test_experiences_are_numbered_so_replay_strategies_replay(tmp_path: Path) -> None:
    """ER-ACE starts replaying only from experience 1 on: each stream batch must be a new
    experience id (a constant 0 silently turned ER-ACE into plain fine-tuning)."""
    from clplat.engine.experiment import Experiment

    exp = Experiment(load_config(TINY, ["strategy=avalanche", "avalanche.name=ER_ACE",
                                        "avalanche.kwargs={mem_size: 50, batch_size_mem: 8}"]))
    from avalanche.core import SupervisedPlugin

    seen: list[tuple[int, bool]] = []

    class Spy(SupervisedPlugin):
        def after_forward(self, strategy: Any, **kwargs: Any) -> None:
            seen.append((strategy.experience.current_experience, strategy.replay_loader is not None))

    s = exp.strategy
    s._template(1, 32).plugins.append(Spy())
    for b in exp.batches[:3]:
        x, y = exp.data.train.__getitems__(b.indices)
        exp.module.tracker.expose(y)
        s.calls = 1
        s.on_stream_batch(x, y, exp.module.context())
    assert seen == [(0, False), (1, True), (2, True)]
