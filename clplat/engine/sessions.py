"""The sessions regime (``regime: sessions``): each task of the scenario is a session, trained for
its own number of epochs with its own optimizer and schedule, then evaluated on the test samples
of every class seen so far (logits of unseen classes masked).

One ``Trainer.fit`` per session over that session's remaining epochs (one flat batch list, so the
epoch boundaries are ours: the learning rate, ``on_epoch_start`` and the checkpoints hang on
them). The data order of an epoch is a pure function of ``(seed, session, epoch)`` and the
checkpoint written at every epoch end holds everything else (model, optimizer, every RNG,
exposure, which parameters train), so a run killed at any moment and resumed from its last
checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from clplat.backbones import build_backbone
from clplat.config import Config, SessionPhaseConfig
from clplat.data import build_dataset
from clplat.data.base import collate_batch
from clplat.engine.augment import build_augment
from clplat.engine.checkpoint import CheckpointedRun, rng_state
from clplat.engine.distributed import REPLICAS, ShareSampler, any_rank, global_batchnorm_, trainer_args, world
from clplat.engine.evaluation import evaluate
from clplat.engine.metrics import EvalRecord
from clplat.engine.module import ContinualModule
from clplat.engine.session_metrics import session_metrics
from clplat.engine.task_eval import evaluate_tasks, parameter_metrics, task_metrics
from clplat.engine.wandb_log import WandbRun
from clplat.errors import UserError
from clplat.scenarios import build_scenario
from clplat.strategies import STRATEGIES

FORMAT_VERSION = 1


@dataclass
class SessionCursor:
    """Where a sessions run is; plain values so it checkpoints with ``weights_only=True``.

    ``epoch`` counts the finished epochs of ``session``; ``started`` says its ``on_session_start``
    ran and its optimizer exists. ``samples_seen`` counts training samples over all epochs."""

    session: int = 0
    epoch: int = 0
    started: bool = False
    samples_seen: int = 0
    updates: int = 0
    finished: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.__dict__:
            setattr(self, k, state[k])


@dataclass(frozen=True)
class EpochBatch:
    epoch: int
    indices: list[int]
    last_of_epoch: bool


def epoch_order(n: int, seed: int, session: int, epoch: int) -> list[int]:
    """The shuffled order of a session's samples in one epoch: a function of its arguments only."""
    key = int(np.random.SeedSequence([seed, session, epoch]).generate_state(1, np.uint64)[0] >> 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(key)).tolist()


def session_batches(indices: list[int], batch_size: int, seed: int, session: int,
                    epochs: range) -> list[EpochBatch]:
    """The batches of ``epochs`` of one session, in training order (each epoch's last may be short)."""
    out: list[EpochBatch] = []
    for e in epochs:
        order = [indices[i] for i in epoch_order(len(indices), seed, session, e)]
        for s in range(0, len(order), batch_size):
            out.append(EpochBatch(e, order[s : s + batch_size], s + batch_size >= len(order)))
    return out


class _ListSampler(Sampler[list[int]]):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def cosine_factor(epoch: int, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def set_epoch_lr(optimizer: torch.optim.Optimizer, phase: SessionPhaseConfig, epoch: int) -> None:
    """Scale every group's own initial lr for ``epoch`` (stateless, so a resume needs nothing)."""
    factor = cosine_factor(epoch, phase.epochs) if phase.schedule == "cosine" else 1.0
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor


class SessionModule(ContinualModule):
    """One optimizer update per batch; the optimizer is the current session's."""

    def __init__(self, *args: Any, phase_name: str = "base", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase_name = phase_name
        self.updates = 0  # made by this process (a resumed run proves where it started)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y_orig = batch
        ctx = self.context()
        y = ctx.to_index(y_orig)
        with self.split_update(batch_idx, x.shape[0]) as update:  # DDP: this process's share
            out = self.strategy.training_loss(x if self.strategy.augments_itself else self.augment(x), y, ctx)
        loss = out["loss"] if isinstance(out, dict) else out
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UserError(f"loss became {value} in session {self.session}, epoch {self.epoch} "
                            f"(strategy '{type(self.strategy).__name__}', lr {self.optim_cfg.lr}); "
                            f"lower sessions.{self.phase_name}.optim.lr or check the data")
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.synced_backward(update.scale(loss))
        if self.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        opt.step()
        grow = getattr(self.strategy, "after_update", None)  # senn: may grow, editing the optimizer in place
        if grow is not None and grow(self._optimizer, ctx):
            self.params_changed = True
        self.last_loss = value
        self.updates += 1
        return None


class SessionDriver(L.Callback):
    """Epoch boundaries inside one session's fit: lr schedule, ``on_epoch_start``, checkpoints,
    stop requests. Gets only what it needs from the run (no experiment object)."""

    def __init__(self, run: SessionExperiment, batches: list[EpochBatch], phase: SessionPhaseConfig) -> None:
        self.run, self.batches, self.phase = run, batches, phase
        self.i = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run.restore_rng()  # a mid-session resume: after Lightning's setup, as uninterrupted
        self.run.catch_signals()  # over Lightning's own SIGTERM handler (it exits the process)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        b = self.batches[self.i]
        pl_module.epoch, pl_module.session_epochs = b.epoch, self.phase.epochs
        if self.i == 0 or self.batches[self.i - 1].epoch != b.epoch:
            set_epoch_lr(pl_module.make_optimizer(), self.phase, b.epoch)
            self.run.strategy.on_epoch_start(pl_module.session, b.epoch, pl_module.context())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(pl_module, "params_changed", False):  # the model grew: a resume rebuilds the grown groups
            self.run.start_grads, pl_module.params_changed = self.run._grads(), False
        b = self.batches[self.i]
        self.i += 1
        cur = self.run.cursor
        cur.samples_seen += len(b.indices)
        cur.updates += 1
        self.run.progress(1)
        if b.last_of_epoch:
            cur.epoch = b.epoch + 1
            if cur.epoch < self.phase.epochs:  # the last epoch's checkpoint follows the evaluation
                self.run.save_checkpoint()
        if any_rank(self.run.stop_signal is not None):  # DDP: every process stops after the same batch
            self.run.stop_signal = self.run.stop_signal or signal.SIGTERM
            trainer.should_stop = True


class SessionExperiment(CheckpointedRun):
    """A sessions run: data, sessions plan, strategy; ``run()`` trains and evaluates every session."""

    def __init__(self, cfg: Config, run_dir: Path | None = None) -> None:
        from clplat.engine.experiment import seed_all

        self.cfg, self.run_dir = cfg, run_dir
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)
        self.data = build_dataset(cfg.data, cfg.seed)
        self.plan = build_scenario(cfg.scenario, self.data, cfg.seed, cfg.online.eval_period)
        # head unit j = j-th class exposed; a session exposes its new classes in ascending id order
        self.session_classes = [sorted(c) for c in self.plan.new_classes(self.data.train_targets)]
        seed_all(cfg.seed)  # model init does not depend on how much the data builders drew
        backbone = build_backbone(cfg.backbone, self.data.input_shape)
        self.strategy = global_batchnorm_(STRATEGIES.get(cfg.strategy)(cfg.strategy_config, backbone,
                                                                       self.data.num_classes, self.data.input_shape))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.cursor = SessionCursor()  # the one owner of samples_seen
        self.module = SessionModule(
            self.strategy, cfg.sessions.base.optim, num_classes=self.data.num_classes, online_iter=1,
            augment=build_augment(cfg.augment, self.generator, getattr(self.data.train, "mean", None),
                                  getattr(self.data.train, "std", None)),
            generator=self.generator, cursor=self.cursor, gradient_clip_val=cfg.trainer.gradient_clip_val)
        self.records: list[EvalRecord] = []
        self.task_extra: list[dict[str, list[int]]] = []  # task_incremental: TIL/task-id counts per session
        self._pending_rng: dict[str, Any] | None = None
        self._pending_optimizer: dict[str, Any] | None = None
        self._pending_grads: tuple[list[bool], list[bool]] | None = None
        self.start_grads: list[bool] = []
        self.stop_signal: int | None = None
        self.interrupted = False
        self.wandb: WandbRun | None = None
        self.wandb_id: str | None = None
        self.eval_seconds = 0.0
        self.bar = None

    @property
    def n_sessions(self) -> int:
        return self.plan.n_tasks

    # --- state ------------------------------------------------------------------------------------
    def _grads(self) -> list[bool]:
        return [p.requires_grad for p in self.strategy.parameters()]

    def _set_grads(self, flags: list[bool]) -> None:
        params = list(self.strategy.parameters())
        if len(flags) != len(params):
            raise UserError(f"checkpoint has {len(flags)} parameters, the model {len(params)}")
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(bool(f))

    def state_dict(self) -> dict[str, Any]:
        opt = self.module._optimizer if self.cursor.started else None
        return {
            "format": FORMAT_VERSION, "regime": "sessions",
            "strategy": self.strategy.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "requires_grad": self._grads(), "requires_grad_at_start": list(self.start_grads),
            "rng": rng_state(self.generator), "cursor": self.cursor.state_dict(),
            "exposure": self.module.tracker.state_dict(), "records": [r.to_dict() for r in self.records],
            "task_extra": list(self.task_extra),
            "wandb_id": self.wandb.id if self.wandb else self.wandb_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT_VERSION or state.get("regime") != "sessions":
            raise UserError("not a checkpoint of a sessions run of this version")
        self.strategy.load_state_dict(state["strategy"])
        self.cursor.load_state_dict(state["cursor"])
        self.module.tracker.load_state_dict(state["exposure"])
        self.records = [EvalRecord.from_dict(r) for r in state["records"]]
        self.task_extra = list(state.get("task_extra", []))
        self.wandb_id = state.get("wandb_id")
        self._pending_rng = state["rng"]
        self._pending_optimizer = state["optimizer"]
        self._pending_grads = (state["requires_grad_at_start"], state["requires_grad"])
        self._set_grads(state["requires_grad"])

    # --- one session ------------------------------------------------------------------------------
    def hook_loader(self, session: int) -> DataLoader:
        """Un-augmented ``(x, y_orig)`` batches of the session's training data, plan order, one pass."""
        idx, bs = self.plan.tasks[session], self.cfg.sessions.phase(session).eval_batch
        chunks = [idx[s : s + bs] for s in range(0, len(idx), bs)]
        return DataLoader(self.data.train, batch_sampler=_ListSampler(chunks), collate_fn=collate_batch, num_workers=0)

    def _begin(self, session: int, phase: SessionPhaseConfig) -> None:
        """Expose the session's classes, run ``on_session_start`` and build its optimizer (or, on a
        resume mid-session, rebuild the optimizer as it was and load its state)."""
        m = self.module
        m.optim_cfg, m._optimizer = phase.optim, None
        if not self.cursor.started:
            self.restore_rng()  # a resume at a session boundary continues from here
            m.tracker.expose(torch.as_tensor(self.session_classes[session], dtype=torch.long))
            self.strategy.on_session_start(session, self.hook_loader(session), m.context())
            self.start_grads = self._grads()
            if phase.epochs:
                m.make_optimizer()
            self.cursor.started = True
            return
        assert self._pending_grads is not None
        self.start_grads, now = self._pending_grads
        self._set_grads(self.start_grads)  # the parameter groups as the session built them
        opt = m.make_optimizer()
        if self._pending_optimizer is not None:
            opt.load_state_dict(self._pending_optimizer)
        self._set_grads(now)
        self._pending_grads = self._pending_optimizer = None

    def _train(self, session: int, phase: SessionPhaseConfig) -> None:
        from clplat.engine.experiment import quiet_lightning

        batches = session_batches(self.plan.tasks[session], phase.batch_size, self.cfg.seed, session,
                                  range(self.cursor.epoch, phase.epochs))
        if not batches:
            return
        quiet_lightning()
        tc = self.cfg.trainer
        trainer = L.Trainer(**trainer_args(tc), max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[SessionDriver(self, batches, phase)],
                            default_root_dir=str(self.run_dir) if self.run_dir else None)
        sampler: Sampler[list[int]] = _ListSampler([b.indices for b in batches])
        if world().distributed:  # this process's share of each batch
            sampler = ShareSampler(sampler, world())
            self.module.use_split(sampler)
        loader = DataLoader(self.data.train, batch_sampler=sampler, collate_fn=collate_batch, num_workers=0)
        trainer.fit(self.module, loader)

    def _end(self, session: int, phase: SessionPhaseConfig) -> None:
        m = self.module
        self.strategy.on_session_end(session, self.hook_loader(session), m.context())
        t0 = time.perf_counter()
        if self.plan.kind == "task_incremental":  # CIL record plus TIL and task-id counts, one pass
            rec, extra = evaluate_tasks(self.strategy, self.data.test, self.data.test_targets, m.context(),
                                        self.session_classes, num_classes=self.data.num_classes,
                                        batch_size=phase.eval_batch, device=m.device,
                                        samples_seen=self.cursor.samples_seen, session=session)
            self.task_extra.append(extra)
        else:
            rec = evaluate(self.strategy, self.data.test, self.data.test_targets, m.context(),
                           num_classes=self.data.num_classes, batch_size=phase.eval_batch, device=m.device,
                           samples_seen=self.cursor.samples_seen, task_id=session, kind="task_end")
        self.eval_seconds += time.perf_counter() - t0
        self.records.append(rec)
        if self.wandb is not None:
            self.wandb.log({"session/accuracy": rec.accuracy, "session": session,
                            "train/loss": m.last_loss}, step=self.cursor.samples_seen)
        cur = self.cursor
        cur.session, cur.epoch, cur.started = session + 1, 0, False
        cur.finished = cur.session >= self.n_sessions
        self.save_checkpoint()

    def run_session(self, session: int) -> None:
        phase = self.cfg.sessions.phase(session)
        m = self.module
        m.session = m.task_id = session
        m.phase_name = "base" if session == 0 else "incremental"
        self._begin(session, phase)
        self._train(session, phase)
        if self.stop_signal is not None and self.cursor.epoch < phase.epochs:
            self.interrupted = True
            return
        self._end(session, phase)

    # --- the run ----------------------------------------------------------------------------------
    def total_batches(self) -> tuple[int, int]:
        """(all training batches of the run, those already done)."""
        total = done = 0
        for s, idx in enumerate(self.plan.tasks):
            ph = self.cfg.sessions.phase(s)
            per_epoch = math.ceil(len(idx) / ph.batch_size)
            total += per_epoch * ph.epochs
            if s < self.cursor.session:
                done += per_epoch * ph.epochs
            elif s == self.cursor.session:
                done += per_epoch * self.cursor.epoch
        return total, done

    def progress(self, n: int = 0) -> None:
        if self.bar is None:
            return
        self.bar.update(n)
        ph = self.cfg.sessions.phase(self.module.session)
        post = {"session": f"{self.module.session}/{self.n_sessions - 1}",
                "epoch": f"{self.module.epoch + 1}/{ph.epochs}", "loss": f"{self.module.last_loss:.3f}"}
        if self.records:
            post["acc"] = f"{100 * self.records[-1].accuracy:.1f}"
        self.bar.set_postfix(post, refresh=False)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def catch_signals(self) -> dict[int, Any]:
        """SIGINT/SIGTERM -> stop at the next batch; the last epoch-end checkpoint stands."""
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return old

    def run(self) -> None:
        old = self.catch_signals()
        if self.cfg.logging.progress:
            from tqdm.auto import tqdm

            total, done = self.total_batches()
            self.bar = tqdm(total=total, initial=done, unit="batch", desc=self.cfg.name, dynamic_ncols=True,
                            disable=None, mininterval=0.5)
        try:
            while not self.cursor.finished and not self.interrupted:
                if any_rank(self.stop_signal is not None):  # DDP: all processes or none
                    self.interrupted = True
                    break
                self.run_session(self.cursor.session)
        finally:
            if self.bar is not None:
                self.progress()
                self.bar.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def write_outputs(self, run_dir: Path, results: dict[str, Any]) -> dict[str, Path]:
        """Plots and CSVs beside results.json; returns the plots W&B gets."""
        from clplat.engine.plots import plot_sessions, plot_task_results
        from clplat.engine.rundir import write_curve_csv
        from clplat.engine.session_metrics import write_session_csv

        plot = run_dir / "session_accuracy.png"
        plot_sessions(plot, results, f"{self.cfg.name} ({self.cfg.strategy})")
        if "til_matrix" in results:  # task_incremental: TIL/CIL matrices, parameters per task
            plot_task_results(run_dir, results, f"{self.cfg.name} ({self.cfg.strategy})")
        extra = getattr(self.strategy, "run_outputs", None)  # senn: growth events, architecture.json
        if extra is not None:
            results.update(extra(run_dir))
            self.strategy.plot(run_dir, results, f"{self.cfg.name} ({self.cfg.strategy})")
        write_curve_csv(run_dir, results["evals"])
        write_session_csv(run_dir, results)
        return {"sessions": plot}

    def results(self) -> dict[str, Any]:
        records = [r.to_dict() for r in self.records]
        m = session_metrics(records, self.session_classes)
        if self.task_extra:
            m.update(task_metrics(records, self.task_extra, self.session_classes), **parameter_metrics(self.strategy))
        return {
            "name": self.cfg.name, "strategy": self.cfg.strategy, "seed": self.cfg.seed,
            "dataset": self.cfg.data.dataset, "regime": "sessions", **m,
            "metrics": {k: m[k] for k in ("a_avg", "a_last", "pd")},
            "session_classes": self.session_classes, "session_samples": [len(t) for t in self.plan.tasks],
            "evals": records, "updates": self.cursor.updates, "eval_time_s": round(self.eval_seconds, 3),
        }


def experiment_class(cfg: Config) -> type[SessionExperiment]:
    """A strategy whose task is not classification names its own experiment with a classmethod
    ``session_experiment()`` (PFNR: video decoding metrics instead of class accuracy); others get
    :class:`SessionExperiment`."""
    hook = getattr(STRATEGIES.get(cfg.strategy), "session_experiment", None)
    return hook() if hook is not None else SessionExperiment


def run_sessions(cfg: Config, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Run or resume a sessions run in ``run_dir``; returns what results.json holds."""
    from clplat.engine.rundir import write_config, write_results

    start = time.perf_counter()
    exp = experiment_class(cfg)(cfg, run_dir)
    if resume:
        exp.resume_from(run_dir)
    else:
        if world().is_main:  # DDP: rank 0 writes, the other processes train along
            write_config(run_dir, cfg.to_dict())
        exp.save_checkpoint()  # a stop before the first epoch ends still leaves a resumable run
    process = {"resumed": resume, "start_session": exp.cursor.session, "start_epoch": exp.cursor.epoch,
               "start_updates": exp.cursor.updates}
    if resume and world().is_main:
        import sys

        print(f"resuming {run_dir} at session {exp.cursor.session}, epoch {exp.cursor.epoch} "
              f"({exp.cursor.updates} updates done)", file=sys.stderr, flush=True)
    exp.wandb = WandbRun(cfg, run_dir, cfg.to_dict(), resume_id=exp.wandb_id) if world().is_main else None
    exp.run()
    process["updates"] = exp.module.updates
    if exp.interrupted:
        exp.close_interrupted()
        return {"interrupted": True, "run_dir": str(run_dir), "samples_seen": exp.cursor.samples_seen,
                "where": f"session {exp.cursor.session} ({exp.cursor.epoch} epochs done)"}
    results = exp.results()
    results["wall_time_s"] = round(time.perf_counter() - start, 3)
    results["process"] = process
    if world().distributed:
        results["distributed"] = REPLICAS.to_dict()
        if not world().is_main:
            return {**results, "run_dir": str(run_dir)}
    plots = exp.write_outputs(run_dir, results)
    write_results(run_dir, results)
    if exp.wandb is not None:
        exp.wandb.finish({f"final/{k}": v for k, v in results["metrics"].items()}, plots)
    results["run_dir"] = str(run_dir)
    return results
