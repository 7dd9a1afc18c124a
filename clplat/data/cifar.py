"""CIFAR-10 / CIFAR-100 from the torchvision on-disk layout.

The files are read with a restricted unpickler (plain containers and numpy arrays only), so a
tampered file cannot run code. Images stay ``uint8`` in memory (150 MB for CIFAR-100 at 32 px)
and are converted, resized and normalised per batch in ``__getitems__``, because a float copy
resized to 224 px would not fit in memory. The training split keeps torchvision's order
(``data_batch_1..5``), which the Si-Blurry stream depends on index for index.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clplat.data import DATASETS
from clplat.data.base import ClassificationData, resize_images
from clplat.errors import UserError


@dataclass(frozen=True)
class _Layout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str


CIFAR10 = _Layout("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                  ("test_batch",), "batches.meta", "labels", "label_names", 10,
                  "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR100 = _Layout("cifar100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
                   "fine_label_names", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _SafeUnpickler(pickle.Unpickler):
    """Refuses every global except the numpy array constructors a CIFAR file needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


class UInt8ImageSplit(Dataset):
    """Images as a ``uint8 (N, C, H, W)`` tensor; float conversion happens per batch.

    ``__getitems__`` returns an already batched ``(x, y)`` (like :class:`TensorSplit`), with ``x``
    float32 in ``[0, 1]``, resized to ``image_size``, mapped to ``channels`` and standardised with
    ``mean``/``std`` (per channel of the stored images) when given.
    """

    def __init__(self, images: Tensor, targets: np.ndarray, image_size: int | None = None,
                 channels: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 (N, C, H, W) tensor")
        if images.shape[0] != len(targets):
            raise ValueError("images and targets lengths differ")
        self.images = images
        self.y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.image_size = image_size
        self.channels = channels
        c = images.shape[1]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([int(i)])
        return x[0], y[0]

    def __getitems__(self, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        x = self.images[index].float().div_(255.0)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std  # per-channel affine: commutes with the bilinear resize
        return resize_images(x, self.image_size, self.channels), self.y[index]

    @property
    def targets(self) -> np.ndarray:
        return self.y.numpy()


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (over all pixels) of a uint8 image tensor, in [0, 1] units.

    Exact and fast: a 256-bin histogram per channel instead of a float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.from_numpy(np.bincount(images[:, c].numpy().ravel(), minlength=256)).double()
        n = max(float(hist.sum()), 1.0)
        m = float((hist * values).sum()) / n
        var = float((hist * (values - m) ** 2).sum()) / n
        mean.append(m)
        std.append(max(var, 1e-12) ** 0.5)
    return mean, std


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OSError) as err:
        raise UserError(f"corrupt CIFAR file {path}: {err or type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise UserError(f"corrupt CIFAR file {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _load_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    obj = _load_pickle(path)
    data, labels = obj.get("data"), obj.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserError(f"corrupt CIFAR file {path}: missing 'data' or '{label_key}'")
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.shape != (len(labels), 3 * 32 * 32):
        raise UserError(f"corrupt CIFAR file {path}: 'data' has shape {data.shape} ({data.dtype}), "
                        f"expected ({len(labels)}, 3072) uint8")
    return data.reshape(-1, 3, 32, 32), labels


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _missing(lay: _Layout, root: Path) -> list[str]:
    folder = root / lay.folder
    names = (*lay.train_files, *lay.test_files, lay.meta_file)
    return [n for n in names if not (folder / n).is_file()]


def _download(lay: _Layout, root: Path) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if lay.name == "cifar10" else datasets.CIFAR100
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as err:  # network, disk, checksum: all the user's to fix
        raise UserError(f"{lay.name}: download into {root} failed ({type(err).__name__}: {err})") from None


def load_cifar(lay: _Layout, cfg, seed: int) -> ClassificationData:
    """Read the pickled batches under ``cfg.root/<folder>/``; ``seed`` is unused (fixed split)."""
    root = Path(cfg.root if cfg.root is not None else "data").expanduser()
    if _missing(lay, root) and cfg.download:
        _download(lay, root)
    missing = _missing(lay, root)
    if missing:
        raise UserError(
            f"{lay.name} not found: put the extracted {lay.url.rsplit('/', 1)[-1]} at "
            f"{(root / lay.folder).resolve()}/ (missing: {', '.join(missing)}; set data.root to the folder "
            f"that contains {lay.folder}/), or set data.download: true to fetch it with torchvision")
    folder = root / lay.folder
    parts = {split: [_load_batch(folder / n, lay.label_key) for n in files]
             for split, files in (("train", lay.train_files), ("test", lay.test_files))}
    meta_path = folder / lay.meta_file
    names = _load_pickle(meta_path).get(lay.names_key)
    if not isinstance(names, list) or len(names) != lay.num_classes:
        raise UserError(f"corrupt CIFAR file {meta_path}: '{lay.names_key}' must list "
                        f"{lay.num_classes} names")
    x_tr, x_te = (_join([p[0] for p in parts[s]]) for s in ("train", "test"))
    y_tr, y_te = (_join([p[1] for p in parts[s]]) for s in ("train", "test"))
    for split, y in (("train", y_tr), ("test", y_te)):
        if y.size and (y.min() < 0 or y.max() >= lay.num_classes):
            raise UserError(f"corrupt CIFAR data in {folder}: {split} labels outside [0, {lay.num_classes})")
    images_tr, images_te = torch.from_numpy(x_tr), torch.from_numpy(x_te)
    mean, std = channel_stats(images_tr) if cfg.normalize else (None, None)
    size = cfg.image_size or 32
    channels = cfg.channels or 3

    def split(images: Tensor, y: np.ndarray) -> UInt8ImageSplit:
        return UInt8ImageSplit(images, y, cfg.image_size, cfg.channels, mean, std)

    return ClassificationData(name=lay.name, train=split(images_tr, y_tr), test=split(images_te, y_te),
                              train_targets=y_tr, test_targets=y_te, class_names=[str(n) for n in names],
                              input_shape=(channels, size, size))


@DATASETS.register("cifar10")
def build_cifar10(cfg, seed: int) -> ClassificationData:
    return load_cifar(CIFAR10, cfg, seed)


@DATASETS.register("cifar100")
def build_cifar100(cfg, seed: int) -> ClassificationData:
    return load_cifar(CIFAR100, cfg, seed)
