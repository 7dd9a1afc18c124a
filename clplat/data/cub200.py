"""CUB-200-2011 (200 bird species, 5,994 train / 5,794 test) in its official layout.

``data.root`` is the folder that holds ``CUB_200_2011/`` (or that folder itself), with
``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt`` and
``images/<class>/<file>.jpg``. Labels are ``class_id - 1``; each split keeps the ``images.txt``
order (image ids ascending), as the CEC/TOPIC loaders do, so FSCIL index files line up. Only the
text files are read at build time; images are decoded lazily and resized to ``image_size`` (224).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clplat.data import DATASETS
from clplat.data.base import ClassificationData
from clplat.data.imagefolder import DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD, ImageFileSplit
from clplat.errors import UserError

FOLDER = "CUB_200_2011"
LISTS = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def find_cub_folder(root: Path) -> Path:
    """``root`` itself or ``root/CUB_200_2011``, whichever holds ``images.txt``."""
    for folder in (root, root / FOLDER):
        if (folder / "images.txt").is_file():
            return folder
    raise UserError(f"cub200 not found: expected {root / FOLDER}/images.txt (set data.root to the folder "
                    f"that contains {FOLDER}/, from the official CUB_200_2011.tgz)")


def read_id_table(path: Path, n_fields: int = 2) -> dict[int, str]:
    """``<id> <value>`` per line -> {id: value}; a malformed line is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"cub200: missing {path}")
    table: dict[int, str] = {}
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split(maxsplit=n_fields - 1)
        if len(parts) != n_fields or not parts[0].isdigit():
            raise UserError(f"cub200: {path} line {no}: expected '<id> <value>', got {raw.strip()!r}")
        key = int(parts[0])
        if key in table:
            raise UserError(f"cub200: {path} line {no}: id {key} is listed twice")
        table[key] = parts[1].strip()
    return table


def read_cub(folder: Path) -> tuple[list[str], dict[str, tuple[list[Path], np.ndarray]]]:
    """Class names and, per split, (image files, labels) in image-id order."""
    images, labels, split, classes = (read_id_table(folder / name) for name in LISTS)
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise UserError(f"cub200: {folder / 'classes.txt'} must number classes 1..N")
    out: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    for image_id in sorted(images):
        if image_id not in labels or image_id not in split:
            raise UserError(f"cub200: image id {image_id} of images.txt is missing from "
                            f"{'image_class_labels.txt' if image_id not in labels else 'train_test_split.txt'}")
        label, flag = labels[image_id], split[image_id]
        if not label.isdigit() or int(label) not in classes or flag not in ("0", "1"):
            raise UserError(f"cub200: image id {image_id}: bad class id {label!r} or split flag {flag!r}")
        files, ys = out["train" if flag == "1" else "test"]
        files.append(folder / "images" / images[image_id])
        ys.append(int(label) - 1)
    missing = [f for files, _ in out.values() for f in files if not f.is_file()]
    if missing:
        raise UserError(f"cub200: {len(missing)} image(s) listed in {folder / 'images.txt'} are missing, "
                        f"e.g. {missing[0]}")
    names = [classes[i] for i in class_ids]
    return names, {s: (files, np.asarray(ys, dtype=np.int64)) for s, (files, ys) in out.items()}


@DATASETS.register("cub200")
def build_cub200(cfg, seed: int) -> ClassificationData:
    """The official train/test split (``seed`` is unused)."""
    if cfg.root is None:
        raise UserError(f"data.root must point at the folder that contains {FOLDER}/")
    root = Path(cfg.root).expanduser()
    folder = find_cub_folder(root)
    names, splits = read_cub(folder)
    if not len(splits["train"][0]):
        raise UserError(f"cub200: {folder / 'train_test_split.txt'} marks no training image")
    size = cfg.image_size or DEFAULT_SIZE
    channels = cfg.channels or 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize else (None, None)

    def split(name: str) -> ImageFileSplit:
        files, ys = splits[name]
        return ImageFileSplit(files, ys, size, channels, mean, std, root=root)

    return ClassificationData(name="cub200", train=split("train"), test=split("test"),
                              train_targets=splits["train"][1], test_targets=splits["test"][1],
                              class_names=names, input_shape=(channels, size, size))
