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
    # the headline's extra row: DualPrompt's config without CutMix, titled, right after DualPrompt
    nocut = build_config(rr.method_config("headline", "dualprompt_nocutmix", 1))
    assert nocut.strategy == "dualprompt" and nocut.augment.cutmix_prob == 0
    assert build_config(rr.method_config("headline", "dualprompt", 1)).augment.cutmix_prob == 0.5
    names = list(rr._methods("headline"))
    assert names[names.index("dualprompt") + 1 : names.index("dualprompt") + 3] == ["dualprompt_nocutmix",
                                                                                  "finetune_nocutmix"]
    assert build_config(rr.method_config("headline", "finetune_nocutmix", 1)).augment.cutmix_prob == 0
    assert "dualprompt_nocutmix" not in rr._methods("digits")
    assert all(rr._title(m, []) for m in names)


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


def test_fscil_method_configs() -> None:
    """Same data and sessions for every FSCIL method; each ablation flips only its switch."""
    from clplat.config import build_config

    cfgs = {m: build_config(rr.method_config("fscil", m, 4)) for m in rr.FSCIL_METHODS}
    for c in cfgs.values():
        assert c.seed == 4 and c.threads == 1 and c.data.first_class == 100 and c.scenario.base_classes == 60
        assert (c.scenario.ways, c.scenario.shots, c.scenario.n_sessions) == (5, 5, 8)
    assert cfgs["coact_no_contrastive"].strategy_config.use_contrastive is False
    assert cfgs["coact_no_inc_tuning"].strategy_config.incremental_tuning is False
    assert cfgs["coact_release_head"].strategy_config.classifier == "dot"
    assert cfgs["coact"].strategy_config.use_contrastive and cfgs["coact"].strategy_config.controlled_ft
    assert cfgs["lora_finetune"].strategy == "lora_finetune" and cfgs["finetune"].strategy == "finetune"


def _fscil_run(seed: int, acc: list[float], base: float, novel: float) -> dict:
    hm = 2 * base * novel / (base + novel)
    return {"seed": seed, "session_acc": acc, "a_avg": float(np.mean(acc)), "a_last": acc[-1],
            "pd": acc[0] - acc[-1], "base_acc": [acc[0], base], "novel_acc": [None, novel], "hm": [None, hm],
            "session_classes": [[0, 1], [2]], "session_samples": [10, 5], "wall_time_s": 1.0, "config": {}}


def test_fscil_table_pairs_by_seed_and_flags_missing_seeds() -> None:
    results = {"simplecil": [_fscil_run(1, [80.0, 70.0], 75.0, 60.0), _fscil_run(2, [90.0, 60.0], 70.0, 40.0)],
               "coact": [_fscil_run(2, [90.0, 66.0], 71.0, 50.0), _fscil_run(1, [80.0, 72.0], 76.0, 60.0)],
               "finetune": [_fscil_run(1, [80.0, 10.0], 80.0, 0.0)]}
    text = rr.render_fscil(results, [1, 2], ["finetune seed 2"])
    rows = {ln.split(" | ")[1]: ln for ln in text.splitlines() if ln.startswith("| coact − simplecil")}
    # A_last: +2 (seed 1), +6 (seed 2) -> 4.00 ± 2.83; novel (last): 0, +10 -> 5.00 ± 7.07
    assert "| 4.00 ± 2.83 |" in rows["A_last"] and "| 2/2 |" in rows["A_last"]
    assert "| 5.00 ± 7.07 |" in rows["novel (last)"] and "| 1/2 |" in rows["novel (last)"]
    assert "finetune (1 of 2 seeds)" in text and "finetune seed 2" in text and "**1 of 2**" in text
    assert "same session classes" in text
    results["finetune"][0]["session_samples"] = [10, 6]
    assert "Warning" in rr.render_fscil(results, [1, 2], [])
