"""End-to-end behaviour of the online engine: a short run, seed reproducibility, masking of
unexposed classes, and checkpoint/resume equal to an uninterrupted run (SIGKILL and SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clplat.config import load_config
from clplat.engine.experiment import Experiment, run_experiment
from tests.conftest import REPO

ER = REPO / "experiments" / "si_blurry_er.yaml"


def test_short_run_writes_run_dir(small_overrides: list[str]) -> None:
    cfg = load_config(ER, small_overrides)
    res = run_experiment(cfg)
    rd = Path(res["run_dir"])
    for name in ("config.yaml", "results.json", "curve.csv", "accuracy_curve.png", "accuracy_matrix.png",
                 "checkpoints/last.pt"):
        assert (rd / name).is_file(), name
    m = res["metrics"]
    assert 0.5 < m["A_last"] <= 1.0  # 10 classes: chance is 0.1
    assert len([e for e in res["evals"] if e["kind"] == "task_end"]) == 5
    n_any = len([e for e in res["evals"] if e["kind"] == "anytime"])
    assert n_any == len(range(200, res["total_samples"] + 1, 200))
    # a second run with the same name gets a new directory, never overwriting the first
    res2 = run_experiment(load_config(ER, small_overrides + ["online.online_iter=1"]))
    assert res2["run_dir"] != res["run_dir"] and (rd / "results.json").is_file()


def test_same_seed_same_numbers(small_overrides: list[str]) -> None:
    a = run_experiment(load_config(ER, small_overrides))
    b = run_experiment(load_config(ER, small_overrides))
    c = run_experiment(load_config(ER, small_overrides + ["seed=2"]))
    assert a["metrics"] == b["metrics"] and a["evals"] == b["evals"]
    assert a["evals"] != c["evals"]


def test_unexposed_classes_are_masked(small_overrides: list[str]) -> None:
    exp = Experiment(load_config(ER, small_overrides), run_dir=None)
    first = exp.batches[0]
    x, y = exp.data.train.__getitems__(first.indices)
    exp.module.tracker.expose(y)
    ctx = exp.module.context()
    logits = ctx.mask_logits(exp.strategy.predict(x, ctx))
    n = ctx.n_exposed
    assert n < 10 and torch.isinf(logits[:, n:]).all() and torch.isfinite(logits[:, :n]).all()
    rec = exp.evaluate("anytime")
    tested = {c for c, t in enumerate(rec.total) if t > 0}
    assert tested == set(ctx.exposed_classes)  # eval only on exposed classes' test samples


def _cli_run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "clplat.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _metrics(run_dir: Path) -> tuple[dict, list]:
    r = json.loads((run_dir / "results.json").read_text())
    return r["metrics"], r["evals"]


def _resume_until_done(run_dir: Path) -> None:
    p = _cli_run(["--resume", str(run_dir)])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path: Path, small_overrides: list[str]) -> None:
    base = [str(ER), *small_overrides, "checkpoint_every=64", "online.online_iter=3",
            "backbone.name=small_cnn", "backbone.kwargs={width: 8, num_features: 32}"]
    ref = _cli_run([*base, "name=ref"])
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    ref_metrics, ref_evals = _metrics(tmp_path / "runs" / "ref")

    # kill at several points: just after the first checkpoint, and again mid-stream after resuming
    run_dir = tmp_path / "runs" / "killed"
    ckpt = run_dir / "checkpoints" / "last.pt"
    p = _cli_run([*base, "name=killed"])
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert p.poll() is None, "run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run_dir / "results.json").exists()
    first_cursor = torch.load(ckpt, weights_only=True)["cursor"]["samples_seen"]
    assert 0 < first_cursor < 1437

    p = _cli_run(["--resume", str(run_dir)])
    time.sleep(4.0)  # somewhere in the middle of the resumed stream (or already done)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        _resume_until_done(run_dir)
    else:
        assert p.returncode == 0
    metrics, evals = _metrics(run_dir)
    assert metrics == ref_metrics
    assert evals == ref_evals


@pytest.mark.slow
def test_sigterm_checkpoints_then_resumes(tmp_path: Path, small_overrides: list[str]) -> None:
    base = [str(ER), *small_overrides, "checkpoint_every=64", "online.online_iter=3",
            "backbone.name=small_cnn", "backbone.kwargs={width: 8, num_features: 32}"]
    ref = _cli_run([*base, "name=ref"])
    assert ref.wait(timeout=300) == 0
    p = _cli_run([*base, "name=term"])
    run_dir = tmp_path / "runs" / "term"
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    assert p.poll() is None, "run finished before SIGTERM could be sent"
    p.send_signal(signal.SIGTERM)  # training is under way: the driver's handler is installed
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" in err
    assert ckpt.exists() and not (run_dir / "results.json").exists()
    _resume_until_done(run_dir)
    assert _metrics(run_dir) == _metrics(tmp_path / "runs" / "ref")


def test_diverging_loss_is_a_clear_error(tmp_path: Path, small_overrides: list[str]) -> None:
    from tests.conftest import run_cli

    res = run_cli(["clplat.run", str(ER), *small_overrides, "optim.name=sgd", "optim.lr=1e30", "name=nan"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: loss became") and "optim.lr" in lines[-1]
    assert not (tmp_path / "runs" / "nan" / "results.json").exists()


def test_resume_errors(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    res = run_cli(["clplat.run", "--resume", str(tmp_path / "nowhere")])
    assert res.returncode == 2 and "not a run directory" in res.stderr
    rd = tmp_path / "run"
    (rd / "checkpoints").mkdir(parents=True)
    (rd / "config.yaml").write_text("strategy: finetune\nlogging: {wandb: disabled}\n")
    (rd / "checkpoints" / "last.pt").write_bytes(b"garbage")
    res = run_cli(["clplat.run", "--resume", str(rd)])
    assert res.returncode == 2 and "unreadable" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_threads_option_pins_torch_threads(small_overrides: list[str]) -> None:
    before = torch.get_num_threads()
    try:
        Experiment(load_config(ER, small_overrides + ["threads=1"]), run_dir=None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
