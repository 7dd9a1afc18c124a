"""The stream driver: turns a :class:`StreamPlan` into the batches one ``Trainer.fit`` consumes,
and keeps the stream cursor (what a checkpoint must restore to continue mid-stream)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils.data import Sampler


@dataclass(frozen=True)
class StreamBatch:
    task_id: int
    indices: list[int]
    last_of_task: bool


def plan_batches(tasks: list[list[int]], stream_batch: int) -> list[StreamBatch]:
    """Batches never cross a task boundary (each task is its own loader in the official code);
    a task's last batch may be short."""
    out: list[StreamBatch] = []
    for t, idx in enumerate(tasks):
        for s in range(0, len(idx), stream_batch):
            chunk = list(idx[s : s + stream_batch])
            out.append(StreamBatch(t, chunk, s + stream_batch >= len(idx)))
        if not idx:  # an empty task still has an end (and an end-of-task evaluation)
            out.append(StreamBatch(t, [], True))
    return out


class PlanBatchSampler(Sampler[list[int]]):
    """Yields the plan's batches from ``start`` on: the resume point."""

    def __init__(self, batches: list[StreamBatch], start: int = 0) -> None:
        self.batches = batches
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches[self.start :]:
            yield b.indices

    def __len__(self) -> int:
        return len(self.batches) - self.start


@dataclass
class StreamCursor:
    """Where the stream is; all plain ints so it checkpoints with ``weights_only=True``."""

    batches_done: int = 0
    samples_seen: int = 0
    next_eval: int = 0  # index into plan.eval_points
    updates: int = 0
    finished: bool = False
    extra: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"batches_done": self.batches_done, "samples_seen": self.samples_seen,
                "next_eval": self.next_eval, "updates": self.updates, "finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        for k in ("batches_done", "samples_seen", "next_eval", "updates", "finished"):
            setattr(self, k, state[k])
