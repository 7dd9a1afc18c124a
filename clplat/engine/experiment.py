"""One experiment end to end: data -> plan -> strategy -> one ``Trainer.fit`` over the stream ->
metrics, plots and results in the run directory. Also resumes a killed or interrupted run."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from clplat.backbones import build_backbone
from clplat.config import Config, build_config
from clplat.data import build_dataset
from clplat.data.base import collate_batch
from clplat.engine.augment import build_augment
from clplat.engine.callbacks import StreamDriver, StreamProgress
from clplat.engine.checkpoint import CHECKPOINT, CheckpointedRun, ProcessRecord, rng_state  # noqa: F401 (CHECKPOINT: public here)
from clplat.engine.distributed import (
    REPLICAS,
    ShareSampler,
    global_batchnorm_,
    setup_world,
    shared_run_dir,
    trainer_args,
    world,
)
from clplat.engine.driver import PlanBatchSampler, StreamCursor, plan_batches
from clplat.engine.evaluation import evaluate
from clplat.engine.metrics import EvalRecord, summarize
from clplat.engine.module import ContinualModule
from clplat.engine.rundir import dropped_if_empty_on_error, new_run_dir, write_config, write_curve_csv, write_results
from clplat.engine.wandb_log import WandbRun
from clplat.errors import UserError
from clplat.scenarios import build_scenario
from clplat.strategies import STRATEGIES

FORMAT_VERSION = 1


def quiet_lightning() -> None:
    """Lightning's banners (GPU available, tips, 'max_epochs reached') are noise in a stream run."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen backbones


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Experiment(CheckpointedRun):
    def __init__(self, cfg: Config, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.interrupted = False
        self.records: list[EvalRecord] = []
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)
        self.data = build_dataset(cfg.data, cfg.seed)
        self.plan = build_scenario(cfg.scenario, self.data, cfg.seed, cfg.online.eval_period)
        self.batches = plan_batches(self.plan.tasks, cfg.online.stream_batch)
        self.task_classes = self.plan.new_classes(self.data.train_targets)
        seed_all(cfg.seed)  # model init does not depend on how much the data builders drew
        backbone = build_backbone(cfg.backbone, self.data.input_shape)
        strategy_cls = STRATEGIES.get(cfg.strategy)
        self.strategy = global_batchnorm_(strategy_cls(cfg.strategy_config, backbone, self.data.num_classes,
                                                       self.data.input_shape))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.cursor = StreamCursor()  # the one owner of samples_seen
        self.module = ContinualModule(
            self.strategy, cfg.optim, num_classes=self.data.num_classes, online_iter=cfg.online.online_iter,
            augment=build_augment(cfg.augment, self.generator, getattr(self.data.train, "mean", None),
                                  getattr(self.data.train, "std", None)),
            generator=self.generator, cursor=self.cursor,
            gradient_clip_val=cfg.trainer.gradient_clip_val)
        self.module.make_optimizer()
        self._pending_rng: dict[str, Any] | None = rng_state(self.generator)
        self.wandb: WandbRun | None = None
        self.wandb_id: str | None = None
        self.driver: StreamDriver | None = None
        self.process: ProcessRecord | None = None  # set by run_experiment

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "strategy": self.strategy.state_dict(),
            "optimizer": self.module.make_optimizer().state_dict(),
            "rng": rng_state(self.generator),
            "cursor": self.cursor.state_dict(),
            "exposure": self.module.tracker.state_dict(),
            "task_id": self.module.task_id,
            "records": [r.to_dict() for r in self.records],
            "wandb_id": self.wandb.id if self.wandb else self.wandb_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT_VERSION:
            raise UserError(f"checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
        self.strategy.load_state_dict(state["strategy"])
        self.module.make_optimizer().load_state_dict(state["optimizer"])
        self.cursor.load_state_dict(state["cursor"])
        self.module.tracker.load_state_dict(state["exposure"])
        self.module.task_id = int(state["task_id"])
        self.records = [EvalRecord.from_dict(r) for r in state["records"]]
        self.wandb_id = state.get("wandb_id")
        self._pending_rng = state["rng"]

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, kind: str) -> EvalRecord:
        m = self.module
        rec = evaluate(self.strategy, self.data.test, self.data.test_targets, m.context(),
                       num_classes=self.data.num_classes, batch_size=self.cfg.online.eval_batch,
                       device=m.device, samples_seen=self.cursor.samples_seen, task_id=m.task_id, kind=kind)
        self.records.append(rec)
        if self.wandb is not None:
            self.wandb.log({f"{kind}/accuracy": rec.accuracy, "task": m.task_id,
                            "n_exposed": m.tracker.n_exposed, "train/loss": m.last_loss},
                           step=self.cursor.samples_seen)
        return rec

    # --- the run --------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        quiet_lightning()
        self.driver = StreamDriver(
            self.batches, self.cursor, eval_points=self.plan.eval_points, evaluate=self.evaluate,
            checkpoint=self.save_checkpoint, restore_rng=self.restore_rng, online_iter=cfg.online.online_iter,
            checkpoint_every=cfg.checkpoint_every, eval_at_end=cfg.online.eval_at_end)
        callbacks: list[L.Callback] = [self.driver]
        if cfg.logging.progress:
            callbacks.append(StreamProgress(cfg.name, self.plan.total, self.cursor,
                                            lambda: self.records[-1].accuracy if self.records else None))
        trainer = L.Trainer(
            **trainer_args(cfg.trainer), max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
            default_root_dir=str(self.run_dir) if self.run_dir else None,
        )
        sampler = PlanBatchSampler(self.batches, self.cursor.batches_done)
        if world().distributed:  # this process's share of each stream batch
            sampler = ShareSampler(sampler, world())
            self.module.use_split(sampler)
        loader = DataLoader(self.data.train, batch_sampler=sampler, collate_fn=collate_batch, num_workers=0,
                            generator=torch.Generator())
        if len(loader) > 0:
            trainer.fit(self.module, loader)
        self.interrupted = self.driver.interrupted

    def summary(self) -> dict[str, Any]:
        return summarize(self.records, self.task_classes)


def _results(exp: Experiment, wall: float) -> dict[str, Any]:
    s = exp.summary()
    metrics = {k: s[k] for k in ("A_auc", "A_avg", "A_last", "F_last", "BWT")}
    return {
        "name": exp.cfg.name, "strategy": exp.cfg.strategy, "seed": exp.cfg.seed,
        "dataset": exp.cfg.data.dataset, "metrics": metrics, "acc_matrix": s["acc_matrix"],
        "task_ends": exp.plan.task_ends, "total_samples": exp.plan.total,
        "task_classes": exp.task_classes, "evals": [r.to_dict() for r in exp.records],
        "wall_time_s": round(wall, 3),
        "eval_time_s": round(exp.driver.eval_seconds, 3) if exp.driver else 0.0,
        "fit_time_s": round(exp.driver.fit_seconds, 3) if exp.driver else 0.0,  # this process's stream
        "process": exp.process.to_dict() if exp.process else None,  # where THIS process started
        **({"distributed": REPLICAS.to_dict()} if world().distributed else {}),
    }


def finalize(exp: Experiment, wall: float) -> dict[str, Any]:
    from clplat.engine.plots import plot_curve, plot_matrix

    assert exp.run_dir is not None
    results = _results(exp, wall)
    rd = exp.run_dir
    plots = {"curve": rd / "accuracy_curve.png", "matrix": rd / "accuracy_matrix.png"}
    plot_curve(plots["curve"], results["evals"], exp.plan.task_ends, f"{exp.cfg.name} ({exp.cfg.strategy})")
    plot_matrix(plots["matrix"], results["acc_matrix"], "task accuracy matrix (%)")
    write_curve_csv(rd, results["evals"])
    write_results(rd, results)
    if exp.wandb is not None:
        exp.wandb.finish({f"final/{k}": v for k, v in results["metrics"].items()}, plots)
    return results


def run_experiment(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) one experiment; returns the results dict also written to results.json.
    ``results['interrupted']`` is true when a signal stopped it (a checkpoint was written).
    DDP (``trainer.strategy: ddp``): every process calls it; rank 0 makes and writes the run directory."""
    setup_world(cfg)
    if run_dir is None:
        run_dir = shared_run_dir(lambda: new_run_dir(cfg.logging.runs_dir, cfg.name))
        with dropped_if_empty_on_error(run_dir):
            return _run_in(cfg, run_dir, resume)
    return _run_in(cfg, shared_run_dir(lambda: run_dir, run_dir), resume)


def _run_in(cfg: Config, run_dir: Path, resume: bool) -> dict[str, Any]:
    start = time.perf_counter()
    if cfg.regime == "sessions":
        from clplat.engine.sessions import run_sessions

        return run_sessions(cfg, run_dir, resume)
    exp = Experiment(cfg, run_dir)
    main = world().is_main
    if resume:
        exp.resume_from(run_dir)
    elif main:
        write_config(run_dir, cfg.to_dict())
    exp.wandb = WandbRun(cfg, run_dir, cfg.to_dict(), resume_id=exp.wandb_id) if main else None
    exp.process = ProcessRecord(exp.cursor, exp.module.make_optimizer(), resumed=resume)
    exp.process.announce(run_dir)
    exp.fit()
    if exp.interrupted:
        exp.close_interrupted()
        return {"interrupted": True, "run_dir": str(run_dir), "samples_seen": exp.cursor.samples_seen}
    if not exp.cursor.finished:  # an empty stream
        exp.cursor.finished = True
        exp.save_checkpoint()
    if not main:
        return {**_results(exp, time.perf_counter() - start), "run_dir": str(run_dir)}
    results = finalize(exp, time.perf_counter() - start)
    results["run_dir"] = str(run_dir)
    return results


def resume_experiment(run_dir: str | Path) -> dict[str, Any]:
    import yaml

    rd = Path(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{rd} is not a run directory (no config.yaml)")
    cfg = build_config(yaml.safe_load(cfg_path.read_text()))
    return run_experiment(cfg, rd, resume=True)
