"""Strategy ``senn`` in the sessions engine (issue 10): growth keeps the engine's optimizer and
schedule, a run that grew resumes exactly, results.json carries the growth, and bad input is one
line with exit code 2."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from clplat.config import build_config
from clplat.engine.rundir import write_config
from clplat.engine.sessions import SessionExperiment, run_sessions
from clplat.errors import UserError
from clplat.run import main


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def raw_config(tmp_path: Path, **senn: Any) -> dict[str, Any]:
    return {
        "name": "senn", "seed": 3, "threads": 1, "strategy": "senn", "regime": "sessions",
        "data": {"dataset": "digits", "image_size": 8},
        "scenario": {"kind": "class_incremental", "n_tasks": 2, "class_order": "contiguous"},
        "backbone": {"name": "expandable_cnn", "kwargs": {"stages": [[4], [4]], "num_features": 16}},
        "senn": {"tau_width": 1e-9, "abs_thresh": 0.0, "cooldown": 0, "warmup": 1, "decision_batch": 64,
                 "decision_pool": 128, "curvature_every": 2, "width_step": 2, "proposals": 8, **senn},
        "sessions": {"base": {"epochs": 4, "batch_size": 64, "schedule": "cosine",
                              "optim": {"name": "adam", "lr": 0.01}},
                     "incremental": {"epochs": 3, "batch_size": 64, "optim": {"name": "adam", "lr": 0.005}}},
        "augment": {"random_crop_pad": 1},
        "logging": {"wandb": "disabled", "progress": False, "runs_dir": str(tmp_path / "runs")},
    }


def test_growth_in_the_engine_keeps_optimizer_state_and_schedule(tmp_path: Path) -> None:
    """Right after ``after_update`` grew the model inside the engine: the session optimizer is the
    same object, lists the grown model's parameters, untouched parameters keep their Adam state bit
    for bit, widened ones carry theirs over (same step), new ones have none, lr is the schedule's."""
    exp = SessionExperiment(build_config(raw_config(tmp_path)), None)
    strat, checks = exp.strategy, []
    grow = strat.after_update

    def spy(opt, ctx):
        assert opt is exp.module._optimizer
        old = {id(p): p for p in opt.param_groups[0]["params"]}
        before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in old.values()}
        grew = grow(opt, ctx)
        if grew:
            params = list(strat.parameters())
            assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in params]
            kept = [p for p in params if id(p) in old]
            for p in kept:
                assert opt.state[p].keys() == before[id(p)].keys()
                assert all(torch.equal(opt.state[p][k], v) for k, v in before[id(p)].items())
            fresh = [p for p in params if id(p) not in old]
            replaced = [q for i, q in old.items() if i not in {id(p) for p in kept}]
            with_state = [p for p in fresh if p in opt.state]  # widened: padded, step carried over
            assert fresh and len(with_state) == len(replaced)
            for q in replaced:  # each replaced parameter's state sits in the leading slice of its successor
                sl = tuple(slice(0, n) for n in q.shape)
                p = next(p for p in with_state if p.dim() == q.dim() and all(
                    a >= b for a, b in zip(p.shape, q.shape, strict=True)) and torch.equal(p.detach()[sl], q.detach()))
                st = before[id(q)]
                assert torch.equal(opt.state[p]["step"], st["step"])
                for k in ("exp_avg", "exp_avg_sq"):
                    assert torch.equal(opt.state[p][k][sl], st[k])
                    rest = opt.state[p][k].clone()
                    rest[sl] = 0
                    assert not rest.any()  # new entries start at zero
            phase = exp.cfg.sessions.phase(ctx.session)
            want = phase.optim.lr * (0.5 * (1 + math.cos(math.pi * ctx.epoch / phase.epochs))
                                     if phase.schedule == "cosine" else 1.0)
            assert opt.param_groups[0]["lr"] == pytest.approx(want)
            checks.append(ctx.epoch)
        return grew

    strat.after_update = spy
    exp.run()
    assert len(checks) >= 2 and exp.records


def interrupted_then_resumed(tmp_path: Path, raw: dict[str, Any], stop_at: tuple[int, int]) -> dict[str, Any]:
    """Run in process until the checkpoint at (session, epoch), as if SIGTERM came then; resume."""
    cfg = build_config({**raw, "name": "resumed"})
    run_dir = Path(raw["logging"]["runs_dir"]) / "resumed"
    exp = SessionExperiment(cfg, run_dir)
    write_config(run_dir, cfg.to_dict())
    save = exp.save_checkpoint

    def save_then_stop() -> None:
        save()
        if (exp.cursor.session, exp.cursor.epoch) == stop_at:
            exp.stop_signal = signal.SIGTERM

    exp.save_checkpoint = save_then_stop
    exp.run()
    assert exp.interrupted and exp.strategy.growth_events(), "the first process must stop after growing"
    grown = exp.strategy.backbone.summary()
    res = run_sessions(cfg, run_dir, resume=True)
    assert res["process"]["resumed"] and res["process"]["start_epoch"] == stop_at[1]
    return {"res": res, "grown_at_stop": grown}


@pytest.mark.parametrize("senn", [{}, {"mode": "random", "random_width": 1, "random_depth": 3, "random_span": 3},
                                  {"curvature_window": 1, "decide_every": 2, "noise_z": 0}],
                         ids=["senn", "random-depth", "curvature-window"])
def test_resume_after_growth_equals_uninterrupted(tmp_path: Path, senn) -> None:
    """Also with new parameter tensors (inserted blocks) before the stop: the resumed session's
    optimizer is rebuilt with the grown parameter list."""
    raw = raw_config(tmp_path, **senn)
    ref = run_sessions(build_config({**raw, "name": "ref"}), tmp_path / "runs" / "ref", resume=False)
    out = interrupted_then_resumed(tmp_path, raw, (0, 2))
    res = out["res"]
    assert res["growth"] == ref["growth"] and len(ref["growth"]) >= 3
    if senn.get("mode") == "random":
        assert any(e["kind"] == "depth" and e["step"] < res["process"]["start_updates"] for e in res["growth"])
    assert out["grown_at_stop"] != res["architecture_summary"]  # it grew again after the resume
    assert res["evals"] == ref["evals"] and res["params_history"] == ref["params_history"]
    mine = torch.load(tmp_path / "runs" / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    theirs = torch.load(tmp_path / "runs" / "ref" / "checkpoints" / "last.pt", weights_only=True)
    assert mine["strategy"].keys() == theirs["strategy"].keys()
    for k, v in mine["strategy"].items():  # bit for bit (random growth records NaN scores)
        assert torch.equal(v, theirs["strategy"][k]) or torch.allclose(v, theirs["strategy"][k], rtol=0, atol=0,
                                                                       equal_nan=True), k
    # outputs: growth events, parameter history, the final architecture, its file and plot
    rd = tmp_path / "runs" / "ref"
    saved = json.loads((rd / "results.json").read_text())
    assert {"step", "session", "layer", "kind", "params_added", "score"} <= set(saved["growth"][0])
    assert saved["params_history"][-1]["params"] <= saved["backbone_params"]
    assert saved["backbone_params"] == saved["params_history"][0]["params"] + sum(
        e["params_added"] for e in saved["growth"])
    assert json.loads((rd / "architecture.json").read_text())["architecture"] == saved["architecture"]
    assert (rd / "growth.png").is_file()
    # the fixed-large baseline builds the grown architecture from that file
    arch_file = str(rd / "architecture.json")
    large = build_config({**raw, "name": "large", "senn": {"mode": "fixed"},
                          "backbone": {"name": "expandable_cnn", "kwargs": {"arch_file": arch_file}}})
    exp = SessionExperiment(large, None)
    assert exp.strategy.backbone.describe() == saved["architecture"]


def test_curvature_window_estimates_factors_only_before_decisions(tmp_path: Path) -> None:
    """``curvature_window: 1``, decisions every 3rd epoch from epoch 1 (cooldown 0, and every
    decision grows): the factors update in the epoch before each decision and at the decision
    epoch's first step (which precedes the decision), nowhere else; each decision reads factors
    restarted at its window's start (their counts = the window's updates). Hand-derived schedule:
    session 0 (10 epochs) decides at 1, 4, 7 (its epoch 9 precedes no decision of the session: no
    updates); session 1 (3 epochs) at 1."""
    raw = raw_config(tmp_path, curvature_window=1, decide_every=3, curvature_every=1)
    raw["sessions"]["base"]["epochs"] = 10
    exp = SessionExperiment(build_config(raw), None)
    strat = exp.strategy
    ema_steps: list[tuple[int, int]] = []
    counts: list[tuple[int, int, int]] = []
    loss, decide = strat.training_loss, strat._decide

    def spy_loss(x, y, ctx):
        out = loss(x, y, ctx)
        if strat.tracker.mode == "ema":
            ema_steps.append((ctx.session, ctx.epoch))
        return out

    def spy_decide(ctx):
        counts.append((ctx.session, ctx.epoch, int(strat.curv.proj_A_n)))
        return decide(ctx)

    strat.training_loss, strat._decide = spy_loss, spy_decide
    exp.run()
    steps = {s: math.ceil(len(exp.plan.tasks[s]) / 64) for s in (0, 1)}
    want = [(0, e) for e in (0, 3, 6) for _ in range(steps[0])]
    want = sorted(want + [(0, 1), (0, 4), (0, 7)]) + [(1, 0)] * steps[1] + [(1, 1)]
    assert ema_steps == want
    assert [c[:2] for c in counts] == [(0, 1), (0, 4), (0, 7), (1, 1)]
    assert [c[2] for c in counts] == [steps[0] + 1] * 3 + [steps[1] + 1]
    assert strat.growth_events()  # (cooldown 0: the schedule does not depend on it)


def test_checkpoint_of_another_architecture_is_one_line(tmp_path: Path, capsys) -> None:
    raw = raw_config(tmp_path)
    raw["sessions"]["incremental"]["epochs"] = 0
    run_dir = tmp_path / "runs" / "a"
    cfg = build_config({**raw, "name": "a"})
    exp = SessionExperiment(cfg, run_dir)
    write_config(run_dir, cfg.to_dict())
    exp.run()
    exp.save_checkpoint()
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    ck["cursor"]["finished"] = False  # resumable
    torch.save(ck, run_dir / "checkpoints" / "last.pt")
    conf = yaml.safe_load((run_dir / "config.yaml").read_text())
    conf["backbone"]["kwargs"]["stages"] = [[64], [4]]  # wider than anything the run grew to
    (run_dir / "config.yaml").write_text(yaml.safe_dump(conf))
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot have grown from the configured backbone (64 | 4)" in err[0]


@pytest.mark.parametrize("senn, match", [
    ({"tau_width": 0}, "senn.tau_width"),
    ({"abs_thresh": -1}, "senn.abs_thresh"),
    ({"curvature_decay": 1.5}, "senn.curvature_decay"),
    ({"decision_batch": 600, "decision_pool": 100}, "decision_batch must not exceed"),
    ({"mode": "grow"}, "senn.mode"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, senn, match) -> None:
    with pytest.raises(UserError, match=match):
        build_config(raw_config(tmp_path, **senn))


def test_budget_below_start_and_wrong_backbone(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"max_params \(100\) is below the starting backbone's"):
        SessionExperiment(build_config(raw_config(tmp_path, max_params=100)), None)
    raw = raw_config(tmp_path)
    raw["backbone"] = {"name": "mlp"}
    with pytest.raises(UserError, match="needs backbone.name: expandable_cnn"):
        SessionExperiment(build_config(raw), None)
