"""ConTraCon's 16 task-identification views (spec B.3): 6 clean copies plus 10 fixed AutoAugment
(CIFAR-10 policy) operations, each the second operation of sub-policy i at its fixed magnitude and
sign, with no probabilities. The operations run on uint8 images as PIL's do: the dataset
normalisation is undone first and applied again after.

Translations follow PIL's affine convention of the release (output pixel (x, y) reads input
(x + c, y)): the content moves left/up by c pixels, nearest neighbour, grey (128) fill.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

N_CLEAN = 6


def _translate(fx: float, fy: float) -> Callable[[Tensor], Tensor]:
    def op(u8: Tensor) -> Tensor:
        h, w = u8.shape[-2:]
        return TF.affine(u8, angle=0.0, translate=[-fx * w, -fy * h], scale=1.0, shear=[0.0, 0.0],
                         interpolation=TF.InterpolationMode.NEAREST, fill=128)
    return op


# i -> (description, op on a uint8 (B, C, H, W) batch), in the release's order
VIEW_OPS: list[tuple[str, Callable[[Tensor], Tensor]]] = [
    ("contrast x1.6", lambda u: TF.adjust_contrast(u, 1.6)),
    ("translate-x +0.45 W", _translate(0.45, 0.0)),
    ("translate-y +0.45 H", _translate(0.0, 0.45)),
    ("sharpness x1.3", lambda u: TF.adjust_sharpness(u, 1.3)),
    ("equalize", TF.equalize),
    ("invert", TF.invert),
    ("posterize 5 bits", lambda u: TF.posterize(u, 5)),
    ("translate-x +0.15 W", _translate(0.15, 0.0)),
    ("brightness x1.7", lambda u: TF.adjust_brightness(u, 1.7)),
    ("brightness x1.9", lambda u: TF.adjust_brightness(u, 1.9)),
]


def to_uint8(x: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    x01 = x * std.to(x.device) + mean.to(x.device) if mean is not None and std is not None else x
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(u8: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    x = u8.float() / 255
    return (x - mean.to(x.device)) / std.to(x.device) if mean is not None and std is not None else x


def entropy_task_id(view_logits: Callable[[int], Tensor], n_tasks: int, batch: int,
                    eps: float = 1e-4) -> tuple[Tensor, list[Tensor]]:
    """Per image, the task whose view-averaged softmax has the lowest entropy ``-sum p log(p + eps)``,
    and every task's clean-image logits. ``view_logits(t)`` is task t's logits on the clean batch
    followed by its 10 augmented views (view-major, as :func:`task_id_views`), ``(11 B, C_t)``; the
    6 identical clean views of the recipe enter the mean with weight ``N_CLEAN`` (same numbers as
    16 forwards in eval mode, 11 images instead of 16)."""
    entropies, clean = [], []
    for t in range(n_tasks):
        logits = view_logits(t)
        c, a = logits[:batch], logits[batch:].reshape(-1, batch, logits.shape[1])
        mean = (N_CLEAN * c + a.sum(0)) / (N_CLEAN + a.shape[0])
        p = torch.softmax(mean, dim=1)
        entropies.append(-(p * torch.log(p + eps)).sum(1))
        clean.append(c)
    return torch.stack(entropies).argmin(0), clean


def task_id_views(x: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """The 10 augmented views of a normalised batch ``x``, stacked view-major: ``(10 B, C, H, W)``
    (row ``i * B + j`` is view i of image j). The 6 clean views are ``x`` itself."""
    u8 = to_uint8(x, mean, std)
    return torch.cat([from_uint8(op(u8), mean, std) for _, op in VIEW_OPS]).to(x.dtype)
