"""Event histogram: splat N events into a dense ``(C, H, W)`` float32 grid with atomic adds.

Each event i has a float channel ``c_i``, float coordinates ``y_i, x_i`` and a value ``v_i``. With
``interp_c`` / ``interp_xy`` off, the index along that axis is the truncated coordinate (integer
pixel, time bin); on, the value is shared linearly between the two neighbours,
``(1-|c-c0|)·(1-|y-y0|)·(1-|x-x0|)`` for the 2/4/8 corners (spec streaming.md §5: Ponghiran's
bilinear counts, the voxel grid's temporal interpolation). Corners outside the grid are dropped.
This one primitive builds counts, bilinear counts, per-bin stacks and voxel grids.

``event_hist`` dispatches (``_backend.choose_backend``): the Triton ``tl.atomic_add`` kernel on
CUDA, the vectorised PyTorch scatter (``index_put_(accumulate=True)``) elsewhere. Not
differentiable (inputs are data, not parameters).
"""

from __future__ import annotations

import torch

from clplat.kernels._backend import choose_backend, interpret_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = None

__all__ = ["event_hist", "event_hist_reference", "event_hist_triton"]


def _check(c: torch.Tensor, y: torch.Tensor, x: torch.Tensor, v: torch.Tensor, shape: tuple[int, int, int]) -> None:
    n = c.shape[0]
    if not (c.dim() == y.dim() == x.dim() == v.dim() == 1) or not (y.shape[0] == x.shape[0] == v.shape[0] == n):
        raise ValueError("c, y, x, v must be 1-D tensors of one length")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")


def event_hist_reference(
    c: torch.Tensor, y: torch.Tensor, x: torch.Tensor, v: torch.Tensor,
    shape: tuple[int, int, int], interp_c: bool = False, interp_xy: bool = False,
) -> torch.Tensor:
    """PyTorch reference: one ``index_put_(accumulate=True)`` over all corners (fp32)."""
    _check(c, y, x, v, shape)
    C, H, W = shape
    out = torch.zeros(C * H * W, dtype=torch.float32, device=c.device)
    cf, yf, xf, vf = (t.to(torch.float32) for t in (c, y, x, v))
    c0, y0, x0 = (torch.floor(t) if interp else torch.trunc(t) for t, interp in
                  ((cf, interp_c), (yf, interp_xy), (xf, interp_xy)))
    fc, fy, fx = (cf - c0) if interp_c else None, (yf - y0) if interp_xy else None, (xf - x0) if interp_xy else None
    idx_parts, val_parts = [], []
    for dc in (0, 1) if interp_c else (0,):
        for dy in (0, 1) if interp_xy else (0,):
            for dx in (0, 1) if interp_xy else (0,):
                w = vf
                if interp_c:
                    w = w * (fc if dc else 1 - fc)
                if interp_xy:
                    w = w * (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
                ci, yi, xi = (c0 + dc).long(), (y0 + dy).long(), (x0 + dx).long()
                ok = (ci >= 0) & (ci < C) & (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W) & (w != 0)
                idx_parts.append(((ci * H + yi) * W + xi)[ok])
                val_parts.append(w[ok])
    if idx_parts:
        out.index_put_((torch.cat(idx_parts),), torch.cat(val_parts), accumulate=True)
    return out.view(C, H, W)


def _event_hist_kernel(c_ptr, y_ptr, x_ptr, v_ptr, out_ptr, N, C, H, W,
                       INTERP_C: tl.constexpr, INTERP_XY: tl.constexpr, BLOCK: tl.constexpr):
    """One program = BLOCK events; each adds its 1/2/4/8 weighted corners with tl.atomic_add."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    cf = tl.load(c_ptr + offs, mask=m, other=0.0).to(tl.float32)
    yf = tl.load(y_ptr + offs, mask=m, other=0.0).to(tl.float32)
    xf = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if INTERP_C:
        c0 = tl.floor(cf)
    else:
        c0 = tl.where(cf < 0, -tl.floor(-cf), tl.floor(cf))
    if INTERP_XY:
        y0 = tl.floor(yf)
        x0 = tl.floor(xf)
    else:
        y0 = tl.where(yf < 0, -tl.floor(-yf), tl.floor(yf))
        x0 = tl.where(xf < 0, -tl.floor(-xf), tl.floor(xf))
    fc = cf - c0
    fy = yf - y0
    fx = xf - x0
    ci0 = c0.to(tl.int64)
    yi0 = y0.to(tl.int64)
    xi0 = x0.to(tl.int64)
    for dc in tl.static_range(2 if INTERP_C else 1):
        wc = (fc if dc == 1 else 1.0 - fc) if INTERP_C else 1.0
        ci = ci0 + dc
        for dy in tl.static_range(2 if INTERP_XY else 1):
            wy = (fy if dy == 1 else 1.0 - fy) if INTERP_XY else 1.0
            yi = yi0 + dy
            for dx in tl.static_range(2 if INTERP_XY else 1):
                wx = (fx if dx == 1 else 1.0 - fx) if INTERP_XY else 1.0
                xi = xi0 + dx
                w = v * wc * wy * wx
                ok = m & (ci >= 0) & (ci < C) & (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W) & (w != 0.0)
                tl.atomic_add(out_ptr + (ci * H + yi) * W + xi, w, mask=ok)


_JITTED: dict[bool, object] = {}


def _kernel():
    """JIT on first use per interpreter mode (triton reads TRITON_INTERPRET when decorating)."""
    mode = interpret_mode()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_event_hist_kernel)
    return _JITTED[mode]


def event_hist_triton(
    c: torch.Tensor, y: torch.Tensor, x: torch.Tensor, v: torch.Tensor,
    shape: tuple[int, int, int], interp_c: bool = False, interp_xy: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version. ``out`` (contiguous fp32 ``(C, H, W)``) is accumulated into when given, so a
    preallocated frame can be reused; zero it first for a fresh histogram."""
    _check(c, y, x, v, shape)
    C, H, W = shape
    if out is None:
        out = torch.zeros(shape, dtype=torch.float32, device=c.device)
    elif tuple(out.shape) != tuple(shape) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("out must be a contiguous float32 tensor of the given shape")
    n = c.shape[0]
    if n:
        block = 256
        c, y, x, v = (t.contiguous() for t in (c, y, x, v))
        _kernel()[(triton.cdiv(n, block),)](c, y, x, v, out, n, C, H, W,
                                            INTERP_C=interp_c, INTERP_XY=interp_xy, BLOCK=block)
    return out


def event_hist(
    c: torch.Tensor, y: torch.Tensor, x: torch.Tensor, v: torch.Tensor,
    shape: tuple[int, int, int], interp_c: bool = False, interp_xy: bool = False,
    backend: str | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatcher: Triton on CUDA (or when forced under TRITON_INTERPRET=1), the reference elsewhere.
    ``out`` (fp32, contiguous, ``shape``) is accumulated into and returned, so a preallocated
    frame (zeroed by the caller) can be reused, e.g. inside a CUDA-graph step."""
    if choose_backend(c, backend) == "triton":
        return event_hist_triton(c, y, x, v, shape, interp_c, interp_xy, out=out)
    result = event_hist_reference(c, y, x, v, shape, interp_c, interp_xy)
    return result if out is None else out.add_(result)
