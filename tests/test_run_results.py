"""benchmarks/run_results.py: method configs, paired differences, updates per task, and the
head-vs-features probe (its head accuracy must equal the run's own A_last)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("run_results", REPO / "benchmarks" / "run_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rr = _module()


def test_method_configs() -> None:
    from clplat.config import build_config

    head = rr.method_config("headline", "mvp_no_gsf", 3)
    assert head["data"]["first_class"] == 100 and head["mvp"]["use_gsf"] is False and head["seed"] == 3
    digits = build_config(rr.method_config("digits", "er", 2))
    assert digits.data.dataset == "digits" and digits.strategy_config.memory_size == rr.DIGITS_MEMORY
    assert digits.augment.cutmix_prob == 0.5 and digits.online.eval_period == 100 and digits.threads == 1
    for method in rr.METHODS:  # every method config validates on both streams
        for table in ("headline", "digits"):
            build_config(rr.method_config(table, method, 1))


def _run(seed: int, a_auc: float, a_last: float) -> dict:
    return {"seed": seed, "metrics": {"A_auc": a_auc, "A_avg": 0.0, "A_last": a_last, "F_last": None},
            "probe": {"head_acc": a_last, "ncm_acc": 0.9}, "config": {"strategy": "mvp", "mvp": {}},
            "task_ends": [10, 45], "evals": [{"kind": "anytime"}] * 3 + [{"kind": "task_end"}] * 2}


def test_paired_differences_are_per_seed() -> None:
    """Seed 1 favours mvp, seed 2 the reference: the paired mean is the mean of per-seed gaps."""
    results = {"mvp": [_run(1, 0.50, 0.40), _run(2, 0.30, 0.20)],
               "finetune": [_run(2, 0.35, 0.10), _run(1, 0.40, 0.30)]}
    lines = [ln for ln in rr.paired_table(results).splitlines() if ln.startswith("| mvp − finetune")]
    auc, last = lines
    # A_auc diffs: +10, -5 -> mean 2.5, sd 15/sqrt 2 = 10.61; 95 % CI 2.5 +- t(0.975, 1) * 7.5 = +-95.30
    assert "| 2.50 ± 10.61 |" in auc and "[-92.80, +97.80]" in auc and "| 1/2 |" in auc
    assert "| 10.00 ± 0.00 |" in last and "| 2/2 |" in last


def test_stream_table_counts_updates_per_task() -> None:
    run = _run(1, 0.5, 0.5)
    run["config"]["online"] = {"stream_batch": 4, "online_iter": 3}
    row = rr.stream_table([run]).splitlines()[-1]
    # tasks of 10 and 35 samples: ceil(10/4)*3 = 9, ceil(35/4)*3 = 27
    assert row == "| 1 | 10 / 35 | 9 / 27 | 36 | 3 |"


@pytest.mark.slow
def test_probe_head_accuracy_is_the_runs_a_last(tmp_path) -> None:
    from clplat.run import main

    code = main([str(REPO / "experiments" / "si_blurry_er.yaml"), "logging.wandb=disabled", "logging.progress=false",
                 f"logging.runs_dir={tmp_path}", "name=p", "checkpoint_every=0", "online.eval_period=400",
                 "online.online_iter=1", "online.stream_batch=32", "threads=1"])
    assert code == 0
    out = rr.probe(tmp_path / "p", per_class=20)
    a_last = json.loads((tmp_path / "p" / "results.json").read_text())["metrics"]["A_last"]
    assert out["head_acc"] == pytest.approx(a_last, abs=1e-9) and out["n_classes"] == 10
    assert 0.3 < out["ncm_acc"] <= 1.0 and np.isfinite(out["ncm_acc"])
