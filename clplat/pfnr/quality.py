"""Training loss and video quality through torchmetrics (nothing hand-written): NeRV's "Fusion6"
loss ``0.7 L1 + 0.3 (1 - SSIM)``, PSNR per frame and MS-SSIM, all with ``data_range=1``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # the standard 5-scale weights
KERNEL = 11


def fusion_loss(pred: Tensor, target: Tensor, l1_weight: float = 0.7) -> Tensor:
    """``l1_weight * L1 + (1 - l1_weight) * (1 - SSIM)`` on ``(B, 3, H, W)`` in [0, 1]."""
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
    return l1_weight * F.l1_loss(pred, target) + (1.0 - l1_weight) * (1.0 - ssim)


def psnr_frames(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR (dB) of each frame ``(T,)``; a video's PSNR is their mean (as NeRV reports)."""
    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def msssim_betas(h: int, w: int) -> tuple[float, ...]:
    """The most of the 5 standard scales torchmetrics accepts at ``h x w`` (weights renormalised):
    5 from 176 px up; small frames use fewer scales."""
    for n in range(len(MSSSIM_BETAS), 0, -1):
        div = max(1, n - 1) ** 2
        if min(h, w) >= 2 ** n and min(h, w) // div > KERNEL - 1:
            b = MSSSIM_BETAS[:n]
            return tuple(x / sum(b) for x in b)
    raise ValueError(f"frames of {h}x{w} are too small for MS-SSIM (kernel {KERNEL})")


def msssim_video(pred: Tensor, target: Tensor, batch: int = 16) -> float:
    """Mean MS-SSIM over the frames of ``(T, 3, H, W)`` videos."""
    betas = msssim_betas(*pred.shape[-2:])
    vals = [multiscale_structural_similarity_index_measure(pred[i:i + batch], target[i:i + batch], data_range=1.0,
                                                           kernel_size=KERNEL, betas=betas, reduction="none")
            for i in range(0, pred.shape[0], batch)]
    return float(torch.cat(vals).mean())
