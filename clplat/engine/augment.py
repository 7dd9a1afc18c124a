"""Batched training augmentations drawn from the engine's checkpointed generator.

Each call draws fresh randomness, so each of the ``online_iter`` updates on one stream batch sees
a different augmentation (as in the Si-Blurry protocol), and a resumed run repeats the draws.

CutMix mixes labels as well as pixels, and the Si-Blurry release applies it to the whole update
batch (stream + replay). So it is not part of the per-sample ``augment(x)``: a strategy that trains
with it calls :func:`mix_batch` on the batch it assembled and computes its loss with
:func:`mixed_cross_entropy`, which takes either plain labels or the :class:`MixedLabels` CutMix
returns. Strategies that do not call it (MVP, as in the release) are unaffected by the option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(x: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset per sample (RandomCrop(size, pad))."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    rows = (off[:, 0:1] + torch.arange(h)).to(x.device)  # (n, h)
    cols = (off[:, 1:2] + torch.arange(w)).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: Tensor, g: torch.Generator) -> Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _autoaugment_batch(x: Tensor, auto, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """AutoAugment's policies are defined on uint8 images: undo the dataset normalisation, quantise,
    augment each sample, and normalise back."""
    if mean is not None and std is not None:
        mean, std = mean.to(x.device), std.to(x.device)
        x01 = x * std + mean
    else:
        x01 = x
    u8 = (x01.clamp(0, 1) * 255).round().to(torch.uint8)
    out = torch.stack([auto(xi) for xi in u8]).to(x.dtype) / 255
    return (out - mean) / std if mean is not None and std is not None else out


@dataclass(frozen=True)
class MixedLabels:
    """CutMix targets: sample i shows ``y_a[i]`` on a ``lam`` share of its pixels, ``y_b[i]`` on the rest."""

    y_a: Tensor
    y_b: Tensor
    lam: float


def cutmix(x: Tensor, y: Tensor, alpha: float, g: torch.Generator) -> tuple[Tensor, MixedLabels]:
    """CutMix (Yun et al., 2019) as the Si-Blurry release draws it: ``lam ~ Beta(alpha, alpha)``, a
    box of ``sqrt(1 - lam)`` of each side centred uniformly (clipped at the border), pasted from a
    random permutation of the batch; ``lam`` is then reset to the exact uncovered share."""
    n, _, h, w = x.shape
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))  # torch has no seeded Beta draw
    perm = torch.randperm(n, generator=g).to(x.device)
    cut = float(np.sqrt(1.0 - lam))
    half_h, half_w = int(h * cut) // 2, int(w * cut) // 2
    cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
    r0, r1 = max(cy - half_h, 0), min(cy + half_h, h)
    c0, c1 = max(cx - half_w, 0), min(cx + half_w, w)
    out = x.clone()
    out[:, :, r0:r1, c0:c1] = x[perm, :, r0:r1, c0:c1]
    lam = 1.0 - (r1 - r0) * (c1 - c0) / (h * w)
    return out, MixedLabels(y, y[perm], lam)


def mixed_cross_entropy(logits: Tensor, target: Tensor | MixedLabels, reduction: str = "mean") -> Tensor:
    """Cross-entropy against plain labels or CutMix's ``lam CE(y_a) + (1 - lam) CE(y_b)``."""
    if isinstance(target, MixedLabels):
        return target.lam * F.cross_entropy(logits, target.y_a, reduction=reduction) \
            + (1.0 - target.lam) * F.cross_entropy(logits, target.y_b, reduction=reduction)
    return F.cross_entropy(logits, target, reduction=reduction)


def mix_batch(augment: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | MixedLabels]:
    """The batch-level step after ``augment``: CutMix with the configured probability (or nothing
    when ``augment`` has no ``mix``, e.g. a bare function in tests)."""
    mix = getattr(augment, "mix", None)
    return mix(x, y) if mix is not None else (x, y)


class TrainAugment:
    """``augment(x)``: AutoAugment, random crop, flip per sample; ``augment.mix(x, y)``: CutMix on a
    whole update batch with probability ``cutmix_prob`` (one draw per update, as the release)."""

    def __init__(self, cfg, generator: torch.Generator, mean: Tensor | None = None,
                 std: Tensor | None = None) -> None:
        self.cfg, self.generator, self.mean, self.std = cfg, generator, mean, std
        self.auto = None
        if cfg.autoaugment:
            from torchvision.transforms import v2

            policy = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "imagenet": v2.AutoAugmentPolicy.IMAGENET,
                      "svhn": v2.AutoAugmentPolicy.SVHN}[cfg.autoaugment]
            self.auto = v2.AutoAugment(policy)

    def __call__(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        if self.auto is not None:
            # AutoAugment draws from torch's global RNG, which the checkpoint also restores.
            x = _autoaugment_batch(x, self.auto, self.mean, self.std)
        x = random_crop(x, self.cfg.random_crop_pad, self.generator)
        if self.cfg.hflip:
            x = random_hflip(x, self.generator)
        return x

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | MixedLabels]:
        p = self.cfg.cutmix_prob
        if p <= 0 or x.shape[0] < 2 or float(torch.rand((), generator=self.generator)) >= p:
            return x, y
        return cutmix(x, y, self.cfg.cutmix_alpha, self.generator)


def build_augment(cfg, generator: torch.Generator, mean: Tensor | None = None,
                  std: Tensor | None = None) -> TrainAugment:
    """``cfg`` is :class:`clplat.config.AugmentConfig`; ``mean``/``std`` (shape ``(1, C, 1, 1)``) are
    the dataset normalisation, needed to run AutoAugment in image space."""
    return TrainAugment(cfg, generator, mean, std)
