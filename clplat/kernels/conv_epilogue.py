"""Continual-conv epilogue: shift the partial-sum register, add this frame's taps, bias, activation.

A continual temporal conv with kernel ``K`` keeps ``K-1`` partial sums per output pixel
(streaming spec §1.3, layout B). One 2D conv of the new frame gives all ``K`` taps
``tap_j = W_j * x_t``; this epilogue then does, in one pass over memory::

    y          = act(acc[0] + tap[K-1] + bias)          # the finished output for this frame
    new_acc[m] = acc[m+1] + tap[K-2-m]    (m < K-2)     # partials move one frame closer
    new_acc[K-2] = tap[0]                               # the newest partial starts

Shapes: ``taps (B, C, K, N)``, ``acc (B, C, K-1, N)``, ``bias (C,)``, ``y (B, C, N)``;
``N`` is the flattened spatial size. Arithmetic is fp32 whatever the storage dtype.
``conv_epilogue`` dispatches: Triton on CUDA, the PyTorch reference elsewhere (see ``_backend``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clplat.kernels._backend import choose_backend, interpret_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = None

__all__ = ["ACTIVATIONS", "conv_epilogue", "conv_epilogue_reference", "conv_epilogue_triton"]

ACTIVATIONS = {"identity": 0, "relu": 1, "silu": 2}


def _check(taps: torch.Tensor, acc: torch.Tensor, bias: torch.Tensor | None, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if taps.dim() != 4 or acc.dim() != 4:
        raise ValueError(f"taps must be (B, C, K, N) and acc (B, C, K-1, N); got {taps.shape}, {acc.shape}")
    b, c, k, n = taps.shape
    if k < 2 or acc.shape != (b, c, k - 1, n):
        raise ValueError(
            f"acc must be {(b, c, k - 1, n)} for taps {tuple(taps.shape)}, got {tuple(acc.shape)}"
        )
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"bias must be ({c},), got {tuple(bias.shape)}")


def conv_epilogue_reference(
    taps: torch.Tensor,
    acc: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "identity",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference (differentiable); returns ``(y, new_acc)`` in the dtypes of taps / acc."""
    _check(taps, acc, bias, activation)
    k = taps.shape[2]
    t32, a32 = taps.float(), acc.float()
    y = a32[:, :, 0] + t32[:, :, k - 1]
    if bias is not None:
        y = y + bias.float().view(1, -1, 1)
    if activation == "relu":
        y = F.relu(y)
    elif activation == "silu":
        y = F.silu(y)
    new_acc = t32[:, :, :1]
    if k > 2:
        new_acc = torch.cat([a32[:, :, 1:] + t32[:, :, 1 : k - 1].flip(2), new_acc], dim=2)
    return y.to(taps.dtype), new_acc.to(acc.dtype)


def _conv_epilogue_kernel(
    taps_ptr,
    acc_ptr,
    bias_ptr,
    y_ptr,
    new_acc_ptr,
    C,
    N,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program = one (batch, channel) row and BLOCK spatial positions; all K-1 slots in registers."""
    bc = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    taps_row = taps_ptr + bc * K * N
    acc_row = acc_ptr + bc * (K - 1) * N
    new_row = new_acc_ptr + bc * (K - 1) * N
    y = tl.load(acc_row + offs, mask=mask).to(tl.float32)
    y += tl.load(taps_row + (K - 1) * N + offs, mask=mask).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + bc % C).to(tl.float32)
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    if ACT == 2:
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + bc * N + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    # Ascending m reads slot m+1 before it is overwritten, so new_acc may alias acc.
    for m in tl.static_range(K - 2):
        v = tl.load(acc_row + (m + 1) * N + offs, mask=mask).to(tl.float32)
        v += tl.load(taps_row + (K - 2 - m) * N + offs, mask=mask).to(tl.float32)
        tl.store(new_row + m * N + offs, v.to(new_acc_ptr.dtype.element_ty), mask=mask)
    first = tl.load(taps_row + offs, mask=mask).to(tl.float32)
    tl.store(new_row + (K - 2) * N + offs, first.to(new_acc_ptr.dtype.element_ty), mask=mask)


_JITTED: dict[bool, object] = {}


def _kernel():
    """JIT the kernel on first use, per interpreter mode: triton reads TRITON_INTERPRET when
    decorating, so deciding here (not at import) lets tests switch to the interpreter late."""
    mode = interpret_mode()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_conv_epilogue_kernel)
    return _JITTED[mode]


def conv_epilogue_triton(
    taps: torch.Tensor,
    acc: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "identity",
    acc_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version (no autograd). ``acc_out`` may be ``acc`` itself for an in-place update."""
    _check(taps, acc, bias, activation)
    taps, acc = taps.contiguous(), acc.contiguous()
    b, c, k, n = taps.shape
    y = torch.empty((b, c, n), dtype=taps.dtype, device=taps.device)
    new_acc = torch.empty_like(acc) if acc_out is None else acc_out
    if not new_acc.is_contiguous() or new_acc.shape != acc.shape:
        raise ValueError("acc_out must be contiguous and shaped like acc")
    block = max(16, min(1024, 1 << max(0, (n - 1).bit_length())))
    grid = (b * c, -(-n // block))
    _kernel()[grid](
        taps,
        acc,
        bias if bias is not None else taps,
        y,
        new_acc,
        c,
        n,
        K=k,
        HAS_BIAS=bias is not None,
        ACT=ACTIVATIONS[activation],
        BLOCK=block,
    )
    return y, new_acc


def conv_epilogue(
    taps: torch.Tensor,
    acc: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "identity",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatcher. Falls back to the reference whenever autograd must see the op."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (taps, acc, bias))
    if needs_grad:
        if backend == "triton":
            raise RuntimeError("the Triton conv epilogue has no backward; use backend='reference'")
        return conv_epilogue_reference(taps, acc, bias, activation)
    if choose_backend(taps, backend) == "triton":
        return conv_epilogue_triton(taps, acc, bias, activation)
    return conv_epilogue_reference(taps, acc, bias, activation)
