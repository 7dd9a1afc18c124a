"""What a sweep trial reports: intermediate values of the sweep metric read from the run's
epoch/task-end checkpoint while it runs (for pruning), and the final value from ``results.json``.

Why the checkpoint: the run already writes its whole evaluation history there atomically
(``records``), so the runner needs no extra channel and the trial's argv stays the agent's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoints/last.pt"


def _acc(rec: dict[str, Any]) -> float:
    n = sum(rec["total"])
    return sum(rec["correct"]) / n if n else 0.0


def intermediate(metric: str, records: list[dict[str, Any]], sessions: bool) -> list[float]:
    """The metric's value as known after each evaluation so far (empty when it has no running form:
    forgetting-like metrics are only defined at the end). Units follow ``results.json``."""
    key = metric.removeprefix("final/")
    if sessions:
        accs = [100.0 * _acc(r) for r in records]
    elif key == "A_auc":
        accs = [_acc(r) for r in records if r["kind"] == "anytime"]
    else:
        accs = [_acc(r) for r in records if r["kind"] == "task_end"]
    if key in ("A_auc", "A_avg", "a_avg"):
        return [sum(accs[: i + 1]) / (i + 1) for i in range(len(accs))]
    if key in ("A_last", "a_last"):
        return list(accs)
    return []


class Watcher:
    """Follows one trial's run directory."""

    def __init__(self, run_dir: Path, metric: str) -> None:
        self.run_dir, self.metric = run_dir, metric
        self.mtime = 0.0
        self.reported = 0

    def poll(self) -> list[tuple[int, float]]:
        """New (step, value) pairs since the last call; step = 1-based evaluation index."""
        path = self.run_dir / CHECKPOINT
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return []
        if mtime == self.mtime:
            return []
        self.mtime = mtime
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # replaced while reading: the next poll sees the new file
            self.mtime = 0.0
            return []
        values = intermediate(self.metric, state.get("records", []), state.get("regime") == "sessions")
        new = [(i + 1, v) for i, v in enumerate(values) if i >= self.reported]
        self.reported = len(values)
        return new

    def final(self) -> float | None:
        """The metric from ``results.json`` (``final/X`` is ``metrics.X``, the name W&B logs)."""
        try:
            results = json.loads((self.run_dir / "results.json").read_text())
        except (OSError, ValueError):
            return None
        value = results.get("metrics", {}).get(self.metric.removeprefix("final/"))
        return None if value is None else float(value)
