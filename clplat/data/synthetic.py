"""Class-conditional synthetic images of any size and class count, for tests and smoke runs.

Each class has a fixed random template (smooth blobs); samples are the template plus noise and a
small random shift, so classes are learnable but not trivially separable.
"""

from __future__ import annotations

import torch
from pydantic import Field

from clplat.data import DATASETS
from clplat.data.base import ClassificationData, DataConfig, TensorSplit


def _templates(n_classes: int, channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n_classes, channels, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _sample(templates: torch.Tensor, per_class: int, noise: float, g: torch.Generator):
    n_classes = templates.shape[0]
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = templates[y] + noise * torch.randn((len(y), *templates.shape[1:]), generator=g)
    shifts = torch.randint(-1, 2, (len(y), 2), generator=g)
    for i in range(len(y)):
        x[i] = torch.roll(x[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    perm = torch.randperm(len(y), generator=g)
    return x[perm].contiguous(), y[perm].contiguous()


class SyntheticConfig(DataConfig):
    num_classes: int = Field(10, gt=1)
    train_per_class: int = Field(60, gt=0)
    test_per_class: int = Field(20, gt=0)


@DATASETS.register("synthetic", config=SyntheticConfig)
def build_synthetic(cfg, seed: int) -> ClassificationData:
    size = cfg.image_size or 16
    channels = cfg.channels or 3
    g = torch.Generator().manual_seed(10_000 + cfg.num_classes)  # the task, not the run, fixes the data
    templates = _templates(cfg.num_classes, channels, size, g)
    x_tr, y_tr = _sample(templates, cfg.train_per_class, 0.8, g)
    x_te, y_te = _sample(templates, cfg.test_per_class, 0.8, g)
    return ClassificationData(
        name="synthetic",
        train=TensorSplit(x_tr, y_tr),
        test=TensorSplit(x_te, y_te),
        train_targets=y_tr.numpy(),
        test_targets=y_te.numpy(),
        class_names=[f"class_{i}" for i in range(cfg.num_classes)],
        input_shape=(channels, size, size),
    )
