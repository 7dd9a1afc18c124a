"""Scoring predicted frames: MSE, PSNR and SSIM per predicted frame (pixels in [0, 1]).

``evaluate_horizon`` observes ``context`` frames of held-out videos with the parallel pass, then
lets the model imagine ``horizon`` frames one step at a time (its own predictions fed back), and
scores frame ``k`` of the continuation against the truth, for every ``k``; frames past the
training clip length are the long-horizon part. A copy-the-last-context-frame baseline is scored
the same way, so the numbers have a floor to compare against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from clplat.streaming.models.convs5_predictor import FramePredictor

__all__ = ["evaluate_horizon", "frame_scores", "to_clip"]

SSIM_CHUNK = 16  # frames per SSIM call


def to_clip(videos: Tensor) -> Tensor:
    """``uint8 (B, T, H, W)`` -> float ``(B, 1, T, H, W)`` in [0, 1]."""
    return videos.unsqueeze(1).float() / 255.0


def frame_scores(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per-(video, frame) scores of ``(B, 1, T, H, W)`` clips in [0, 1]: each ``(B, T)``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    b, c, t, h, w = pred.shape
    mse = ((pred - target) ** 2).mean(dim=(1, 3, 4))
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    p, q = (x.movedim(2, 1).reshape(b * t, c, h, w).float() for x in (pred, target))
    # in chunks: the Gaussian-window convs run through im2col (~5 KB per pixel), all frames at
    # once would take gigabytes
    ssim = torch.cat([structural_similarity_index_measure(p[i : i + SSIM_CHUNK], q[i : i + SSIM_CHUNK],
                                                          data_range=1.0, reduction="none")
                      for i in range(0, b * t, SSIM_CHUNK)])
    return {"mse": mse, "psnr": psnr, "ssim": ssim.view(b, t).to(mse.dtype)}


@torch.no_grad()
def evaluate_horizon(model: FramePredictor, videos: Tensor, context: int, horizon: int,
                     batch_size: int = 16) -> dict[str, Any]:
    """Scores of imagined continuations of ``videos uint8 (N, context + horizon, H, W)``."""
    if videos.shape[1] != context + horizon:
        raise ValueError(f"videos need context + horizon = {context + horizon} frames, got {videos.shape[1]}")
    model.eval()
    sums: dict[str, Tensor] = {}
    for start in range(0, len(videos), batch_size):
        clip = to_clip(videos[start : start + batch_size])
        truth = clip[:, :, context:]
        runs = {"model": model.imagine(clip[:, :, :context], horizon),
                "copy_last": clip[:, :, context - 1 : context].expand_as(truth)}
        for who, pred in runs.items():
            for name, score in frame_scores(pred, truth).items():
                key = f"{who}_{name}"
                sums[key] = sums.get(key, 0) + score.sum(0)
    n = len(videos)
    per_frame = {k: [round(float(v), 5) for v in s / n] for k, s in sums.items()}
    means = {f"{k}_mean": round(sum(v) / len(v), 5) for k, v in per_frame.items()}
    return {"context": context, "horizon": horizon, "videos": n, "per_frame": per_frame, **means}
