"""Winning-subnetwork masks (WSN, spec ``pfnr_senn.md`` A3), independent of any model.

- :func:`topc_mask`: the binary mask keeping exactly the top ``c`` % of a score tensor (``|s|`` or
  ``s``), with a straight-through gradient: ``dL/ds := dL/dmask``.
- :func:`pack_bits` / :func:`unpack_bits`: a bool mask as 1 bit per weight (``uint8``), so a stored
  per-session mask costs 8x less than a ``torch.bool`` tensor.
- :func:`checksum`: an exact fingerprint of a tensor's bits, to prove frozen weights never move.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def kept_count(numel: int, c: float) -> int:
    """How many of ``numel`` weights the top ``c`` % keeps (at least one)."""
    return max(1, min(numel, round(numel * c / 100.0)))


class _TopC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, k: int, use_abs: bool) -> Tensor:
        flat = (scores.abs() if use_abs else scores).flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, k, sorted=False).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None  # straight-through


def topc_mask(scores: Tensor, c: float, use_abs: bool = True) -> Tensor:
    """Float {0, 1} mask of ``scores``' shape with exactly ``kept_count(numel, c)`` ones."""
    return _TopC.apply(scores, kept_count(scores.numel(), c), use_abs)


def packed_size(numel: int) -> int:
    return math.ceil(numel / 8)


def pack_bits(mask: Tensor) -> Tensor:
    """Bool/0-1 tensor -> ``uint8 (ceil(numel / 8),)``, most significant bit first."""
    flat = mask.flatten().to(torch.uint8)
    pad = packed_size(flat.numel()) * 8 - flat.numel()
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
    return (flat * _BIT_WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_bits`: a ``torch.bool`` tensor of ``shape``."""
    n = math.prod(shape)
    bits = (packed.view(-1, 1) & _BIT_WEIGHTS.to(packed.device)).ne(0).flatten()
    return bits[:n].view(shape)


def checksum(t: Tensor) -> int:
    """Position-weighted sum of the raw 32-bit patterns (int64, wrapping): any changed value changes it
    except for astronomically unlikely collisions."""
    bits = t.detach().float().contiguous().view(torch.int32).flatten().long()
    pos = torch.arange(bits.numel(), device=bits.device) % 65521 + 1
    return int((bits * pos).sum())
