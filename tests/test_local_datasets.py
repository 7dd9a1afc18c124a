"""CIFAR and ImageFolder loaders on tiny files written into tmp_path (nothing downloads)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from clplat.config import DataConfig
from clplat.data import build_dataset
from clplat.errors import UserError


def _pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def fake_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The real layout: 5 pickled train batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "data": data, "labels": labels})
        xs.append(data)
        ys.extend(labels)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    _pickle(folder / "test_batch", {"data": test, "labels": list(range(n_test))})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return np.concatenate(xs), np.asarray(ys)


def fake_cifar100(root: Path, n_train: int = 7, n_test: int = 3) -> np.ndarray:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine = [int(v) for v in rng.integers(0, 100, n_train)]
    _pickle(folder / "train", {"data": rng.integers(0, 256, (n_train, 3072), dtype=np.uint8),
                               "fine_labels": fine, "coarse_labels": [0] * n_train})
    _pickle(folder / "test", {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                              "fine_labels": [99, 0, 5], "coarse_labels": [0] * n_test})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"k{i}" for i in range(20)]})
    return np.asarray(fine)


def test_cifar10_shapes_labels_and_order(tmp_path):
    raw, labels = fake_cifar10(tmp_path)
    data = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), normalize=False), seed=0)
    assert data.class_names == [f"c{i}" for i in range(10)] and data.num_classes == 10
    assert data.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(data.train_targets, labels)  # data_batch_1..5 order
    np.testing.assert_array_equal(data.test_targets, np.arange(6))
    x, y = data.train.__getitems__([0, 7, 19])
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32)
    expected = torch.from_numpy(raw[[0, 7, 19]].reshape(3, 3, 32, 32)).float() / 255
    torch.testing.assert_close(x, expected)
    assert y.tolist() == labels[[0, 7, 19]].tolist()
    x0, y0 = data.train[7]
    torch.testing.assert_close(x0, expected[1])
    assert int(y0) == labels[7]
    assert data.train.images.dtype == torch.uint8  # stays compact in memory


def test_cifar_normalize_and_resize(tmp_path):
    fake_cifar10(tmp_path, per_batch=20)
    data = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), image_size=16), seed=0)
    x, _ = data.train.__getitems__(list(range(len(data.train))))
    assert x.shape == (100, 3, 16, 16) and data.input_shape == (3, 16, 16)
    # dataset statistics: the train split is standardised per channel (resize is an average, so
    # the mean is kept exactly and the std shrinks a little from the smoothing)
    mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-3, rtol=0)
    full = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), seed=0)
    xf, _ = full.train.__getitems__(list(range(len(full.train))))
    torch.testing.assert_close(xf.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_cifar100_fine_labels(tmp_path):
    fine = fake_cifar100(tmp_path)
    data = build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), image_size=8, channels=1), seed=0)
    assert data.num_classes == 100 and data.class_names[99] == "f99"
    np.testing.assert_array_equal(data.train_targets, fine)
    assert data.test_targets.tolist() == [99, 0, 5]
    x, y = data.test.__getitems__([0, 2])
    assert x.shape == (2, 1, 8, 8) and y.tolist() == [99, 5]
    assert data.input_shape == (1, 8, 8)


def test_cifar_reads_numpy1_era_pickles(tmp_path):
    # the published files name numpy.core.multiarray (numpy 1.x); make the fake ones do the same
    fake_cifar10(tmp_path)
    for f in (tmp_path / "cifar-10-batches-py").iterdir():
        blob = f.read_bytes()
        assert b"numpy._core.multiarray" in blob or f.name == "batches.meta"
        f.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), seed=0)
    assert len(data.train) == 20


def test_cifar_missing_root_says_where(tmp_path):
    with pytest.raises(UserError) as err:
        build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path / "nowhere")), seed=0)
    msg = str(err.value)
    assert "\n" not in msg
    assert str((tmp_path / "nowhere" / "cifar-100-python").resolve()) in msg
    assert "cifar-100-python.tar.gz" in msg and "data.download: true" in msg


def test_cifar_missing_single_file_is_named(tmp_path):
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing: data_batch_3"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), seed=0)


@pytest.mark.parametrize("payload", [b"not a pickle at all", pickle.dumps({"data": 3, "labels": [1]}),
                                     pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [1, 2]})])
def test_cifar_corrupt_file_is_named(tmp_path, payload):
    fake_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(payload)
    with pytest.raises(UserError, match=f"corrupt CIFAR file {bad}"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), seed=0)


def test_cifar_refuses_code_in_pickles(tmp_path):
    fake_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(UserError, match="builtins.print"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), seed=0)


# --- ImageFolder ---------------------------------------------------------------------------------

def make_folder(root: Path, spec: dict[str, dict[str, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in spec.items():
        for name, n in classes.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(5, 12)), int(rng.integers(5, 12)))  # sizes differ, as in real sets
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img{i}.png")
            (d / "notes.txt").write_text("not an image")


def test_imagefolder_targets_classes_and_batches(tmp_path):
    make_folder(tmp_path, {"train": {"zebra": 2, "ant": 3, "cat": 1}, "test": {"ant": 1, "zebra": 2}})
    data = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=8,
                                    normalize=False), seed=0)
    assert data.class_names == ["ant", "cat", "zebra"]
    assert data.train_targets.tolist() == [0, 0, 0, 1, 2, 2]
    assert data.test_targets.tolist() == [0, 2, 2]
    x, y = data.train.__getitems__([0, 3, 5])
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 1, 2]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert data.input_shape == (3, 8, 8)


def test_imagefolder_targets_known_without_opening_images(tmp_path, monkeypatch):
    make_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    import PIL.Image

    def boom(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(PIL.Image, "open", boom)
    data = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path)), seed=0)
    assert data.train_targets.tolist() == [0, 0, 1, 1] and data.input_shape == (3, 224, 224)


def test_imagefolder_normalisation(tmp_path):
    make_folder(tmp_path, {"train": {"a": 1}, "test": {"a": 1}})
    raw = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=6,
                                   normalize=False), seed=0)
    norm = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=6), seed=0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(norm.train[0][0], (raw.train[0][0] - mean) / std)
    grey = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=6, channels=1),
                         seed=0)
    assert grey.train[0][0].shape == (1, 6, 6)


def test_imagefolder_unreadable_image_is_named(tmp_path):
    make_folder(tmp_path, {"train": {"a": 2}, "test": {"a": 1}})
    bad = tmp_path / "train" / "a" / "img1.png"
    bad.write_bytes(b"\x89PNG garbage")
    data = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=4), seed=0)
    data.train.__getitems__([0])
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        data.train.__getitems__([0, 1])


@pytest.mark.parametrize("missing", ["train", "test"])
def test_imagefolder_missing_split(tmp_path, missing):
    make_folder(tmp_path, {"train": {"a": 1}, "test": {"a": 1}})
    import shutil

    shutil.rmtree(tmp_path / missing)
    with pytest.raises(UserError, match=f"{missing}.*not found"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path)), seed=0)


def test_imagefolder_test_class_unknown_to_train(tmp_path):
    make_folder(tmp_path, {"train": {"a": 1}, "test": {"a": 1, "b": 1}})
    with pytest.raises(UserError, match="no counterpart"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path)), seed=0)


def test_imagefolder_needs_root():
    with pytest.raises(UserError, match="data.root"):
        build_dataset(DataConfig(dataset="imagefolder"), seed=0)
