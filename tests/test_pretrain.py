"""Pretrained weights without a hub: local files round-trip into timm models, the glyphs dataset
is deterministic and digit-free by construction, ``clplat.pretrain`` writes loadable weights, and
the shipped backbone matches its recorded config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from clplat.backbones import build_backbone, load_pretrained_file  # noqa: E402
from clplat.config import BackboneConfig, DataConfig  # noqa: E402
from clplat.data import build_dataset  # noqa: E402
from clplat.errors import UserError  # noqa: E402
from clplat.pretrain import load_pretrain_config, main, pretrain  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "clplat" / "weights"
SMALL = {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}}


def _small(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(BackboneConfig(**SMALL), (3, 16, 16))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_round_trip(tmp_path: Path, suffix: str) -> None:
    src, dst = _small(0), _small(1)
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(src.eval()(x), dst.eval()(x))
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    load_pretrained_file(dst, path)
    assert torch.allclose(src(x), dst(x))
    cfg = BackboneConfig(**SMALL, pretrained_file=str(path))
    assert torch.allclose(build_backbone(cfg, (3, 16, 16)).eval()(x), src(x))


def test_wrong_file_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(UserError):
        load_pretrained_file(_small(0), bad)


def test_glyphs_deterministic_and_shaped() -> None:
    cfg = DataConfig(dataset="glyphs", num_classes=12, train_per_class=5, test_per_class=2, image_size=16,
                     channels=3)
    a, b = build_dataset(cfg, seed=1), build_dataset(cfg, seed=2)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)  # the task fixes the data
    assert a.input_shape == (3, 16, 16) and len(a.train) == 60 and len(a.test) == 24
    assert sorted(set(a.train_targets.tolist())) == list(range(12)) and a.num_classes == 12
    assert all(name.startswith("glyph_") for name in a.class_names)


def test_pretrain_writes_loadable_weights(tmp_path: Path) -> None:
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(json.dumps({
        "data": {"dataset": "glyphs", "num_classes": 4, "train_per_class": 8, "test_per_class": 2,
                 "image_size": 16, "channels": 3},
        "backbone": SMALL, "train": {"epochs": 1, "batch_size": 16}, "probe": None,
        "output": str(tmp_path / "out" / "w.safetensors")}))
    report = pretrain(load_pretrain_config(cfg_path), log=lambda s: None)
    weights = tmp_path / "out" / "w.safetensors"
    assert weights.is_file() and (tmp_path / "out" / "w.json").is_file()
    assert report["backbone"]["name"] == SMALL["name"] and len(report["sha256"]) == 64
    build_backbone(BackboneConfig(**SMALL, pretrained_file=str(weights)), (3, 16, 16))
    assert main([str(cfg_path), "output=w.bin"]) == 2  # a user error: one line, exit code 2


def test_shipped_backbone_loads_with_its_recorded_config() -> None:
    meta_path = WEIGHTS / "vit_glyphs32.json"
    if not meta_path.is_file():
        pytest.skip("shipped weights not built")
    meta = json.loads(meta_path.read_text())
    weights = WEIGHTS / meta["weights"]
    assert weights.stat().st_size <= 10 * 2**20
    cfg = BackboneConfig(name=meta["backbone"]["name"], kwargs=meta["backbone"]["kwargs"],
                         pretrained_file=str(weights))
    model = build_backbone(cfg, tuple(meta["input_shape"]))
    assert model.num_features == meta["backbone"]["kwargs"]["embed_dim"]
    assert meta["linear_probe"]["pretrained"] > meta["linear_probe"]["random_init"]
