"""Replay memory shared by ER-type strategies: reservoir sampling over the stream.

Stores *original* class ids (never exposure indices), so labels are mapped to exposure order
exactly once, when a replay batch is drawn (the MVP release maps them twice; see docs).
All state lives in registered buffers so a checkpoint restores it exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clplat.engine.distributed import current_update


class ReservoirMemory(nn.Module):
    """Fixed-capacity reservoir (Vitter's algorithm R) over every stream sample seen."""

    def __init__(self, capacity: int, sample_shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.capacity = int(capacity)
        self.register_buffer("x", torch.zeros((self.capacity, *sample_shape), dtype=dtype))
        self.register_buffer("y", torch.full((self.capacity,), -1, dtype=torch.long))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(min(int(self.n_seen), self.capacity))

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> None:
        """Offer each sample of a batch to the reservoir, in order."""
        if self.capacity == 0:
            self.n_seen += x.shape[0]
            return
        for i in range(x.shape[0]):
            n = int(self.n_seen)
            if n < self.capacity:
                slot = n
            else:
                slot = int(torch.randint(0, n + 1, (1,), generator=generator))
            if slot < self.capacity:
                self.x[slot] = x[i].to(self.x.dtype)
                self.y[slot] = y[i]
            self.n_seen += 1

    def sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Up to ``n`` distinct stored samples, drawn uniformly; labels are original class ids. In a
        DDP update split across processes, this process's share of the one global draw."""
        size = len(self)
        n = min(n, size)
        idx = torch.randperm(size, generator=generator)[:n]
        update = current_update()
        if update is not None:
            idx = idx[update.take(n)]
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]

    def classes(self) -> Tensor:
        return self.y[: len(self)].unique()
