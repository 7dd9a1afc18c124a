"""Batched training augmentations drawn from the engine's checkpointed generator.

Each call draws fresh randomness, so each of the ``online_iter`` updates on one stream batch sees
a different augmentation (as in the Si-Blurry protocol), and a resumed run repeats the draws.
"""

from __future__ import annotations

from collections.abc import Callable

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


def build_augment(cfg, generator: torch.Generator, mean: Tensor | None = None,
                  std: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``cfg`` is :class:`clplat.config.AugmentConfig`; ``mean``/``std`` (shape ``(1, C, 1, 1)``) are
    the dataset normalisation, needed to run AutoAugment in image space."""
    auto = None
    if cfg.autoaugment:
        from torchvision.transforms import v2

        policy = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "imagenet": v2.AutoAugmentPolicy.IMAGENET,
                  "svhn": v2.AutoAugmentPolicy.SVHN}[cfg.autoaugment]
        auto = v2.AutoAugment(policy)

    def augment(x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        if auto is not None:
            # AutoAugment draws from torch's global RNG, which the checkpoint also restores.
            x = _autoaugment_batch(x, auto, mean, std)
        x = random_crop(x, cfg.random_crop_pad, generator)
        if cfg.hflip:
            x = random_hflip(x, generator)
        return x

    return augment
