"""LIF membrane update with hard reset: leak, integrate, fire, reset in one pass.

Shapes: input current ``i`` and the state ``v`` (the membrane after the previous step's reset)
are ``(B, C, ...)``; ``leak`` (in (0, 1)) and ``theta`` (> 0) are ``(C,)``, one per channel::

    u = leak·v + i            (leak, integrate; v already holds v_{t-1}·(1 - z_{t-1}))
    z = Θ(u - theta)          (fire; Θ(0) = 1)
    v' = u·(1 - z)            (hard reset; z detached here, as in the spec §4)

Keeping the membrane *after* reset as the state is the spec's ``v_t = leak·v_{t-1}·(1-z_{t-1}) + I_t``
with one state tensor instead of two. The spike ``z`` is stored in ``i``'s dtype, the membrane in
``v``'s (keep it fp32 when activations are bf16). Training differentiates Θ through the arctan
surrogate (``spike``): ``dΘ(x)/dx ≈ (α/2) / (1 + (π/2·α·x)²)``, the derivative of
``arctan(π/2·α·x)/π + 1/2`` (α = 10 by default).
``lif_step`` dispatches: Triton on CUDA, the reference elsewhere and whenever autograd must see it.
"""

from __future__ import annotations

import math

import torch

from clplat.kernels._backend import choose_backend, interpret_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = None

__all__ = ["ArcTanSpike", "lif_step", "lif_step_reference", "lif_step_triton", "spike", "surrogate_grad"]

SURROGATE_ALPHA = 10.0


def surrogate_grad(x: torch.Tensor, alpha: float = SURROGATE_ALPHA) -> torch.Tensor:
    """The arctan surrogate's derivative at ``x = u - theta``."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


class ArcTanSpike(torch.autograd.Function):
    """Heaviside forward, arctan-surrogate backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.alpha), None


def spike(x: torch.Tensor, alpha: float = SURROGATE_ALPHA) -> torch.Tensor:
    """``Θ(x)`` whose gradient is the arctan surrogate."""
    return ArcTanSpike.apply(x, alpha)


def _check(i: torch.Tensor, v: torch.Tensor, leak: torch.Tensor, theta: torch.Tensor) -> int:
    if i.dim() < 2:
        raise ValueError(f"input current must be (B, C, ...), got {tuple(i.shape)}")
    if v.shape != i.shape:
        raise ValueError(f"membrane state must have the current's shape {tuple(i.shape)}, got {tuple(v.shape)}")
    ch = i.shape[1]
    if leak.shape != (ch,) or theta.shape != (ch,):
        raise ValueError(f"leak and theta must be ({ch},), got {tuple(leak.shape)}, {tuple(theta.shape)}")
    return ch


def lif_step_reference(
    i: torch.Tensor, v: torch.Tensor, leak: torch.Tensor, theta: torch.Tensor, alpha: float = SURROGATE_ALPHA
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference (differentiable through ``spike``): ``(z in i's dtype, v' in v's dtype)``."""
    ch = _check(i, v, leak, theta)
    view = (1, ch) + (1,) * (i.dim() - 2)
    work = torch.promote_types(v.dtype, torch.float32)
    u = leak.to(work).view(view) * v.to(work) + i.to(work)
    z = spike(u - theta.to(work).view(view), alpha)
    return z.to(i.dtype), (u * (1 - z.detach())).to(v.dtype)


def _lif_step_kernel(i_ptr, v_ptr, leak_ptr, theta_ptr, z_out_ptr, v_out_ptr, C, N, BLOCK: tl.constexpr):
    """One program = one (batch, channel) and BLOCK pixels."""
    row = tl.program_id(0).to(tl.int64)  # b * C + ch
    ch = row % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    at = row * N + offs
    leak = tl.load(leak_ptr + ch).to(tl.float32)
    theta = tl.load(theta_ptr + ch).to(tl.float32)
    u = leak * tl.load(v_ptr + at, mask=mask).to(tl.float32) + tl.load(i_ptr + at, mask=mask).to(tl.float32)
    fired = u >= theta
    tl.store(z_out_ptr + at, tl.where(fired, 1.0, 0.0).to(z_out_ptr.dtype.element_ty), mask=mask)
    tl.store(v_out_ptr + at, tl.where(fired, 0.0, u).to(v_out_ptr.dtype.element_ty), mask=mask)


_JITTED: dict[bool, object] = {}


def _kernel():
    """JIT on first use per interpreter mode (triton reads TRITON_INTERPRET when decorating)."""
    mode = interpret_mode()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_lif_step_kernel)
    return _JITTED[mode]


def lif_step_triton(
    i: torch.Tensor,
    v: torch.Tensor,
    leak: torch.Tensor,
    theta: torch.Tensor,
    out_z: torch.Tensor | None = None,
    out_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version (no autograd). ``out_v`` may be ``v`` itself for an in-place update."""
    ch = _check(i, v, leak, theta)
    i, v, leak, theta = i.contiguous(), v.contiguous(), leak.contiguous(), theta.contiguous()
    out_z = torch.empty_like(i) if out_z is None else out_z
    out_v = torch.empty_like(v) if out_v is None else out_v
    for name, out, dtype in (("out_z", out_z, i.dtype), ("out_v", out_v, v.dtype)):
        if not out.is_contiguous() or out.shape != v.shape or out.dtype != dtype:
            raise ValueError(f"{name} must be contiguous, shaped like the membrane and of dtype {dtype}")
    n = v[0, 0].numel() if v.dim() > 2 else 1
    block = max(16, min(1024, 1 << max(0, (n - 1).bit_length())))
    grid = (v.shape[0] * ch, -(-n // block))
    if v.numel():
        _kernel()[grid](i, v, leak, theta, out_z, out_v, ch, n, BLOCK=block)
    return out_z, out_v


def lif_step(
    i: torch.Tensor,
    v: torch.Tensor,
    leak: torch.Tensor,
    theta: torch.Tensor,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatcher: ``(z, v')``. Falls back to the reference whenever autograd must see the op."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (i, v, leak, theta)):
        if backend == "triton":
            raise RuntimeError("the Triton LIF step has no backward; use backend='reference'")
        return lif_step_reference(i, v, leak, theta)
    if choose_backend(i, backend) == "triton":
        return lif_step_triton(i, v, leak, theta)
    return lif_step_reference(i, v, leak, theta)
