"""Datasets by name. Nothing is downloaded at import or in tests; local loaders read files the
user put in place (or that tests create)."""

from __future__ import annotations

from collections.abc import Callable

from clplat.data.base import ClassificationData, TensorSplit
from clplat.registry import Registry

DATASETS: Registry[Callable[..., ClassificationData]] = Registry(
    "dataset",
    lazy={
        "digits": "clplat.data.digits",
        "synthetic": "clplat.data.synthetic",
        "cifar10": "clplat.data.cifar",
        "cifar100": "clplat.data.cifar",
        "imagefolder": "clplat.data.imagefolder",
        "glyphs": "clplat.data.glyphs",
    },
)


def build_dataset(cfg, seed: int) -> ClassificationData:  # cfg: clplat.config.DataConfig
    """Build the dataset named by ``cfg.dataset``; every builder takes ``(cfg, seed)``."""
    return DATASETS.get(cfg.dataset)(cfg, seed)


__all__ = ["DATASETS", "ClassificationData", "TensorSplit", "build_dataset"]
