"""Image folders: ``root/train/<class>/*`` and ``root/test/<class>/*`` (ImageNet-R, Tiny-ImageNet,
CUB once arranged in that layout).

Only file names are listed at build time, so targets (all a scenario generator needs) are known
without opening a single image; images are decoded with PIL per batch. Classes are the sorted
``train/`` sub-folder names and files are sorted within a class, so the dataset order (which the
Si-Blurry stream depends on) is the same on every machine. Normalisation uses the ImageNet
mean/std, since computing a dataset's own statistics would mean decoding every image up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clplat.data import DATASETS
from clplat.data.base import ClassificationData
from clplat.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224  # images differ in size, so a batch needs one target size


class ImageFileSplit(Dataset):
    """A list of image files with integer labels, decoded lazily.

    ``__getitems__`` returns a batched ``(x, y)``: ``x`` float32 ``(B, channels, size, size)`` in
    ``[0, 1]`` (bilinear resize with PIL), then standardised with ``mean``/``std`` when given.
    """

    def __init__(self, files: Sequence[Path], targets: np.ndarray, image_size: int, channels: int,
                 mean: Sequence[float] | None, std: Sequence[float] | None, root: Path | None = None) -> None:
        if len(files) != len(targets):
            raise ValueError("files and targets lengths differ")
        self.files = [Path(f) for f in files]
        self.root = root  # data.root: ``paths`` are relative to it (FSCIL index files, describe --json)
        self.y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.image_size = image_size
        self.channels = channels
        self.mean, self.std = (None, None) if mean is None or std is None else _stats(mean, std, channels)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> Tensor:
        """Decode one image to a float ``(channels, size, size)`` tensor (not normalised)."""
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UserError(f"cannot read image {path}: {err}") from None
        x = torch.from_numpy(arr.copy()).float().div_(255.0)
        return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([int(i)])
        return x[0], y[0]

    def __getitems__(self, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
        x = torch.stack([self.load(int(i)) for i in idx])
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x, self.y[torch.as_tensor(idx, dtype=torch.long)]

    @property
    def targets(self) -> np.ndarray:
        return self.y.numpy()

    @property
    def paths(self) -> list[str]:
        """Each sample's file, relative to ``root`` when given (POSIX separators)."""
        if self.root is None:
            return [f.as_posix() for f in self.files]
        return [f.relative_to(self.root).as_posix() for f in self.files]


def _stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[Tensor, Tensor]:
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if channels == 1:  # grey = mean of RGB, to first order
        m, s = m.mean().view(1), s.mean().view(1)
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def scan_split(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """List ``folder/<class>/<image>`` files; returns (class names, files, targets).

    With ``classes`` given (the train classes), a sub-folder outside that list is an error.
    """
    if not folder.is_dir():
        raise UserError(f"image folder {folder} not found: expected {folder.parent}/train/<class>/* "
                        f"and {folder.parent}/test/<class>/*")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"image folder {folder} has no class sub-folders (expected {folder}/<class>/*)")
    names = found if classes is None else classes
    index = {n: i for i, n in enumerate(names)}
    files: list[Path] = []
    targets: list[int] = []
    for name in found:
        if name not in index:
            raise UserError(f"class folder {folder / name} has no counterpart in the train split")
        imgs = sorted(p for p in (folder / name).iterdir() if _is_image(p))
        files.extend(imgs)
        targets.extend([index[name]] * len(imgs))
    if not files:
        raise UserError(f"image folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return names, files, np.asarray(targets, dtype=np.int64)


@DATASETS.register("imagefolder")
def build_imagefolder(cfg, seed: int) -> ClassificationData:
    """``cfg.root`` holds ``train/`` and ``test/``; ``seed`` is unused (the split is on disk)."""
    if cfg.root is None:
        raise UserError("data.root must point at a folder with train/<class>/* and test/<class>/*")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root {root} does not exist")
    names, tr_files, y_tr = scan_split(root / "train")
    _, te_files, y_te = scan_split(root / "test", names)
    size = cfg.image_size or DEFAULT_SIZE
    channels = cfg.channels or 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize else (None, None)
    return ClassificationData(
        name=root.name or "imagefolder",
        train=ImageFileSplit(tr_files, y_tr, size, channels, mean, std, root=root),
        test=ImageFileSplit(te_files, y_te, size, channels, mean, std, root=root),
        train_targets=y_tr,
        test_targets=y_te,
        class_names=names,
        input_shape=(channels, size, size),
    )
