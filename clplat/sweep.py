"""``python -m clplat.sweep SWEEP.yaml --trials N --jobs K [--storage URL] [--dir DIR]`` — run a W&B
sweep file locally with Optuna as the search engine.

Each trial is a ``python -m clplat.run`` subprocess started with exactly the argv a ``wandb agent``
would start (see :func:`clplat.sweep_space.agent_argv`), followed by the runner's own placement
overrides (``logging.runs_dir``, ``name``, ``threads``, ``logging.wandb``, ``logging.progress``), so
every trial gets its own run directory ``DIR/trials/trial_NNNN`` and ``cpus // K`` threads. The
study lives in an Optuna storage (default: ``DIR/study.db``, SQLite); a killed sweep started again
skips the trials already finished, and several runners pointed at one RDB URL share one study.
Why subprocesses: a run is exactly what a user or an agent runs, a crash is contained, and a
pruned run stops through its own SIGTERM path (checkpoint, exit 130).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clplat.errors import UserError, main_guard, one_line
from clplat.sweep_space import Sweep, agent_argv, load_sweep

ONLINE_METRICS = ("A_auc", "A_avg", "A_last", "F_last", "BWT")
SESSION_METRICS = ("a_avg", "a_last", "pd")
POLL_S = 0.1
STARTED = datetime.datetime.now()  # a trial asked before this runner started and still ownerless is dead


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clplat.sweep", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="W&B sweep YAML (e.g. experiments/sweeps/si_blurry_er_lr.yaml)")
    p.add_argument("--trials", type=int, default=8, help="trials in the study in total (finished ones count)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once by this runner")
    p.add_argument("--dir", help="sweep directory (default runs/sweeps/<sweep file stem>)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///DIR/study.db)")
    p.add_argument("--study", help="study name (default: the sweep file stem)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampler seed (leave unset when several runners share a study)")
    p.add_argument("--wandb", default="disabled", choices=["disabled", "offline", "online", "auto"],
                   help="logging.wandb of every trial (default disabled)")
    p.add_argument("--threads", type=int, default=None, help="threads per trial (default: CPUs // jobs)")
    a = p.parse_args(argv)
    if a.trials < 1 or a.jobs < 1:
        raise UserError("--trials and --jobs must be at least 1")
    return a


# --- checks before any trial ------------------------------------------------------------------------
def check_against_config(sweep: Sweep) -> Any:
    """Every parameter value the sweep can produce (ranges at their ends) and the metric must fit the
    experiment's config schema and what its runs log; returns the base config."""
    from clplat.config import load_config

    config, fixed = sweep.base_run()
    base = load_config(config, fixed)
    first = {p.name: p.probe_values()[0] for p in sweep.params}
    for p in sweep.params:
        for v in p.probe_values():
            values = {**first, p.name: v}
            try:
                load_config(config, fixed + [f"--{k}={x}" for k, x in values.items()])
            except UserError as err:
                raise UserError(f"sweep {sweep.path}: parameter {p.name}={v!r}: {one_line(err)}") from None
    logged = SESSION_METRICS if base.regime == "sessions" else ONLINE_METRICS
    key = sweep.metric.removeprefix("final/")
    if not sweep.metric.startswith("final/") or key not in logged:
        raise UserError(f"sweep {sweep.path}: metric {sweep.metric!r} is not logged by {base.regime} runs "
                        f"(logged: {', '.join('final/' + k for k in logged)})")
    return base


def open_storage(url: str) -> Any:
    import optuna

    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=None)
    except Exception as err:  # a driver missing, a host down, a path not writable
        raise UserError(f"study storage {url}: cannot open ({type(err).__name__}: {one_line(err)[:200]})") from None


def make_sampler(sweep: Sweep, seed: int | None) -> Any:
    import optuna

    if sweep.method == "grid":
        space = {p.name: p.grid_values() for p in sweep.params if p.dist != "constant"}
        return optuna.samplers.GridSampler(space, seed=seed)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(sweep: Sweep) -> Any:
    import optuna

    et = sweep.early_terminate
    if not et:
        return optuna.pruners.NopPruner()
    max_iter = et.get("max_iter", "auto")
    return optuna.pruners.HyperbandPruner(min_resource=int(et.get("min_iter", 1)), max_resource=max_iter,
                                          reduction_factor=int(et.get("eta", 3)))


def grid_size(sweep: Sweep) -> int | None:
    if sweep.method != "grid":
        return None
    n = 1
    for p in sweep.params:
        n *= len(p.grid_values())
    return n


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --- the runner ----------------------------------------------------------------------------------------
class Runner:
    """Ask a trial, start its run, watch it (intermediate accuracies, pruning), tell the result."""

    def __init__(self, sweep: Sweep, study: Any, sweep_dir: Path, args: argparse.Namespace) -> None:
        self.sweep, self.study, self.dir, self.args = sweep, study, sweep_dir, args
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.procs: dict[int, Any] = {}
        self.started = 0
        cap = grid_size(sweep)
        self.target = min(args.trials, cap) if cap else args.trials
        self.threads = args.threads or max(1, _cpus() // args.jobs)

    def counted(self) -> int:
        """Trials that count toward --trials: finished ones plus those running now (anywhere).
        Queued (WAITING) trials do not count: they are the re-queued values of interrupted trials,
        and ``study.ask()`` hands them out first, so counting them would leave them never run."""
        from optuna.trial import TrialState

        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
                n += 1
            elif t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"):
                n += 1
        return n

    def command(self, trial: Any, values: dict[str, Any]) -> list[str]:
        argv = agent_argv(self.sweep, values, self.dir / "args" / f"trial_{trial.number:04d}.json")
        place = [f"logging.runs_dir={self.dir / 'trials'}", f"name=trial_{trial.number:04d}",
                 f"logging.wandb={self.args.wandb}", "logging.progress=false"]
        if "threads" not in values:
            place.append(f"threads={self.threads}")
        return argv + place

    def next_trial(self) -> tuple[Any, dict[str, Any]] | None:
        with self.lock:
            if self.stop.is_set() or self.counted() >= self.target:
                return None
            trial = self.study.ask()
            values = {p.name: p.suggest(trial) for p in self.sweep.params}
            trial.set_user_attr("args", values)
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            return trial, values

    def worker(self) -> None:
        while not self.stop.is_set():
            nxt = self.next_trial()
            if nxt is None:
                return
            self.run_trial(*nxt)

    def run_trial(self, trial: Any, values: dict[str, Any]) -> None:
        import subprocess

        from optuna.trial import TrialState

        from clplat.sweep_watch import Watcher

        cmd = self.command(trial, values)
        trial.set_user_attr("command", cmd)
        log = self.dir / "logs" / f"trial_{trial.number:04d}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        run_dir = self.dir / "trials" / f"trial_{trial.number:04d}"
        t0 = time.perf_counter()
        with open(log, "wb") as fh:
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            with self.lock:
                self.procs[trial.number] = proc
            watcher = Watcher(run_dir, self.sweep.metric)
            pruned = False
            while proc.poll() is None:
                try:
                    proc.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    pass
                if not pruned and self.sweep.early_terminate and self.report(trial, watcher):
                    pruned = True
                    proc.terminate()
            with self.lock:
                self.procs.pop(trial.number, None)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        with self.lock:
            self.finish(trial, proc.returncode, pruned, watcher, log, TrialState)

    def report(self, trial: Any, watcher: Any) -> bool:
        """Report new intermediate values; True when the pruner says stop."""
        new = watcher.poll()
        for step, value in new:
            trial.report(value, step)
        return bool(new) and trial.should_prune()

    def finish(self, trial: Any, rc: int, pruned: bool, watcher: Any, log: Path, TrialState: Any) -> None:
        if pruned:
            self.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number}: pruned", flush=True)
            return
        value = watcher.final() if rc == 0 else None
        if value is not None:
            self.tell(trial, value)
            print(f"trial {trial.number}: {self.sweep.metric} = {value:.4f}", flush=True)
            return
        if self.stop.is_set():  # stopped by the user: not counted, its values queued again
            trial.set_user_attr("interrupted", True)
            self.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(trial.params)
            return
        why = _last_line(log) if rc != 0 else f"no {self.sweep.metric} in results.json"
        trial.set_user_attr("error", f"exit {rc}: {why}")
        self.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number}: failed (exit {rc}): {why} — log {log}", file=sys.stderr, flush=True)

    def tell(self, trial: Any, value: float | None = None, state: Any = None) -> None:
        """``study.tell``; the GridSampler calls ``study.stop()`` once the grid is used up, which
        Optuna refuses outside ``optimize`` after the trial is already stored: that is not an error."""
        try:
            self.study.tell(trial, value, state=state)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise

    def interrupt(self) -> None:
        self.stop.set()
        with self.lock:
            for proc in self.procs.values():
                proc.terminate()


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]


def requeue_stale(study: Any) -> int:
    """Trials left RUNNING by a runner on this host that no longer exists (SIGKILL, power loss):
    mark them failed-interrupted (not counted) and queue their parameters again."""
    from optuna.trial import TrialState

    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if pid is None:  # its runner died between ask and recording the owner (milliseconds apart)
            if t.datetime_start is None or t.datetime_start >= STARTED:
                continue
        elif t.user_attrs.get("host") != host or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_study(sweep: Sweep, args: argparse.Namespace, sweep_dir: Path) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    storage = open_storage(url)
    name = args.study or sweep.path.stem
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(sweep, args.seed),
                                pruner=make_pruner(sweep), direction=sweep.direction, load_if_exists=True)
    text = sweep.path.read_text()
    known = study.user_attrs.get("sweep_yaml")
    if known is None:
        study.set_user_attr("sweep_yaml", text)
    elif known != text:
        raise UserError(f"study '{name}' in {url} was made from a different version of {sweep.path}; "
                        f"use another --dir/--study")
    return study


@main_guard
def main(argv: list[str] | None = None) -> int:
    import signal

    args = _parse(sys.argv[1:] if argv is None else argv)
    sweep = load_sweep(args.sweep)
    check_against_config(sweep)
    sweep_dir = Path(args.dir or Path("runs") / "sweeps" / sweep.path.stem)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(sweep, args, sweep_dir)
    if (n := requeue_stale(study)):
        print(f"{n} trial(s) interrupted earlier are queued again", flush=True)
    runner = Runner(sweep, study, sweep_dir, args)
    old = {s: signal.signal(s, lambda *_: runner.interrupt()) for s in (signal.SIGINT, signal.SIGTERM)}
    workers = [threading.Thread(target=runner.worker, daemon=True) for _ in range(args.jobs)]
    try:
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(timeout=0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    from clplat.sweep_report import report

    report(sweep, study, sweep_dir)
    if runner.stop.is_set():
        print(f"interrupted; run the same command again to continue the study in {sweep_dir}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
