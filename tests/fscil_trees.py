"""Tiny on-disk copies of the FSCIL benchmark layouts (CUB-200-2011, miniImageNet) for tests.

Images are 6x6 JPEG/PNG files of random noise; every file's pixels differ, so a test can tell
samples apart after loading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_image(path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_cub(root: Path, n_classes: int = 4, train_per: int = 3, test_per: int = 2) -> dict:
    """``root/CUB_200_2011`` in the official layout. Image ids are grouped by class, train and test
    interleaved; ``images.txt`` lists them out of id order (the loader must sort by id).
    Returns the expected train/test (path relative to root, label) lists in image-id order."""
    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    classes = [f"{c + 1:03d}.Bird_{chr(65 + c)}" for c in range(n_classes)]
    rows, expected = [], {"train": [], "test": []}
    image_id = 0
    for c, name in enumerate(classes):
        for k in range(train_per + test_per):
            image_id += 1
            rel = f"{name}/Bird_{chr(65 + c)}_{k:04d}_{1000 + image_id}.jpg"
            save_image(folder / "images" / rel, rng)
            is_train = not (k % 2 == 1 and k < 2 * test_per)  # test images interleave (train_per >= test_per)
            rows.append((image_id, rel, c + 1, int(is_train)))
            expected["train" if is_train else "test"].append((f"CUB_200_2011/images/{rel}", c))
    order = rng.permutation(len(rows))
    (folder / "images.txt").write_text("".join(f"{rows[i][0]} {rows[i][1]}\n" for i in order))
    (folder / "image_class_labels.txt").write_text("".join(f"{r[0]} {r[2]}\n" for r in rows))
    (folder / "train_test_split.txt").write_text("".join(f"{r[0]} {r[3]}\n" for r in rows))
    (folder / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(classes)))
    return {"classes": classes, **expected}


def mini_files(wnids: list[str], per_class: int, offset: int) -> list[tuple[str, str]]:
    """(file name, wnid) in the miniImageNet naming: ``<wnid><8-digit number>.jpg``."""
    return [(f"{w}{offset + k:08d}.jpg", w) for w in wnids for k in range(per_class)]


MINI_WNIDS = ["n01532829", "n01558993", "n01704323", "n01749939", "n02074367"]


def make_mini_tree(root: Path, wnids: list[str] = MINI_WNIDS, train_per: int = 4, test_per: int = 2) -> None:
    """``root/train/<wnid>/*.jpg`` and ``root/test/<wnid>/*.jpg``."""
    rng = np.random.default_rng(1)
    for split, per, off in (("train", train_per, 0), ("test", test_per, 500)):
        for name, w in mini_files(wnids, per, off):
            save_image(root / split / w / name, rng)


def make_mini_csv(root: Path, wnids: list[str] = MINI_WNIDS, train_per: int = 4, test_per: int = 2,
                  header: bool = True) -> None:
    """The CEC layout: ``root/images/*.jpg``, ``root/split/{train,test}.csv`` (same pixels as
    :func:`make_mini_tree` with the same arguments, rows sorted by wnid then file)."""
    rng = np.random.default_rng(1)
    (root / "split").mkdir(parents=True, exist_ok=True)
    for split, per, off in (("train", train_per, 0), ("test", test_per, 500)):
        rows = mini_files(wnids, per, off)
        for name, _ in rows:
            save_image(root / "images" / name, rng)
        text = ("filename,label\n" if header else "") + "".join(f"{n},{w}\n" for n, w in rows)
        (root / "split" / f"{split}.csv").write_text(text)
