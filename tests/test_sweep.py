"""The sweep files and the local sweep runner (``python -m clplat.sweep``).

Independent references: W&B's own sweep validator and parameter PPFs (package ``sweeps``) and
W&B's own agent command builder; the resumed-sweep test reads the Optuna study back from SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from clplat.config import load_config
from clplat.run import _parse
from clplat.sweep import check_against_config
from clplat.sweep import main as sweep_main
from clplat.sweep_space import Param, agent_argv, load_sweep
from clplat.sweep_watch import intermediate
from tests.conftest import REPO

SWEEPS = sorted((REPO / "experiments/sweeps").glob("*.yaml"))
FIX = REPO / "tests/fixtures/sweeps"


def _at(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_files_pass_wandbs_own_validator_and_the_config_schema(path: Path) -> None:
    sweeps = pytest.importorskip("sweeps")  # W&B's controller package (wandb[sweeps])
    raw = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(raw) == []
    sweeps.SweepConfig(raw)  # W&B's own parse of the file
    sweep = load_sweep(path)
    base = check_against_config(sweep)  # every parameter is a config key; the metric is logged
    assert sweep.metric.startswith("final/")
    assert base.regime in ("online", "sessions")


def test_sweeps_for_er_mvp_and_coact_exist() -> None:
    strategies = {load_config(*load_sweep(p).base_run()).strategy for p in SWEEPS}
    assert {"er", "mvp", "coact"} <= strategies


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_agent_argv_is_wandbs_and_lands_in_the_config(path: Path) -> None:
    """The argv (W&B's own command code) parsed by clplat.run puts every drawn value at its key,
    typed; a value drawn at the far end of each range is checked too."""
    sweep = load_sweep(path)
    values = {p.name: p.probe_values()[-1] for p in sweep.params}
    argv = agent_argv(sweep, values)
    i = argv.index("clplat.run")
    assert argv[: i + 1] == ["/usr/bin/env", sys.executable, "-m", "clplat.run"]
    assert [a for a in argv if a.startswith("--")] == [f"--{k}={v}" for k, v in values.items()]
    args, overrides = _parse(argv[i + 1:])
    resolved = load_config(REPO / args.config, overrides).to_dict()
    for key, v in values.items():
        got = _at(resolved, key)
        assert got == pytest.approx(v) and isinstance(got, type(v) if not isinstance(v, int) else (int, float))


@pytest.mark.parametrize("spec", [
    {"distribution": "q_uniform", "min": 0.0, "max": 3.0, "q": 0.5},
    {"distribution": "q_uniform", "min": 1, "max": 9, "q": 2},
    {"distribution": "q_log_uniform_values", "min": 1.0, "max": 1000.0, "q": 5},
    {"distribution": "q_log_uniform", "min": 0.0, "max": 5.0, "q": 1},
    {"distribution": "normal", "mu": 2.0, "sigma": 0.5},
    {"distribution": "q_normal", "mu": 10.0, "sigma": 3.0, "q": 2},
    {"distribution": "log_normal", "mu": 0.0, "sigma": 1.0},
    {"distribution": "q_log_normal", "mu": 1.0, "sigma": 0.5, "q": 0.1},
    {"distribution": "beta", "a": 2.0, "b": 5.0},
    {"distribution": "q_beta", "a": 2.0, "b": 2.0, "q": 0.1},
    {"values": ["a", "b", "c"], "probabilities": [0.2, 0.5, 0.3]},
])
def test_latent_distributions_match_wandbs_ppf(spec: dict[str, Any]) -> None:
    pytest.importorskip("sweeps")
    from sweeps.params import HyperParameter

    ref = HyperParameter("p", dict(spec))
    ours = Param("p", spec.get("distribution", "categorical_w_probabilities"), dict(spec))
    for u in (0.03, 0.25, 0.5, 0.77, 0.97):
        want = ref.ppf(u)
        want = want.item() if hasattr(want, "item") else want
        assert ours.ppf(u) == (pytest.approx(want) if isinstance(want, float) else want), u


def test_native_log_distributions_cover_wandbs_range() -> None:
    """log_uniform's min/max are exponents, inv_log_uniform draws exp(-U): their value ranges."""
    pytest.importorskip("sweeps")
    from sweeps.params import HyperParameter

    for spec in ({"distribution": "log_uniform", "min": -5.0, "max": 0.0},
                 {"distribution": "inv_log_uniform", "min": 1.0, "max": 4.0},
                 {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 0.5},
                 {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}):
        ref = HyperParameter("p", dict(spec))
        lo, hi = Param("p", spec["distribution"], spec).bounds()
        assert sorted([float(ref.ppf(0.0)), float(ref.ppf(1.0))]) == pytest.approx([lo, hi])


def test_intermediate_values_follow_the_final_metric() -> None:
    """The running value at the last evaluation equals the final metric (A_auc = mean of anytime)."""
    rec = [{"kind": "anytime", "correct": [1, 1], "total": [2, 2]},
           {"kind": "task_end", "correct": [2, 0], "total": [2, 2]},
           {"kind": "anytime", "correct": [2, 2], "total": [2, 2]}]
    assert intermediate("final/A_auc", rec, sessions=False) == pytest.approx([0.5, 0.75])
    assert intermediate("final/A_last", rec, sessions=False) == pytest.approx([0.5])
    assert intermediate("final/a_avg", rec, sessions=True) == pytest.approx([50.0, 50.0, 200 / 3])
    assert intermediate("final/F_last", rec, sessions=False) == []


def _bad_sweep(tmp_path: Path, **change: Any) -> Path:
    raw = yaml.safe_load((FIX / "tiny_random.yaml").read_text())
    for key, value in change.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change,needle", [
    ({"method": "hyperopt"}, "unknown method 'hyperopt'"),
    ({"parameters__optim.lr": {"distribution": "log_uniformish", "min": 1, "max": 2}},
     "unknown distribution 'log_uniformish'"),
    ({"parameters__optim.lrr": {"values": [0.1]}}, "optim.lrr: unknown key"),
    ({"parameters__er.memory_size": {"values": [20, "many"]}}, "er.memory_size='many'"),
    ({"metric": {"name": "final/a_avg", "goal": "maximize"}}, "not logged by online runs"),
    ({"parameters__optim.lr": {"distribution": "uniform", "min": 0.1, "max": 0.01}}, "min must be below max"),
])
def test_bad_sweep_files_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             change: dict[str, Any], needle: str) -> None:
    path = _bad_sweep(tmp_path, **change)
    assert sweep_main([str(path), "--trials", "1", "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not (tmp_path / "s" / "trials").exists()  # nothing launched


def test_unreachable_storage_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/study.db"
    assert sweep_main([str(FIX / "tiny_random.yaml"), "--storage", url, "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: study storage {url}: cannot open") and "\n" not in err


def _study(sweep_dir: Path, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")


def _sweep_cmd(sweep: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clplat.sweep", str(sweep), "--dir", str(sweep_dir), "--seed", "0", *extra]


@pytest.mark.slow
def test_four_trials_two_jobs_resume_after_kill_and_best_config(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    sweep_dir = tmp_path / "sweep"
    cmd = _sweep_cmd(FIX / "tiny_random.yaml", sweep_dir, "--trials", "4", "--jobs", "2")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    done: list[Any] = []
    while time.time() < deadline and not done:  # kill the runner and its trials once one finished
        time.sleep(0.5)
        if (sweep_dir / "study.db").exists():
            try:
                done = _study(sweep_dir, "tiny_random").get_trials(states=(TrialState.COMPLETE,))
            except Exception:  # the study is still being created
                continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done, "no trial finished before the deadline"
    before = {t.number: (t.value, (Path(t.user_attrs["run_dir"]) / "results.json").stat().st_mtime_ns)
              for t in _study(sweep_dir, "tiny_random").get_trials(states=(TrialState.COMPLETE,))}

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    trials = _study(sweep_dir, "tiny_random").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state.name, t.user_attrs) for t in trials]
    for t in complete:  # finished trials kept their value and were not re-run
        if t.number in before:
            assert (t.value, (Path(t.user_attrs["run_dir"]) / "results.json").stat().st_mtime_ns) == before[t.number]
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("interrupted") for t in killed)  # not counted ...
    for t in killed:  # ... and their values were run again
        assert any(c.params == t.params for c in complete), t.params
    dirs = {t.user_attrs["run_dir"] for t in complete}  # one run directory per trial, never shared
    assert len(dirs) == 4 and len(list((sweep_dir / "trials").iterdir())) <= len(trials)
    best = max(complete, key=lambda t: t.value)
    cfg = load_config(sweep_dir / "best.yaml")
    assert cfg.optim.lr == pytest.approx(best.user_attrs["args"]["optim.lr"])
    assert cfg.to_dict()["er"]["memory_size"] == best.user_attrs["args"]["er.memory_size"]
    assert f"best trial {best.number} " in (sweep_dir / "best.yaml").read_text()
    for plot in ("history", "parallel", "importance"):
        assert (sweep_dir / f"{plot}.png").stat().st_size > 1000
    assert "complete" in res.stdout and "best config" in res.stdout


@pytest.mark.slow
def test_a_crashing_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    sweep_dir = tmp_path / "sweep"
    res = subprocess.run(_sweep_cmd(FIX / "tiny_crash.yaml", sweep_dir, "--trials", "2", "--jobs", "2"),
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr
    trials = {t.user_attrs["args"]["backbone.name"]: t for t in _study(sweep_dir, "tiny_crash").get_trials()}
    assert trials["mlp"].state == TrialState.COMPLETE
    bad = trials["no_such_net"]
    assert bad.state == TrialState.FAIL and "no_such_net" in bad.user_attrs["error"]
    assert f"trial {bad.number}: failed (exit 2)" in res.stderr
    assert "best trial" in (sweep_dir / "best.yaml").read_text()


class _RecordingWandb:
    """Stands in for clplat's W&B holder: records the summary a run writes at its end."""

    summaries: list[dict[str, Any]] = []

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any], resume_id: str | None = None) -> None:
        self.run, self.id = None, None

    def log(self, data: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any], images: dict[str, Path]) -> None:
        type(self).summaries.append(dict(summary))


def test_every_sweep_metric_is_logged_by_runs_of_its_regime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An online run and a sessions run (tiny, in process) send their W&B summary through the
    engine's real call; the metric each sweep names must be among the keys of its regime's run."""
    import clplat.engine.experiment as experiment
    import clplat.engine.sessions as sessions
    from clplat.config import build_config

    monkeypatch.setattr(experiment, "WandbRun", _RecordingWandb)
    monkeypatch.setattr(sessions, "WandbRun", _RecordingWandb)
    _RecordingWandb.summaries = []
    logged = {}
    experiment.run_experiment(load_config(FIX / "tiny_er.yaml", [f"logging.runs_dir={tmp_path}", "threads=1"]))
    logged["online"] = set(_RecordingWandb.summaries[-1])
    experiment.run_experiment(build_config({
        "name": "tiny_sessions", "data": {"dataset": "digits", "image_size": 8},
        "scenario": {"kind": "class_incremental", "n_tasks": 2}, "regime": "sessions",
        "backbone": {"name": "mlp", "kwargs": {"hidden": [16]}}, "threads": 1,
        "logging": {"wandb": "disabled", "progress": False, "runs_dir": str(tmp_path)}}))
    logged["sessions"] = set(_RecordingWandb.summaries[-1])
    for path in SWEEPS:
        sweep = load_sweep(path)
        regime = load_config(*sweep.base_run()).regime
        assert sweep.metric in logged[regime], (path.name, sorted(logged[regime]))


def test_watcher_reports_each_new_evaluation_once_from_the_checkpoint(tmp_path: Path) -> None:
    """Pruning input: the running metric from the run's checkpoint, only new steps on each poll."""
    import torch

    from clplat.sweep_watch import Watcher

    def rec(kind: str, c: int) -> dict[str, Any]:
        return {"kind": kind, "correct": [c, 0], "total": [4, 0], "samples_seen": 0, "task_id": 0}

    ck = tmp_path / "checkpoints/last.pt"
    ck.parent.mkdir()
    w = Watcher(tmp_path, "final/A_auc")
    assert w.poll() == []  # no checkpoint yet
    torch.save({"records": [rec("anytime", 2), rec("task_end", 4)]}, ck)
    assert w.poll() == [(1, 0.5)]
    assert w.poll() == []  # unchanged file
    torch.save({"records": [rec("anytime", 2), rec("task_end", 4), rec("anytime", 4), rec("anytime", 3)]}, ck)
    os.utime(ck, (time.time() + 5, time.time() + 5))
    assert w.poll() == [(2, pytest.approx(0.75)), (3, pytest.approx(0.75))]
    (tmp_path / "results.json").write_text('{"metrics": {"A_auc": 0.75}}')
    assert w.final() == 0.75


def test_requeued_trials_are_run_not_counted(tmp_path: Path) -> None:
    """A re-queued (WAITING) trial must not count toward --trials, or a resumed sweep stops
    with the interrupted values never run again (the bug a loaded CI machine once showed)."""
    import argparse

    import optuna

    from clplat.sweep import Runner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    done = study.ask()
    study.tell(done, 0.5)
    study.enqueue_trial({"optim.lr": 1e-3})
    args = argparse.Namespace(trials=2, jobs=1, threads=1)
    runner = Runner(load_sweep(FIX / "tiny_random.yaml"), study, tmp_path, args)
    assert runner.counted() == 1
    nxt = runner.next_trial()
    assert nxt is not None and nxt[0].number == 1  # the queued trial is handed out next
