"""Lightning callbacks that drive the stream: evaluation points, task ends, checkpoints, signals,
progress and W&B. The ``LightningModule`` itself only trains."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import lightning as L

from clplat.engine.metrics import anytime_due

if TYPE_CHECKING:
    from clplat.engine.experiment import Experiment


class StreamDriver(L.Callback):
    """Fires anytime evaluation every ``eval_period`` stream samples and at each task end,
    writes checkpoints, and turns SIGINT/SIGTERM into "checkpoint, then stop"."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.stop_signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self.eval_seconds = 0.0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.exp.restore_rng()  # after Lightning's own setup, so nothing draws in between
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.task_id = self.exp.batches[self.exp.cursor.batches_done].task_id

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        exp = self.exp
        cur = exp.cursor
        sb = exp.batches[cur.batches_done]
        before = cur.samples_seen
        cur.batches_done += 1
        cur.samples_seen = pl_module.samples_seen
        cur.updates += exp.cfg.online.online_iter if sb.indices else 0
        points = exp.plan.eval_points
        t0 = time.perf_counter()
        if anytime_due(cur.samples_seen, points, cur.next_eval, stream_end=cur.batches_done == len(exp.batches),
                       eval_at_end=exp.cfg.online.eval_at_end):  # the official rule (docs/metrics.md)
            exp.evaluate("anytime")
            cur.next_eval += 1
        if sb.last_of_task:
            exp.evaluate("task_end")
            exp.strategy.on_task_end(pl_module.context())
        self.eval_seconds += time.perf_counter() - t0
        every = exp.cfg.checkpoint_every
        due = (every > 0 and cur.samples_seen // every > before // every) or (every == 0 and sb.last_of_task)
        if cur.batches_done == len(exp.batches):
            cur.finished = True
            due = True
        if due or self.stop_signal is not None:
            exp.save_checkpoint()
        if self.stop_signal is not None and not cur.finished:
            exp.interrupted = True
            trainer.should_stop = True


class StreamProgress(L.Callback):
    """tqdm bar over stream samples with the latest anytime accuracy and loss; ETA from tqdm."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.exp.plan.total, initial=self.exp.cursor.samples_seen, unit="sample",
                        desc=self.exp.cfg.name, dynamic_ncols=True, disable=None, mininterval=0.5)

    def _set_postfix(self, pl_module: L.LightningModule) -> None:
        post = {"task": pl_module.task_id, "loss": f"{pl_module.last_loss:.3f}"}
        if self.exp.records:
            post["acc"] = f"{100 * self.exp.records[-1].accuracy:.1f}"
        self.bar.set_postfix(post, refresh=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.n = self.exp.cursor.samples_seen
        # tqdm redraws at most every ``mininterval`` s; formatting the postfix for every batch
        # (most of this callback's cost on small models) only pays off when a redraw is due
        if bar.disable or time.time() - bar.last_print_t < bar.mininterval:
            return
        self._set_postfix(pl_module)
        bar.update(0)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            if not self.bar.disable:
                self._set_postfix(pl_module)  # the final line shows the last batch's values
            self.bar.close()
