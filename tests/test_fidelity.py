"""Defaults that follow the Si-Blurry release: timm's head init for every head-on-features method,
and the CIFAR-100 configs that reproduce the release (batch-level GSF, release tau, AutoAugment,
CutMix for the baselines only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clplat.config import load_config
from clplat.strategies import STRATEGIES
from tests.conftest import REPO

timm = pytest.importorskip("timm")

C = 50


def _vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=64, depth=5, num_heads=4)


SECTIONS = {
    "finetune": {}, "er": {"memory_size": 4},
    "l2p": {"pool_size": 4, "top_k": 2, "prompt_len": 1},
    "dualprompt": {"g_blocks": [0], "e_blocks": [1, 2], "e_len": 2, "pool_size": 3},
    "mvp": {"g_blocks": [0], "e_blocks": [1, 2], "e_len": 2, "pool_size": 3},
}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_heads_start_as_timm_heads(name: str) -> None:
    """trunc-normal(std 0.02) weights and zero bias, as timm.create_model(num_classes=C) builds the
    release's heads (PyTorch's default would be uniform with std 1/sqrt(3*64) = 0.072)."""
    torch.manual_seed(0)
    cls = STRATEGIES.get(name)
    strategy = cls(cls.config_model.model_validate(SECTIONS[name]), _vit(), C, (3, 16, 16))
    w, b = strategy.head.weight, strategy.head.bias
    assert w.shape == (C, 64) and torch.equal(b, torch.zeros(C))
    assert 0.018 < float(w.std()) < 0.022 and abs(float(w.mean())) < 0.002


def _cifar(name: str):
    return load_config(REPO / "experiments" / "cifar100" / f"si_blurry_{name}.yaml")


def test_cifar100_configs_reproduce_the_release() -> None:
    for name in ("mvp", "mvp_r500"):
        cfg = _cifar(name)
        mvp = cfg.strategy_config
        assert (mvp.gsf_weighting, mvp.cvpt_tau) == ("batch", "release")
        assert cfg.augment.autoaugment == "cifar10" and cfg.augment.cutmix_prob == 0.0
    for name in ("er", "l2p", "dualprompt"):
        cfg = _cifar(name)
        assert cfg.augment.autoaugment == "cifar10"
        assert (cfg.augment.cutmix_prob, cfg.augment.cutmix_alpha) == (0.5, 1.0)
    assert _cifar("l2p").strategy_config.diversified_selection is False
    assert _cifar("l2p").strategy_config.pull_weight == 0.0  # the release's pull loss is a no-op


def test_headline_baselines_train_with_cutmix_and_mvp_without() -> None:
    for name in ("er_vit", "finetune", "l2p", "dualprompt"):
        assert load_config(REPO / "experiments" / f"si_blurry_{name}.yaml").augment.cutmix_prob == 0.5
    for name in ("mvp", "mvp_r"):
        assert load_config(REPO / "experiments" / f"si_blurry_{name}.yaml").augment.cutmix_prob == 0.0
