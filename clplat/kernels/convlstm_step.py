"""ConvLSTM gate update: pre-activations of the two convs and the cell -> ``(h, c)`` in one pass.

Shapes: ``xg`` (input-conv gates) and ``hg`` (recurrent-conv gates, or ``None``) are ``(B, 4H, ...)``
in the gate order of :class:`~clplat.streaming.ConvLSTM` (input, forget, cell, output); ``c`` is
``(B, H, ...)``::

    i, f, g, o = split(xg + hg)
    c' = σ(f)·c + σ(i)·tanh(g),   h' = σ(o)·tanh(c')

Unfused, PyTorch reads the gates several times (add, chunk, three sigmoids, two tanhs, products);
the kernel reads ``xg``, ``hg`` and ``c`` once and writes ``h`` and ``c`` once. Arithmetic is fp32;
``h`` is stored in ``xg``'s dtype (the activations), ``c`` in ``c``'s (keep the cell fp32 when the
activations are bf16). ``out_c=c`` updates the cell in place (a CUDA-graph step keeps its buffer).
``convlstm_step`` dispatches: Triton on CUDA, the reference elsewhere and whenever autograd must see it.
"""

from __future__ import annotations

import torch

from clplat.kernels._backend import choose_backend, interpret_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = None

__all__ = ["convlstm_step", "convlstm_step_reference", "convlstm_step_triton"]


def _check(xg: torch.Tensor, hg: torch.Tensor | None, c: torch.Tensor) -> int:
    if xg.dim() < 2 or xg.shape[1] % 4:
        raise ValueError(f"gates must be (B, 4H, ...) with a channel count divisible by 4, got {tuple(xg.shape)}")
    if hg is not None and hg.shape != xg.shape:
        raise ValueError(f"recurrent gates must have the input gates' shape {tuple(xg.shape)}, got {tuple(hg.shape)}")
    hidden = xg.shape[1] // 4
    want = (xg.shape[0], hidden, *xg.shape[2:])
    if tuple(c.shape) != want:
        raise ValueError(f"cell state must be {want} for gates {tuple(xg.shape)}, got {tuple(c.shape)}")
    return hidden


def convlstm_step_reference(
    xg: torch.Tensor, hg: torch.Tensor | None, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference (differentiable): ``(h in xg's dtype, c in c's dtype)``."""
    _check(xg, hg, c)
    work = torch.promote_types(c.dtype, torch.float32)  # fp32 arithmetic (fp64 kept for gradcheck)
    gates = xg.to(work) if hg is None else xg.to(work) + hg.to(work)
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c.to(work) + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c_new)
    return h.to(xg.dtype), c_new.to(c.dtype)


def _convlstm_step_kernel(xg_ptr, hg_ptr, c_ptr, h_out_ptr, c_out_ptr, HID, N,
                          HAS_HG: tl.constexpr, BLOCK: tl.constexpr):
    """One program = one (batch, hidden channel) and BLOCK pixels; its four gate rows read once."""
    row = tl.program_id(0).to(tl.int64)  # b * HID + k
    b, k = row // HID, row % HID
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gate0 = (b * 4 * HID + k) * N + offs  # gate j of channel k lives j * HID rows further
    step = HID * N
    gi = tl.load(xg_ptr + gate0, mask=mask).to(tl.float32)
    gf = tl.load(xg_ptr + gate0 + step, mask=mask).to(tl.float32)
    gg = tl.load(xg_ptr + gate0 + 2 * step, mask=mask).to(tl.float32)
    go = tl.load(xg_ptr + gate0 + 3 * step, mask=mask).to(tl.float32)
    if HAS_HG:
        gi += tl.load(hg_ptr + gate0, mask=mask).to(tl.float32)
        gf += tl.load(hg_ptr + gate0 + step, mask=mask).to(tl.float32)
        gg += tl.load(hg_ptr + gate0 + 2 * step, mask=mask).to(tl.float32)
        go += tl.load(hg_ptr + gate0 + 3 * step, mask=mask).to(tl.float32)
    cell = row * N + offs
    c_old = tl.load(c_ptr + cell, mask=mask).to(tl.float32)
    # sigmoid(x) = 1 / (1 + exp(-x)), tanh(x) = 2·sigmoid(2x) - 1: portable to the interpreter
    tanh_g = 2.0 / (1.0 + tl.exp(-2.0 * gg)) - 1.0
    c_new = c_old / (1.0 + tl.exp(-gf)) + tanh_g / (1.0 + tl.exp(-gi))
    h = (2.0 / (1.0 + tl.exp(-2.0 * c_new)) - 1.0) / (1.0 + tl.exp(-go))
    tl.store(c_out_ptr + cell, c_new.to(c_out_ptr.dtype.element_ty), mask=mask)
    tl.store(h_out_ptr + cell, h.to(h_out_ptr.dtype.element_ty), mask=mask)


_JITTED: dict[bool, object] = {}


def _kernel():
    """JIT on first use per interpreter mode (triton reads TRITON_INTERPRET when decorating)."""
    mode = interpret_mode()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_convlstm_step_kernel)
    return _JITTED[mode]


def convlstm_step_triton(
    xg: torch.Tensor,
    hg: torch.Tensor | None,
    c: torch.Tensor,
    out_h: torch.Tensor | None = None,
    out_c: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version (no autograd). ``out_c`` may be ``c`` itself for an in-place update."""
    hidden = _check(xg, hg, c)
    xg, c = xg.contiguous(), c.contiguous()
    hg = hg.contiguous() if hg is not None else xg  # a dummy pointer when HAS_HG is off
    out_h = torch.empty(c.shape, dtype=xg.dtype, device=c.device) if out_h is None else out_h
    out_c = torch.empty_like(c) if out_c is None else out_c
    for name, out, dtype in (("out_h", out_h, xg.dtype), ("out_c", out_c, c.dtype)):
        if not out.is_contiguous() or out.shape != c.shape or out.dtype != dtype:
            raise ValueError(f"{name} must be contiguous, shaped like the cell state and of dtype {dtype}")
    n = c[0, 0].numel() if c.dim() > 2 else 1
    block = max(16, min(1024, 1 << max(0, (n - 1).bit_length())))
    grid = (c.shape[0] * hidden, -(-n // block))
    if c.numel():
        _kernel()[grid](xg, hg, c, out_h, out_c, hidden, n, HAS_HG=hg is not xg, BLOCK=block)
    return out_h, out_c


def convlstm_step(
    xg: torch.Tensor,
    hg: torch.Tensor | None,
    c: torch.Tensor,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatcher: ``(h, c')``. Falls back to the reference whenever autograd must see the op."""
    tensors = (xg, c) if hg is None else (xg, hg, c)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        if backend == "triton":
            raise RuntimeError("the Triton ConvLSTM step has no backward; use backend='reference'")
        return convlstm_step_reference(xg, hg, c)
    if choose_backend(xg, backend) == "triton":
        return convlstm_step_triton(xg, hg, c)
    return convlstm_step_reference(xg, hg, c)
