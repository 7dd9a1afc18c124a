"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): the built-in real dataset.

Split with a fixed seeded stratified split (seed 0, independent of the experiment seed, so every
run sees the same test set): 1,437 train / 360 test at the default 20 %.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from clplat.data import DATASETS
from clplat.data.base import ClassificationData, DataConfig, TensorSplit, resize_images, standardize

SPLIT_SEED = 0


class DigitsConfig(DataConfig):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="stratified test share")


@DATASETS.register("digits", config=DigitsConfig)
def build_digits(cfg, seed: int) -> ClassificationData:
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    targets = bunch.target.astype(np.int64)
    idx = np.arange(len(targets))
    tr, te = train_test_split(idx, test_size=cfg.test_fraction, stratify=targets, random_state=SPLIT_SEED)
    tr.sort()
    te.sort()
    x = torch.from_numpy(images).unsqueeze(1)
    x = resize_images(x, cfg.image_size, cfg.channels)
    x_tr, x_te = x[tr], x[te]
    mean = std = None
    if cfg.normalize:
        x_tr, x_te, mean, std = standardize(x_tr, x_te)
    y_tr, y_te = torch.from_numpy(targets[tr]), torch.from_numpy(targets[te])
    return ClassificationData(
        name="digits",
        train=TensorSplit(x_tr, y_tr, mean, std),
        test=TensorSplit(x_te, y_te, mean, std),
        train_targets=targets[tr],
        test_targets=targets[te],
        class_names=[str(i) for i in range(10)],
        input_shape=tuple(x_tr.shape[1:]),
    )
