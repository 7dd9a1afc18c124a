"""Lightning callbacks that drive the stream: evaluation points, task ends, checkpoints, signals,
progress and W&B. The ``LightningModule`` itself only trains."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import lightning as L

from clplat.engine.distributed import any_rank
from clplat.engine.driver import StreamBatch, StreamCursor
from clplat.engine.metrics import anytime_due


class StreamDriver(L.Callback):
    """Fires anytime evaluation every ``eval_period`` stream samples and at each task end,
    writes checkpoints, and turns SIGINT/SIGTERM into "checkpoint, then stop".

    It gets only what it needs: the plan's batches, the cursor (the one owner of
    ``samples_seen``), the eval points and three callables (``evaluate(kind)``, ``checkpoint()``,
    ``restore_rng()``); ``interrupted`` tells the caller a signal stopped the fit."""

    def __init__(self, batches: list[StreamBatch], cursor: StreamCursor, *, eval_points: list[int],
                 evaluate: Callable[[str], Any], checkpoint: Callable[[], None], restore_rng: Callable[[], None],
                 online_iter: int, checkpoint_every: int = 0, eval_at_end: bool = False) -> None:
        self.batches, self.cursor, self.eval_points = batches, cursor, eval_points
        self.evaluate, self.checkpoint, self.restore_rng = evaluate, checkpoint, restore_rng
        self.online_iter, self.checkpoint_every, self.eval_at_end = online_iter, checkpoint_every, eval_at_end
        self.stop_signal: int | None = None
        self.interrupted = False
        self._old_handlers: dict[int, Any] = {}
        self.eval_seconds = 0.0
        self.fit_seconds = 0.0  # from the first batch on: excludes setup and (DDP) process start
        self._fit_start = 0.0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_rng()  # after Lightning's own setup, so nothing draws in between
        self._fit_start = time.perf_counter()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds += time.perf_counter() - self._fit_start
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.task_id = self.batches[self.cursor.batches_done].task_id

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cur = self.cursor
        sb = self.batches[cur.batches_done]
        before = cur.samples_seen
        cur.batches_done += 1
        cur.samples_seen += len(sb.indices)
        cur.updates += self.online_iter if sb.indices else 0
        points = self.eval_points
        t0 = time.perf_counter()
        if anytime_due(cur.samples_seen, points, cur.next_eval, stream_end=cur.batches_done == len(self.batches),
                       eval_at_end=self.eval_at_end):  # the official rule (docs/metrics.md)
            self.evaluate("anytime")
            cur.next_eval += 1
        if sb.last_of_task:
            self.evaluate("task_end")
            pl_module.strategy.on_task_end(pl_module.context())
        self.eval_seconds += time.perf_counter() - t0
        every = self.checkpoint_every
        due = (every > 0 and cur.samples_seen // every > before // every) or (every == 0 and sb.last_of_task)
        if cur.batches_done == len(self.batches):
            cur.finished = True
            due = True
        stop = any_rank(self.stop_signal is not None)  # DDP: every process stops after the same batch
        if due or stop:
            self.checkpoint()
        if stop and not cur.finished:
            self.interrupted = True
            trainer.should_stop = True


class StreamProgress(L.Callback):
    """tqdm bar over stream samples with the latest anytime accuracy and loss; ETA from tqdm."""

    def __init__(self, name: str, total: int, cursor: StreamCursor,
                 latest_accuracy: Callable[[], float | None]) -> None:
        self.name, self.total, self.cursor, self.latest_accuracy = name, total, cursor, latest_accuracy
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.cursor.samples_seen, unit="sample",
                        desc=self.name, dynamic_ncols=True, disable=None, mininterval=0.5)

    def _set_postfix(self, pl_module: L.LightningModule) -> None:
        post = {"task": pl_module.task_id, "loss": f"{pl_module.last_loss:.3f}"}
        acc = self.latest_accuracy()
        if acc is not None:
            post["acc"] = f"{100 * acc:.1f}"
        self.bar.set_postfix(post, refresh=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.n = self.cursor.samples_seen
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
