"""miniImageNet (100 ImageNet classes, 600 images each) for FSCIL, in either common layout:

- a tree: ``<root>/train/<wnid>/*.jpg`` and ``<root>/test/<wnid>/*.jpg``;
- the CEC/TOPIC files: ``<root>/images/*.jpg`` plus ``<root>/split/train.csv`` and
  ``<root>/split/test.csv`` (``filename,label`` rows, label = wnid; the FSCIL re-split,
  500 train / 100 test images per class).

``<root>`` is ``data.root`` or its ``miniimagenet`` / ``MINI-ImageNet`` / ``mini_imagenet``
sub-folder. Labels are the sorted training wnids (0..99), as CoACT and CEC use them. Splits keep
file order (sorted files per class for the tree, row order for the CSV files); images are decoded
lazily and resized to ``image_size`` (224).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clplat.data import DATASETS
from clplat.data.base import ClassificationData
from clplat.data.imagefolder import DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD, ImageFileSplit, scan_split
from clplat.errors import UserError

SUBFOLDERS = ("miniimagenet", "MINI-ImageNet", "mini_imagenet")


class CsvImageSplit(ImageFileSplit):
    """Images that sit in one flat folder: ``match_keys`` gives each one its ``wnid/file`` name,
    the form FSCIL index files use (``.../train/<wnid>/<file>.jpg``)."""

    def __init__(self, files: Sequence[Path], targets: np.ndarray, wnids: Sequence[str], **kwargs) -> None:
        super().__init__(files, targets, **kwargs)
        self.match_keys = [f"{w}/{Path(f).name}" for f, w in zip(files, wnids)]


def find_layout(root: Path) -> tuple[str, Path]:
    """``("csv" | "tree", folder)`` for the first candidate folder that holds either layout."""
    for folder in (root, *(root / s for s in SUBFOLDERS)):
        if (folder / "split" / "train.csv").is_file() and (folder / "images").is_dir():
            return "csv", folder
        if (folder / "train").is_dir():
            return "tree", folder
    raise UserError(f"mini_imagenet not found under {root}: expected train/<wnid>/*.jpg and test/<wnid>/*.jpg, "
                    "or images/ with split/train.csv and split/test.csv (set data.root)")


def read_split_csv(path: Path, images: Path) -> tuple[list[Path], list[str]]:
    """``filename,label`` rows (an optional header) -> image files and wnids, in row order."""
    if not path.is_file():
        raise UserError(f"mini_imagenet: missing {path}")
    files, wnids = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for no, row in enumerate(csv.reader(f), start=1):
            if not row or (no == 1 and row[:2] == ["filename", "label"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise UserError(f"mini_imagenet: {path} line {no}: expected 'filename,label', got {','.join(row)!r}")
            file = images / row[0].strip()
            if not file.is_file():
                raise UserError(f"mini_imagenet: {path} line {no}: image {file} not found")
            files.append(file)
            wnids.append(row[1].strip())
    if not files:
        raise UserError(f"mini_imagenet: {path} lists no image")
    return files, wnids


def _labels(wnids: list[str], classes: list[str], path: Path) -> np.ndarray:
    index = {w: i for i, w in enumerate(classes)}
    unknown = sorted(set(wnids) - set(index))
    if unknown:
        raise UserError(f"mini_imagenet: {path} has class {unknown[0]} that the training split lacks")
    return np.asarray([index[w] for w in wnids], dtype=np.int64)


@DATASETS.register("mini_imagenet")
def build_mini_imagenet(cfg, seed: int) -> ClassificationData:
    """The split on disk (``seed`` is unused); ``paths`` are relative to ``data.root``."""
    if cfg.root is None:
        raise UserError("data.root must point at the miniImageNet folder (train/ and test/, or images/ and split/)")
    root = Path(cfg.root).expanduser()
    layout, folder = find_layout(root)
    size = cfg.image_size or DEFAULT_SIZE
    channels = cfg.channels or 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize else (None, None)
    common = dict(image_size=size, channels=channels, mean=mean, std=std, root=root)
    if layout == "tree":
        names, tr_files, y_tr = scan_split(folder / "train")
        _, te_files, y_te = scan_split(folder / "test", names)
        train = ImageFileSplit(tr_files, y_tr, **common)
        test = ImageFileSplit(te_files, y_te, **common)
    else:
        tr_csv, te_csv = folder / "split" / "train.csv", folder / "split" / "test.csv"
        tr_files, tr_w = read_split_csv(tr_csv, folder / "images")
        te_files, te_w = read_split_csv(te_csv, folder / "images")
        names = sorted(set(tr_w))
        y_tr, y_te = _labels(tr_w, names, tr_csv), _labels(te_w, names, te_csv)
        train = CsvImageSplit(tr_files, y_tr, tr_w, **common)
        test = CsvImageSplit(te_files, y_te, te_w, **common)
    return ClassificationData(name="mini_imagenet", train=train, test=test, train_targets=y_tr,
                              test_targets=y_te, class_names=names, input_shape=(channels, size, size))
