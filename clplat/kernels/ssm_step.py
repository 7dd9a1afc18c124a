"""ConvS5 state update: ``x ← Λ̄ ⊙ x + B̄u`` on complex states stored as (re, im) channel pairs.

Shapes: state ``x (B, 2S, ...)`` with channels ``[re_0..re_{S-1}, im_0..im_{S-1}]``, the B-conv
output ``bu`` of the same shape (any float dtype: it is added in fp32), ``a_re, a_im (S,)`` the
discretised diagonal Λ̄, one value per state channel, shared by every pixel::

    x_re' = a_re·x_re - a_im·x_im + bu_re
    x_im' = a_re·x_im + a_im·x_re + bu_im

One pass over memory; the Triton kernel may write the new state over the old one (``out=x``), so
a CUDA-graph step can keep its state buffer. Arithmetic in fp32, stored in ``x``'s dtype.
``ssm_step`` dispatches (``_backend.choose_backend``): Triton on CUDA, the reference elsewhere and
whenever autograd must see the op.
"""

from __future__ import annotations

import torch

from clplat.kernels._backend import choose_backend, interpret_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = None

__all__ = ["ssm_step", "ssm_step_reference", "ssm_step_triton"]


def _check(x: torch.Tensor, bu: torch.Tensor, a_re: torch.Tensor, a_im: torch.Tensor) -> int:
    if x.dim() < 2 or x.shape[1] % 2:
        raise ValueError(f"state must be (B, 2S, ...) with an even channel count, got {tuple(x.shape)}")
    if bu.shape != x.shape:
        raise ValueError(f"bu must have the state's shape {tuple(x.shape)}, got {tuple(bu.shape)}")
    s = x.shape[1] // 2
    if a_re.shape != (s,) or a_im.shape != (s,):
        raise ValueError(f"a_re and a_im must be ({s},), got {tuple(a_re.shape)}, {tuple(a_im.shape)}")
    return s


def ssm_step_reference(x: torch.Tensor, bu: torch.Tensor, a_re: torch.Tensor, a_im: torch.Tensor) -> torch.Tensor:
    """PyTorch reference (differentiable): the new state in ``x``'s dtype."""
    s = _check(x, bu, a_re, a_im)
    view = (1, s) + (1,) * (x.dim() - 2)
    work = torch.promote_types(x.dtype, torch.float32)  # fp32 arithmetic (fp64 kept for gradcheck)
    xw, bw = x.to(work), bu.to(work)
    ar, ai = a_re.to(work).view(view), a_im.to(work).view(view)
    xr, xi = xw[:, :s], xw[:, s:]
    new_re = ar * xr - ai * xi + bw[:, :s]
    new_im = ar * xi + ai * xr + bw[:, s:]
    return torch.cat([new_re, new_im], dim=1).to(x.dtype)


def _ssm_step_kernel(x_ptr, bu_ptr, are_ptr, aim_ptr, out_ptr, S, N, BLOCK: tl.constexpr):
    """One program = one (batch, state channel) and BLOCK pixels; re and im rows handled together."""
    row = tl.program_id(0).to(tl.int64)  # b * S + s
    b, s = row // S, row % S
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    re_off = (b * 2 * S + s) * N + offs
    im_off = re_off + S * N
    ar = tl.load(are_ptr + s).to(tl.float32)
    ai = tl.load(aim_ptr + s).to(tl.float32)
    xr = tl.load(x_ptr + re_off, mask=mask).to(tl.float32)
    xi = tl.load(x_ptr + im_off, mask=mask).to(tl.float32)
    new_re = ar * xr - ai * xi + tl.load(bu_ptr + re_off, mask=mask).to(tl.float32)
    new_im = ar * xi + ai * xr + tl.load(bu_ptr + im_off, mask=mask).to(tl.float32)
    tl.store(out_ptr + re_off, new_re.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + im_off, new_im.to(out_ptr.dtype.element_ty), mask=mask)


_JITTED: dict[bool, object] = {}


def _kernel():
    """JIT on first use per interpreter mode (triton reads TRITON_INTERPRET when decorating)."""
    mode = interpret_mode()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_ssm_step_kernel)
    return _JITTED[mode]


def ssm_step_triton(
    x: torch.Tensor,
    bu: torch.Tensor,
    a_re: torch.Tensor,
    a_im: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version (no autograd). ``out`` may be ``x`` itself for an in-place update."""
    s = _check(x, bu, a_re, a_im)
    x, bu, a_re, a_im = x.contiguous(), bu.contiguous(), a_re.contiguous(), a_im.contiguous()
    out = torch.empty_like(x) if out is None else out
    if not out.is_contiguous() or out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError("out must be contiguous and shaped and typed like the state")
    n = x[0, 0].numel()
    block = max(16, min(1024, 1 << max(0, (n - 1).bit_length())))
    grid = (x.shape[0] * s, -(-n // block))
    if x.numel():
        _kernel()[grid](x, bu, a_re, a_im, out, s, n, BLOCK=block)
    return out


def ssm_step(
    x: torch.Tensor,
    bu: torch.Tensor,
    a_re: torch.Tensor,
    a_im: torch.Tensor,
    backend: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatcher. Falls back to the reference whenever autograd must see the op (``out`` is then
    ignored: autograd needs a fresh tensor)."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, bu, a_re, a_im))
    if needs_grad:
        if backend == "triton":
            raise RuntimeError("the Triton SSM step has no backward; use backend='reference'")
        return ssm_step_reference(x, bu, a_re, a_im)
    if choose_backend(x, backend) == "triton":
        return ssm_step_triton(x, bu, a_re, a_im, out=out)
    result = ssm_step_reference(x, bu, a_re, a_im)
    if out is not None:
        out.copy_(result)
        return out
    return result
