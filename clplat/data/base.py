"""The dataset contract the training wing relies on.

A :class:`ClassificationData` holds a train and a test split, each indexable as ``(x, y)`` with
``x`` a float tensor ``(C, H, W)`` ready for the backbone and ``y`` an int class id. The targets
are available as arrays without loading images, because scenario generators only need labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from clplat.registry import Registry, TaggedConfig


class DataConfig(TaggedConfig):
    """The ``data:`` section. ``dataset`` selects the registered dataset, whose own config model
    (a subclass adding its fields) validates the rest; a key that dataset lacks is an error."""

    tag_field = "dataset"

    dataset: str = "digits"
    root: str | None = None
    image_size: int | None = Field(None, gt=0, description="resize to this square size")
    channels: Literal[1, 3] | None = None
    download: bool = False
    normalize: bool = True

    @classmethod
    def registry(cls) -> Registry[Any]:
        from clplat.data import DATASETS

        return DATASETS


class TensorSplit(Dataset):
    """An in-memory split. ``__getitems__`` lets a DataLoader fetch a whole batch in one index
    operation, which matters when per-sample Python overhead would dominate (small models)."""

    def __init__(self, x: Tensor, y: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError("x and y lengths differ")
        self.x = x.contiguous()
        self.y = y.long().contiguous()
        self.mean, self.std = mean, std  # the normalisation applied to x, if any

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return self.x[index], self.y[index]

    @property
    def targets(self) -> np.ndarray:
        return self.y.numpy()


@dataclass
class ClassificationData:
    """Train and test splits of one labelled image dataset."""

    name: str
    train: Dataset
    test: Dataset
    train_targets: np.ndarray
    test_targets: np.ndarray
    class_names: list[str]
    input_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def collate_batch(batch: object) -> tuple[Tensor, Tensor]:
    """Collate that accepts both a list of samples and an already batched ``(x, y)`` tuple."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor) and batch[0].dim() >= 2 \
            and isinstance(batch[1], Tensor) and batch[1].dim() == 1:
        return batch
    xs, ys = zip(*batch)  # type: ignore[misc]
    return torch.stack(list(xs)), torch.as_tensor([int(y) for y in ys], dtype=torch.long)


def resize_images(x: Tensor, image_size: int | None, channels: int | None) -> Tensor:
    """Bilinear resize of a ``(N, C, H, W)`` float batch and channel replication 1 -> 3."""
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False, antialias=True)
    if channels is not None and channels != x.shape[1]:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot map {x.shape[1]} channels to {channels}")
    return x.contiguous()


def standardize(train_x: Tensor, test_x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel mean/std from the training split, applied to both splits; also returns the
    ``(1, C, 1, 1)`` mean and std (AutoAugment needs to undo them)."""
    dims = (0, 2, 3)
    mean = train_x.mean(dim=dims, keepdim=True)
    std = train_x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (train_x - mean) / std, (test_x - mean) / std, mean, std
