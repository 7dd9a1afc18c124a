"""The sessions regime: per-session epochs/optimizer/schedule, hooks, evaluation on seen classes,
session metrics, seeded determinism, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.config import build_config
from clplat.engine.experiment import run_experiment
from clplat.engine.session_metrics import session_metrics
from clplat.engine.sessions import SessionExperiment, epoch_order, set_epoch_lr
from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import StreamContext
from clplat.strategies.finetune import Finetune
from tests.conftest import run_cli, signal_when


def _raw(tmp_path: Path, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "sess", "seed": 1, "threads": 1, "strategy": "finetune", "regime": "sessions",
        "data": {"dataset": "digits", "image_size": 8},
        "scenario": {"kind": "class_incremental", "n_tasks": 4, "class_order": "contiguous"},
        "backbone": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "sessions": {"base": {"epochs": 2, "batch_size": 32, "schedule": "cosine",
                              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}},
                     "incremental": {"epochs": 2, "batch_size": 16, "optim": {"name": "adam", "lr": 0.002}}},
        "logging": {"wandb": "disabled", "progress": False, "runs_dir": str(tmp_path / "runs")},
    }
    for key, value in over.items():
        raw[key] = value
    return raw


def test_session_metrics_hand_computed() -> None:
    # classes 0,1 base (session 0), 2 in session 1, 3 in session 2; counts per class id
    recs = [
        {"correct": [8, 6, 0, 0], "total": [10, 10, 0, 0]},  # 14/20
        {"correct": [7, 5, 3, 0], "total": [10, 10, 5, 0]},  # base 12/20, novel 3/5, all 15/25
        {"correct": [6, 4, 2, 1], "total": [10, 10, 5, 5]},  # base 10/20, novel 3/10, all 13/30
    ]
    m = session_metrics(recs, [[0, 1], [2], [3]])
    assert m["session_acc"] == pytest.approx([70.0, 60.0, 100 * 13 / 30])
    assert m["base_acc"] == pytest.approx([70.0, 60.0, 50.0])
    assert m["novel_acc"][0] is None and m["novel_acc"][1:] == pytest.approx([60.0, 30.0])
    assert m["hm"][0] is None and m["hm"][1:] == pytest.approx([60.0, 2 * 50 * 30 / 80])
    assert m["a_avg"] == pytest.approx((70 + 60 + 100 * 13 / 30) / 3)
    assert m["a_last"] == pytest.approx(100 * 13 / 30) and m["pd"] == pytest.approx(70 - 100 * 13 / 30)


def test_epoch_order_and_cosine_schedule() -> None:
    a, b = epoch_order(50, 1, 0, 0), epoch_order(50, 1, 0, 1)
    assert sorted(a) == list(range(50)) and a == epoch_order(50, 1, 0, 0) and a != b
    assert a != epoch_order(50, 2, 0, 0) and a != epoch_order(50, 1, 1, 0)
    from clplat.config import SessionPhaseConfig

    w = nn.Parameter(torch.zeros(1))
    v = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.01}], lr=0.1)
    phase = SessionPhaseConfig(epochs=4, schedule="cosine")
    for e in range(4):
        set_epoch_lr(opt, phase, e)
        f = 0.5 * (1 + math.cos(math.pi * e / 4))
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * f, 0.01 * f])


def test_config_of_the_regime() -> None:
    with pytest.raises(UserError, match="sessions.base.optim: nesterov needs name: sgd"):
        build_config({"sessions": {"base": {"optim": {"name": "adam", "nesterov": True}}}})
    with pytest.raises(UserError, match="sessions.incremental.epoch: unknown key"):
        build_config({"sessions": {"incremental": {"epoch": 3}}})
    cfg = build_config({"regime": "sessions"})
    assert cfg.sessions.phase(0) is cfg.sessions.base and cfg.sessions.phase(3) is cfg.sessions.incremental


def test_sessions_run_seen_classes_and_determinism(tmp_path: Path) -> None:
    res = run_experiment(build_config(_raw(tmp_path)))
    rd = Path(res["run_dir"])
    for name in ("results.json", "sessions.csv", "session_accuracy.png", "config.yaml", "checkpoints/last.pt"):
        assert (rd / name).is_file(), name
    assert [sorted(c) for c in res["session_classes"]] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    seen: set[int] = set()
    for k, rec in enumerate(res["evals"]):  # evaluated on the test samples of every seen class only
        seen |= set(res["session_classes"][k])
        assert {c for c, n in enumerate(rec["total"]) if n} == seen
    assert len(res["session_acc"]) == 4 and res["novel_acc"][0] is None and res["session_acc"][0] > 60
    n = res["session_samples"]
    assert res["updates"] == 2 * math.ceil(n[0] / 32) + sum(2 * math.ceil(k / 16) for k in n[1:])
    again = run_experiment(build_config(_raw(tmp_path)))
    other = run_experiment(build_config(_raw(tmp_path, seed=2)))
    assert again["evals"] == res["evals"] and again["session_acc"] == res["session_acc"]
    assert other["evals"] != res["evals"]
    # the resolved config written to the run directory loads back and selects the same models
    import yaml

    back = build_config(yaml.safe_load((rd / "config.yaml").read_text()))
    assert back.to_dict() == build_config(_raw(tmp_path)).to_dict()


class _Recorder(Finetune):
    """Finetune that records every hook call (and augments its own batches)."""

    augments_itself = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[tuple] = []
        self.seen_x: list[Tensor] = []

    def on_session_start(self, session: int, loader, ctx: StreamContext) -> None:
        xs, ys = zip(*loader)
        self.calls.append(("start", session, ctx.n_exposed, torch.cat(xs), torch.cat(ys)))

    def on_epoch_start(self, session: int, epoch: int, ctx: StreamContext) -> None:
        self.calls.append(("epoch", session, epoch, ctx.session, ctx.epoch))

    def on_session_end(self, session: int, loader, ctx: StreamContext) -> None:
        self.calls.append(("end", session, sum(len(y) for _, y in loader)))

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        self.seen_x.append(x)
        return F.cross_entropy(ctx.mask_logits(self.logits(ctx.augment(x))), y)


STRATEGIES.register("test_session_recorder")(_Recorder)


def test_hooks_order_loader_and_unaugmented_batches(tmp_path: Path) -> None:
    raw = _raw(tmp_path, strategy="test_session_recorder", augment={"random_crop_pad": 2})
    exp = SessionExperiment(build_config(raw), run_dir=None)
    exp.run()
    rec: _Recorder = exp.strategy
    kinds = [(c[0], c[1]) + ((c[2],) if c[0] == "epoch" else ()) for c in rec.calls]
    expect = []
    for s in range(4):
        expect += [("start", s)] + [("epoch", s, e) for e in range(2)] + [("end", s)]
    assert kinds == expect
    exposed = 0
    x_all, y_all = exp.data.train.x, exp.data.train.y
    for c in rec.calls:
        if c[0] == "start":
            s = c[1]
            exposed += len(exp.session_classes[s])
            assert c[2] == exposed  # the session's classes are exposed before the hook
            idx = torch.as_tensor(exp.plan.tasks[s])
            assert torch.equal(c[3], x_all[idx]) and torch.equal(c[4], y_all[idx])  # raw, plan order
        elif c[0] == "epoch":
            assert c[3:] == (c[1], c[2])  # ctx carries session and epoch
    rows = {tuple(r.flatten().tolist()) for r in x_all}
    assert all(tuple(r.flatten().tolist()) in rows for x in rec.seen_x for r in x)  # never augmented


def test_nonfinite_loss_is_a_user_error(tmp_path: Path) -> None:
    cfg_path = tmp_path / "nan.yaml"
    raw = _raw(tmp_path)
    raw["sessions"]["base"]["optim"] = {"name": "sgd", "lr": 1e30}
    import yaml

    cfg_path.write_text(yaml.safe_dump(raw))
    res = run_cli(["clplat.run", str(cfg_path)])
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became") and "sessions.base.optim.lr" in last


@pytest.mark.slow
def test_sigkill_mid_session_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    import yaml

    from tests.test_engine import _cli_run

    raw = _raw(tmp_path, backbone={"name": "small_cnn", "kwargs": {"width": 8, "num_features": 32}},
               data={"dataset": "digits", "image_size": 16}, augment={"random_crop_pad": 1})
    raw["sessions"]["base"]["epochs"] = raw["sessions"]["incremental"]["epochs"] = 12
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    ref = _cli_run([str(tmp_path / "c.yaml"), "name=ref"])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    ref_res = json.loads((tmp_path / "runs" / "ref" / "results.json").read_text())

    run_dir = tmp_path / "runs" / "killed"

    def kill_when(p, ok) -> dict:
        return signal_when(p, run_dir, ok, timeout=300)

    # first kill: in the middle of an incremental session (its optimizer state must be restored)
    p = _cli_run([str(tmp_path / "c.yaml"), "name=killed"])
    first = kill_when(p, lambda c: c["session"] == 1 and c["started"] and 2 <= c["epoch"] <= 8)
    assert first["started"] and 0 < first["epoch"] < 12
    # second kill: on a newer checkpoint of the resumed process
    p = _cli_run(["--resume", str(run_dir)])
    second = kill_when(p, lambda c: c["updates"] > first["updates"] and c["session"] >= 2)
    p = _cli_run(["--resume", str(run_dir)])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    assert res["evals"] == ref_res["evals"] and res["session_acc"] == ref_res["session_acc"]
    # accuracy counts are coarse: the final weights must be bit-identical too
    mine = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["strategy"]
    theirs = torch.load(tmp_path / "runs" / "ref" / "checkpoints" / "last.pt", weights_only=True)["strategy"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    proc = res["process"]  # the last process started where the checkpoint was, and did only the rest
    assert proc["resumed"] and (proc["start_session"], proc["start_epoch"]) == (second["session"], second["epoch"])
    assert proc["start_updates"] == second["updates"] and proc["updates"] == ref_res["updates"] - second["updates"]
    assert f"resuming {run_dir} at session {second['session']}, epoch {second['epoch']}" in err


@pytest.mark.slow
def test_sigterm_stops_at_a_checkpoint_then_resumes(tmp_path: Path) -> None:
    import yaml

    from tests.test_engine import _cli_run

    raw = _raw(tmp_path, backbone={"name": "small_cnn", "kwargs": {"width": 8, "num_features": 32}},
               data={"dataset": "digits", "image_size": 16})
    raw["sessions"]["base"]["epochs"] = raw["sessions"]["incremental"]["epochs"] = 12
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    ref = _cli_run([str(tmp_path / "c.yaml"), "name=ref"])
    assert ref.wait(timeout=600) == 0
    p = _cli_run([str(tmp_path / "c.yaml"), "name=term"])
    run_dir = tmp_path / "runs" / "term"
    signal_when(p, run_dir, lambda c: c["epoch"] >= 1, timeout=300, sig=signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" in err and not (run_dir / "results.json").exists()
    res = run_cli(["clplat.run", "--resume", str(run_dir)])
    assert res.returncode == 0, res.stderr
    a = json.loads((run_dir / "results.json").read_text())
    b = json.loads((tmp_path / "runs" / "ref" / "results.json").read_text())
    assert a["evals"] == b["evals"]
