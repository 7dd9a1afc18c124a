"""Label re-indexing in order of first exposure: head unit j is the j-th class seen."""

from __future__ import annotations

import torch
from torch import Tensor


class ExposureTracker:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.exposed: list[int] = []
        self.label_index = torch.full((num_classes,), -1, dtype=torch.long)

    @property
    def n_exposed(self) -> int:
        return len(self.exposed)

    def expose(self, y_orig: Tensor) -> list[int]:
        """Expose the classes of a batch in order of appearance; returns the newly exposed ones."""
        if bool((self.label_index[y_orig] >= 0).all()):  # the usual case: one vectorised check
            return []
        new = []
        for c in y_orig.tolist():
            if self.label_index[c] < 0:
                self.label_index[c] = len(self.exposed)
                self.exposed.append(int(c))
                new.append(int(c))
        return new

    def state_dict(self) -> dict:
        return {"exposed": list(self.exposed)}

    def load_state_dict(self, state: dict) -> None:
        self.exposed = []
        self.label_index.fill_(-1)
        self.expose(torch.as_tensor(state["exposed"], dtype=torch.long))
