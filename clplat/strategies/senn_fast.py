"""The arithmetic of one expansion decision, done once per layer and shared by all its proposals.

Computes the same quantities as ``senn_score``'s formulas (``layer_score``, ``width_gain``; those
are the readable reference, tested against an explicit Fisher), laid out so that a decision costs a
few matrix products per layer:

* a conv layer's gradient ``M = E[delta a^T]`` over unfolded patches is its weight gradient, and
  ``M A^-1 a`` a convolution: neither unfolds its input;
* candidate inputs are *design matrices*, one column per (sample, position), samples major: a half
  of the batch is a column range and every sum over samples and positions is one matrix product
  (no permute-copies); only the first half is unfolded for all proposals, the whole batch for
  the chosen ones;
* the damped factors ``A`` and ``G`` are LU-factored once per layer (float64), not once per solve;
* the layer's gradient ``M`` and the residual ``r = delta - M A^-1 a`` on each half are computed
  once and serve the layer's ``eta``, every proposal's score and the joint score of the chosen ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight


def damped(M: Tensor, rel: float) -> Tensor:
    """``M + rel * mean(diag M) * I`` (batched)."""
    d = M.shape[-1]
    lam = (rel * M.diagonal(dim1=-2, dim2=-1).mean(-1)).clamp_min(1e-30)
    return M + lam[..., None, None] * torch.eye(d, dtype=M.dtype, device=M.device)


def columns(t: Tensor, channel_first: bool = False) -> Tensor:
    """Unfolded 3x3 patches (zero padding 1) as a design matrix (C*9, n*H*W): rows channel-major as
    ``F.unfold``'s, columns sample-major. ``t`` is (n, C, H, W), or (C, n, H, W) with
    ``channel_first``; a 2-D (n, C) (or (C, n)) input is its own design matrix (C, n).
    (Nine strided copies into one buffer: faster than ``F.unfold``'s per-image im2col.)"""
    if t.dim() == 2:
        return t if channel_first else t.T
    p = F.pad(t, (1, 1, 1, 1))
    if not channel_first:
        p = p.transpose(0, 1)
    c, n, h, w = p.shape[0], p.shape[1], p.shape[2] - 2, p.shape[3] - 2
    out = t.new_empty(c, 9, n, h, w)
    for i in range(3):
        for j in range(3):
            out[:, 3 * i + j].copy_(p[..., i:i + h, j:j + w])
    return out.view(c * 9, n * h * w)


def max_pool2(t: Tensor) -> Tensor:
    """``nn.MaxPool2d(2, ceil_mode=True)`` (the same values), as the maximum of four strided views:
    several times faster on CPU than the pooling kernel, which also computes indices."""
    h, w = t.shape[-2:]
    if h % 2 or w % 2:
        t = F.pad(t, (0, w % 2, 0, h % 2), value=float("-inf"))
    return torch.maximum(torch.maximum(t[..., 0::2, 0::2], t[..., 0::2, 1::2]),
                         torch.maximum(t[..., 1::2, 0::2], t[..., 1::2, 1::2]))


def grad_columns(g: Tensor) -> Tensor:
    """Per-sample output gradients (n, O, H, W) or (n, O) as (O, n*H*W) / (O, n)."""
    return g.T if g.dim() == 2 else g.transpose(0, 1).reshape(g.shape[1], -1)


class Solver:
    """A damped factor, LU-factored once in float64 (the same results as ``torch.linalg.solve``)."""

    def __init__(self, M: Tensor, rel: float) -> None:
        self.lu, self.piv = torch.linalg.lu_factor(damped(M.double(), rel))

    def __call__(self, B: Tensor) -> Tensor:
        return torch.linalg.lu_solve(self.lu, self.piv, B.double())


class LayerFit:
    """One layer on the decision batch, ``n`` samples, with its running factors ``A`` (D, D) and
    ``G`` (O, O). A 3x3 conv (padding 1) is given by its input maps ``a`` (n, C, H, W) and output
    gradients ``d`` (n, O, H, W) (D = C*9: its gradient is the conv's weight gradient and
    ``M A^-1 a`` a convolution, so the patches are never unfolded); a dense layer by design
    matrices ``a`` (D, n*L) and ``d`` (O, n*L) (L positions per sample; 1 for the projection).

    ``eta`` is ``scale tr(M1 A^-1 M2^T G^-1)`` (``M_h = E_h[delta a^T]``; ``M1 = M2`` over the whole
    batch unless ``cross``: then the two halves); ``each``/``joint`` score candidate inputs given as
    design matrices whose columns are (sample, position) pairs, samples major."""

    def __init__(self, a: Tensor, d: Tensor, n: int, A: Tensor, G: Tensor, damping_a: float,
                 damping_g: float, cross: bool = False, scale: float = 1.0) -> None:
        self.a, self.d, self.n, self.scale, self.damping_a = a, d, n, scale, damping_a
        self.conv = a.dim() == 4
        self.L = a.shape[2] * a.shape[3] if self.conv else a.shape[1] // n
        self.halves = [slice(0, n // 2), slice(n // 2, n)] if cross else [slice(0, n)]
        self.As, self.Gs = Solver(A, damping_a), Solver(G, damping_g)
        self.M = [self._gradient(h) for h in self.halves]  # (O, D) each
        self._r: list[Tensor] | None = None
        X = self.As(self.M[0].T)  # A^-1 M1^T
        Y = self.Gs(self.M[-1])  # G^-1 M2
        self.eta = scale * (X * Y.T).sum()

    def count(self, h: slice) -> int:
        """Columns (samples x positions) of the half ``h``."""
        return (h.stop - h.start) * self.L

    def columns_of(self, h: slice) -> slice:
        """The design-matrix columns of the samples ``h``."""
        return slice(h.start * self.L, h.stop * self.L)

    def _gradient(self, h: slice) -> Tensor:
        if self.conv:
            w = (self.d.shape[1], self.a.shape[1], 3, 3)
            return conv2d_weight(self.a[h], w, self.d[h], padding=1).flatten(1) / self.count(h)
        c = self.columns_of(h)
        return self.d[:, c] @ self.a[:, c].T / self.count(h)

    def residuals(self) -> list[Tensor]:
        """``r_h = delta - M_h A^-1 a`` on each half, (O, columns): what the existing inputs cannot
        explain."""
        if self._r is None:
            self._r = []
            for M, h in zip(self.M, self.halves, strict=True):
                K = self.As(M.T).T.to(self.a.dtype)  # M A^-1
                if self.conv:
                    r = self.d[h] - F.conv2d(self.a[h], K.view(K.shape[0], -1, 3, 3), padding=1)
                    self._r.append(grad_columns(r))
                else:
                    c = self.columns_of(h)
                    self._r.append(self.d[:, c] - K @ self.a[:, c])
        return self._r

    def _trace(self, C1: Tensor, Af: Tensor, C2: Tensor) -> Tensor:
        """``scale tr(C1^T Af^-1 C2 G^-1)`` (batched over candidates)."""
        X = torch.linalg.solve(damped(Af.double(), self.damping_a), C1.double())
        Y = torch.linalg.lu_solve(self.Gs.lu, self.Gs.piv, C2.double().transpose(-1, -2))
        return self.scale * (X * Y.transpose(-1, -2)).sum((-1, -2))

    def each(self, f1: Tensor, group: int) -> Tensor:
        """Each candidate's own score on the first half (plain quadratic form, its own ``A_f``):
        ``f1`` (P*group, first half's columns) holds P candidates of ``group`` input rows each."""
        k, r = self.count(self.halves[0]), self.residuals()[0]
        P = f1.shape[0] // group
        C = (f1 @ r.T / k).reshape(P, group, -1)
        fr = f1.view(P, group, -1)
        return self._trace(C, torch.bmm(fr, fr.transpose(1, 2)) / k, C)

    def joint(self, f: Tensor) -> Tensor:
        """The score of all rows of ``f`` (rows, all columns) as one candidate: ``A_f`` on the
        whole batch, ``C`` on each half (cross-fitted if the fit is)."""
        C = []
        for h, r in zip(self.halves, self.residuals(), strict=True):
            C.append(f[:, self.columns_of(h)] @ r.T / self.count(h))
        Af = f @ f.T / (self.n * self.L)
        return self._trace(C[0][None], Af[None], C[-1][None])[0]
