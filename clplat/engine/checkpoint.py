"""Explicit-state checkpoints: model, optimizer, memory (inside the strategy's state_dict), every
RNG, the stream cursor and the metric history — plain tensors and containers, never a pickled
strategy object, written atomically and read back with ``weights_only=True``."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clplat.engine.distributed import REPLICAS, world
from clplat.errors import UserError, one_line
from clplat.io import atomic_torch_save
from clplat.nn import state_mismatch

CHECKPOINT = "checkpoints/last.pt"  # inside a run directory


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "engine": generator.get_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["engine"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class CheckpointedRun:
    """The run-state plumbing both regimes share: an RNG state loaded from a checkpoint waits in
    ``_pending_rng`` until the driver restores it (after Lightning's setup, which draws), and the
    run's ``state_dict()`` is written atomically to ``run_dir/CHECKPOINT``, and read back on resume."""

    run_dir: Path | None
    generator: torch.Generator
    _pending_rng: dict[str, Any] | None
    cursor: Any  # with ``finished``
    strategy: Any  # a ``Strategy``
    wandb: Any  # a ``WandbRun`` or None

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore_rng(self) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng, self.generator)
            self._pending_rng = None

    def save_checkpoint(self) -> None:
        """Every process calls it at the same points; under DDP the processes first check that their
        states agree (``distributed.REPLICAS``), then rank 0 alone writes."""
        w = world()
        state = self.state_dict() if w.distributed else None
        if state is not None:
            REPLICAS(state)
        if self.run_dir is not None and w.is_main:
            atomic_save(state if state is not None else self.state_dict(), self.run_dir / CHECKPOINT)

    def resume_from(self, run_dir: Path) -> None:
        """Load ``run_dir``'s last checkpoint; resuming a finished run, or a run of a strategy that
        cannot be resumed, is a ``UserError``."""
        self.strategy.check_resumable()
        restore(self, run_dir / CHECKPOINT)
        if self.cursor.finished:
            raise UserError(f"{run_dir} is already complete (results in {run_dir / 'results.json'})")

    def close_interrupted(self) -> None:
        """A signal stopped the run: its W&B run ends marked failed, to be resumed later."""
        if self.wandb is not None and self.wandb.run is not None:
            self.wandb.run.finish(exit_code=1)


def atomic_save(obj: Any, path: Path) -> None:
    """A kill at any moment leaves either the old checkpoint or the new one, never half a file."""
    atomic_torch_save(obj, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"checkpoint {path} is unreadable ({type(err).__name__})") from None


def restore(target: Any, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``target`` (anything with ``load_state_dict``, e.g. the
    experiment). A checkpoint that does not fit the model built from the run's ``config.yaml``
    (another architecture, a changed width, another strategy) is one ``UserError`` line naming the
    file and the first differences, never a traceback."""
    state = load_checkpoint(path)
    try:
        target.load_state_dict(state)
    except UserError as err:
        raise UserError(f"checkpoint {path}: {err}") from None
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        strategy = getattr(target, "strategy", None)
        detail = None
        if isinstance(strategy, torch.nn.Module) and isinstance(state.get("strategy"), dict):
            detail = state_mismatch(strategy, state["strategy"])
        detail = detail or f"{type(err).__name__}: {one_line(err)}"
        raise UserError(f"checkpoint {path} does not match the model built from "
                        f"{path.parent.parent / 'config.yaml'}: {detail}") from None
    _check_stream(target, path)


def _check_stream(target: Any, path: Path) -> None:
    """The cursor must fit the stream planned from the run's config: the first ``batches_done``
    batches hold exactly ``samples_seen`` samples. A changed seed, scenario, dataset or
    ``stream_batch`` almost always breaks this, and would otherwise resume a different stream."""
    batches, cursor = getattr(target, "batches", None), getattr(target, "cursor", None)
    if batches is None or not hasattr(cursor, "batches_done"):  # e.g. the sessions regime: no stream cursor
        return
    done = int(cursor.batches_done)
    planned = sum(len(b.indices) for b in batches[:done])
    if done > len(batches) or planned != cursor.samples_seen:
        raise UserError(f"checkpoint {path} does not match the stream planned from "
                        f"{path.parent.parent / 'config.yaml'}: it saw {cursor.samples_seen} samples in {done} "
                        f"batches, the plan's first {min(done, len(batches))} batches hold {planned} "
                        "(was the seed, scenario, dataset or online.stream_batch changed?)")


class ProcessRecord:
    """What THIS process did, for ``results.json['process']``: the stream cursor it started from
    and the optimizer updates it made (counted by a hook on the optimizer, not derived from the
    cursor). A resumed run proves it resumed: ``start_samples`` is the checkpoint's cursor and
    ``start_updates + updates`` equals an uninterrupted run's ``updates``."""

    def __init__(self, cursor: Any, optimizer: torch.optim.Optimizer, resumed: bool) -> None:
        self.resumed = resumed
        self.start_samples = int(cursor.samples_seen)
        self.start_batches = int(cursor.batches_done)
        self.start_updates = int(cursor.updates)
        self.updates = 0
        optimizer.register_step_post_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.updates += 1

    def announce(self, run_dir: Path) -> None:
        """One stderr line when resuming, so a log shows where the process picked up."""
        if self.resumed and world().is_main:
            print(f"resuming {run_dir} at stream sample {self.start_samples} "
                  f"(batch {self.start_batches}, {self.start_updates} updates done)", file=sys.stderr, flush=True)

    def to_dict(self) -> dict[str, Any]:
        return {"resumed": self.resumed, "start_samples": self.start_samples, "start_batches": self.start_batches,
                "start_updates": self.start_updates, "updates": self.updates}
