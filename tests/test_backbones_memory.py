"""Backbone building and local weight files; the reservoir memory; seeded augmentations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clplat.backbones import build_backbone, load_pretrained_file
from clplat.config import AugmentConfig, BackboneConfig
from clplat.engine.augment import build_augment, random_crop
from clplat.errors import UserError
from clplat.strategies.memory import ReservoirMemory


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet10t"])
def test_backbones_give_features(name: str) -> None:
    m = build_backbone(BackboneConfig(name=name), (3, 16, 16))
    out = m(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, m.num_features)


def test_unknown_backbone_and_bad_kwargs() -> None:
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone(BackboneConfig(name="no_such_net"), (3, 8, 8))
    with pytest.raises(UserError, match="kwargs"):
        build_backbone(BackboneConfig(name="mlp", kwargs={"depth": 3}), (3, 8, 8))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = BackboneConfig(name="vit_tiny_patch16_224", kwargs={"patch_size": 4, "depth": 2})
    a = build_backbone(cfg, (3, 16, 16))
    state = {k: v.contiguous() for k, v in a.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    torch.manual_seed(123)
    b = build_backbone(cfg.model_copy(update={"pretrained_file": str(path)}), (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    a.eval()
    b.eval()
    assert torch.equal(a(x), b(x))


def test_pretrained_file_errors(tmp_path: Path) -> None:
    m = build_backbone(BackboneConfig(name="mlp"), (1, 8, 8))
    with pytest.raises(UserError, match="not found"):
        load_pretrained_file(m, tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="cannot read"):
        load_pretrained_file(m, bad)
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(other))
    with pytest.raises(UserError, match="do not match"):
        load_pretrained_file(m, other)


def test_reservoir_is_uniform_and_keeps_original_ids() -> None:
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(100)
    for _ in range(300):
        mem = ReservoirMemory(10, (1,))
        ids = torch.arange(100)
        mem.add(ids.float()[:, None], ids + 1000, g)
        assert len(mem) == 10 and int(mem.n_seen) == 100
        assert bool((mem.y - 1000 == mem.x[:, 0].long()).all())  # labels stay original ids
        counts[mem.x[:, 0].long()] += 1
    # each sample kept with probability 10/100: 30 expected out of 300 trials
    assert counts.min() > 10 and counts.max() < 55
    xs, ys = mem.sample(4, g)
    assert xs.shape == (4, 1) and len(set(ys.tolist())) == 4


def test_reservoir_state_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    a = ReservoirMemory(5, (2,))
    a.add(torch.randn(7, 2), torch.arange(7), g)
    b = ReservoirMemory(5, (2,))
    b.load_state_dict(a.state_dict())
    assert len(b) == 5 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_random_crop_matches_pad_and_slice() -> None:
    x = torch.randn(3, 2, 5, 6)
    g = torch.Generator().manual_seed(4)
    out = random_crop(x, 2, g)
    off = torch.randint(0, 5, (3, 2), generator=torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):
        r, c = off[i].tolist()
        assert torch.equal(out[i], padded[i, :, r : r + 5, c : c + 6])


def test_augment_is_seeded() -> None:
    cfg = AugmentConfig(random_crop_pad=2, hflip=True)
    x = torch.randn(8, 3, 8, 8)
    a = build_augment(cfg, torch.Generator().manual_seed(1))
    b = build_augment(cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), a(x))  # fresh draw per call (per online iteration)


def test_autoaugment_runs_in_image_space() -> None:
    """With the dataset normalisation given, AutoAugment sees [0, 1] images and the result is
    normalised back: an identity-like policy draw leaves the batch (up to uint8 rounding) unchanged."""
    from clplat.engine.augment import _autoaugment_batch

    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    img = torch.rand(4, 3, 8, 8)
    x = (img - mean) / std
    out = _autoaugment_batch(x, lambda u8: u8, mean, std)
    assert torch.allclose(out, x, atol=(0.5 / 255) / 0.2 + 1e-6)
    aug = build_augment(AugmentConfig(autoaugment="cifar10"), torch.Generator().manual_seed(0), mean, std)
    y = aug(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    back = y * std + mean
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5  # stayed a valid image
