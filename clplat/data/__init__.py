"""Datasets by name: each file of this package registers its builder and config model with
``@DATASETS.register(name, config=Model)`` (found on first lookup; no list of names is kept).
Nothing is downloaded at import or in tests; local loaders read files the user put in place."""

from __future__ import annotations

from collections.abc import Callable

from clplat.data.base import ClassificationData, DataConfig, TensorSplit
from clplat.registry import Registry

DATASETS: Registry[Callable[..., ClassificationData]] = Registry("dataset", "clplat.data", default_config=DataConfig)


def data_config(**fields) -> DataConfig:
    """The ``data:`` section for ``fields`` (validated by the chosen dataset's own model)."""
    return DataConfig.model_validate(fields)


def build_dataset(cfg: DataConfig, seed: int) -> ClassificationData:
    """Build the dataset named by ``cfg.dataset``; every builder takes ``(cfg, seed)``."""
    builder = DATASETS.get(cfg.dataset)
    if type(cfg) is not DATASETS.config_model(cfg.dataset):  # e.g. a bare ``DataConfig()`` default
        cfg = DataConfig.model_validate(cfg.model_dump())
    return builder(cfg, seed)


__all__ = ["DATASETS", "ClassificationData", "DataConfig", "TensorSplit", "build_dataset", "data_config"]
