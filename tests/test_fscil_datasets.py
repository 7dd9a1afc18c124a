"""CUB-200-2011 and miniImageNet loaders on tiny generated trees (nothing downloads)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from clplat.data import build_dataset, data_config
from clplat.errors import UserError
from tests.fscil_trees import MINI_WNIDS, make_cub, make_mini_csv, make_mini_tree


def load(name: str, root, **kw):
    return build_dataset(data_config(dataset=name, root=str(root), **kw), seed=0)


# --- CUB-200-2011 --------------------------------------------------------------------------------

def test_cub_split_labels_order_and_paths(tmp_path):
    exp = make_cub(tmp_path)
    data = load("cub200", tmp_path, image_size=8, normalize=False)
    assert data.class_names == exp["classes"] and data.num_classes == 4
    assert data.train.paths == [p for p, _ in exp["train"]]  # image-id order, relative to data.root
    assert data.train_targets.tolist() == [c for _, c in exp["train"]]
    assert data.test.paths == [p for p, _ in exp["test"]]
    assert data.test_targets.tolist() == [c for _, c in exp["test"]]
    assert len(data.train) == 12 and len(data.test) == 8
    x, y = data.train.__getitems__([0, 5])
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [exp["train"][0][1], exp["train"][5][1]]
    assert data.input_shape == (3, 8, 8)


def test_cub_root_may_be_the_cub_folder_itself(tmp_path):
    exp = make_cub(tmp_path)
    data = load("cub200", tmp_path / "CUB_200_2011")
    assert data.train.paths == [p.removeprefix("CUB_200_2011/") for p, _ in exp["train"]]
    assert data.input_shape == (3, 224, 224)


def test_cub_pixels_are_the_files(tmp_path):
    from PIL import Image

    exp = make_cub(tmp_path)
    data = load("cub200", tmp_path, image_size=6, normalize=False)
    with Image.open(tmp_path / exp["train"][3][0]) as img:
        ref = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(data.train[3][0], ref)


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"])
def test_cub_missing_list_is_named(tmp_path, name):
    make_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / name).unlink()
    with pytest.raises(UserError, match=name):
        load("cub200", tmp_path)


def test_cub_malformed_line_names_file_and_line(tmp_path):
    make_cub(tmp_path)
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[2] = "three 1"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"image_class_labels.txt line 3"):
        load("cub200", tmp_path)


def test_cub_missing_image_is_named_at_build_time(tmp_path):
    exp = make_cub(tmp_path)
    (tmp_path / exp["test"][1][0]).unlink()
    with pytest.raises(UserError, match="1 image.*missing"):
        load("cub200", tmp_path)


def test_cub_not_found_says_where(tmp_path):
    with pytest.raises(UserError, match="CUB_200_2011"):
        load("cub200", tmp_path / "nowhere")


# --- miniImageNet --------------------------------------------------------------------------------

def test_mini_tree_labels_are_sorted_wnids(tmp_path):
    make_mini_tree(tmp_path, wnids=MINI_WNIDS[::-1])
    data = load("mini_imagenet", tmp_path, image_size=6, normalize=False)
    assert data.class_names == sorted(MINI_WNIDS)
    assert data.train_targets.tolist() == np.repeat(np.arange(5), 4).tolist()
    assert data.test_targets.tolist() == np.repeat(np.arange(5), 2).tolist()
    assert data.train.paths[5] == f"train/{MINI_WNIDS[1]}/{MINI_WNIDS[1]}00000001.jpg"


@pytest.mark.parametrize("sub", ["", "miniimagenet", "MINI-ImageNet"])
def test_mini_csv_equals_tree(tmp_path, sub):
    make_mini_tree(tmp_path / "tree")
    make_mini_csv(tmp_path / "csv" / sub if sub else tmp_path / "csv")
    tree = load("mini_imagenet", tmp_path / "tree", image_size=6, normalize=False)
    flat = load("mini_imagenet", tmp_path / "csv", image_size=6, normalize=False)
    assert flat.class_names == tree.class_names
    np.testing.assert_array_equal(flat.train_targets, tree.train_targets)
    np.testing.assert_array_equal(flat.test_targets, tree.test_targets)
    idx = list(range(len(tree.train)))
    torch.testing.assert_close(flat.train.__getitems__(idx)[0], tree.train.__getitems__(idx)[0])
    prefix = f"{sub}/" if sub else ""
    assert flat.train.paths[0] == f"{prefix}images/{MINI_WNIDS[0]}00000000.jpg"
    assert flat.train.match_keys[0] == f"{MINI_WNIDS[0]}/{MINI_WNIDS[0]}00000000.jpg"


def test_mini_csv_without_header_and_label_order(tmp_path):
    make_mini_csv(tmp_path, header=False)
    csv = tmp_path / "split" / "train.csv"
    csv.write_text("".join(reversed(csv.read_text().splitlines(keepends=True))))
    data = load("mini_imagenet", tmp_path)
    assert data.class_names == sorted(MINI_WNIDS)  # labels do not follow row order
    assert data.train_targets.tolist() == np.repeat(np.arange(5), 4)[::-1].tolist()


def test_mini_csv_errors_name_file_and_line(tmp_path):
    make_mini_csv(tmp_path)
    csv = tmp_path / "split" / "test.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([*rows[:3], "nosuch.jpg,n01532829", *rows[3:]]) + "\n")
    with pytest.raises(UserError, match=r"test.csv line 4: image .*nosuch.jpg not found"):
        load("mini_imagenet", tmp_path)
    csv.write_text("\n".join([*rows[:2], "onlyonefield", *rows[2:]]) + "\n")
    with pytest.raises(UserError, match=r"test.csv line 3: expected 'filename,label'"):
        load("mini_imagenet", tmp_path)


def test_mini_test_class_unknown_to_train(tmp_path):
    make_mini_csv(tmp_path)
    csv = tmp_path / "split" / "train.csv"
    csv.write_text("\n".join(r for r in csv.read_text().splitlines() if MINI_WNIDS[2] not in r) + "\n")
    with pytest.raises(UserError, match=f"test.csv has class {MINI_WNIDS[2]}"):
        load("mini_imagenet", tmp_path)


def test_mini_not_found(tmp_path):
    make_mini_tree(tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "elsewhere" / "train")
    with pytest.raises(UserError, match="mini_imagenet not found"):
        load("mini_imagenet", tmp_path)
