"""SENN's natural expansion score for an ``ExpandableCNN``: layer-local Kronecker-factored
curvature kept as running averages over training batches, scores computed on a separate batch.

Notation (spec pfnr_senn.md B1/B3). For a layer with inputs ``a`` (unfolded 3x3 patches of a conv's
input, KFC: every spatial position is a sample; the pooled vector for the projection) and output
gradients ``delta`` (per-sample loss gradients at each position):

* ``A = E[a a^T]``, ``G = E[delta delta^T] / nu^2`` with ``nu^2 = E_n ||dl_n/dlogits_n||^2`` of the same
  batch (SENN's normalisation by the output gradient), both running averages (``CurvatureTracker``);
* on the decision batch: ``M = E[delta a^T]`` (the layer's gradient / T), the residual
  ``r = delta - M A^-1 a`` (what existing inputs cannot explain), candidate features ``f``
  (new channels' outputs as the layer would read them), ``A_f = E[f f^T]``, ``C = E[f r^T]``;
* ``eta_layer = T tr(M A^-1 M^T G^-1)``, the width gain ``d_eta = T tr(C^T A_f^-1 C G^-1)``
  (``T`` positions; KFC's F = T A (x) G), and the depth gain of an identity layer inserted after a
  block: its gradient's natural norm with that block output's own factors.

Both factors get Tikhonov damping relative to their mean diagonal (``damping_a``, ``damping_g``).
Products over samples and positions run in the activations' dtype; every inverse (a solve) in
float64 (the matrices are at most a few hundred wide).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.backbones.expandable_cnn import ConvBlock, ExpandableCNN
from clplat.nn import apply_activation
from clplat.strategies.senn_fast import LayerFit, columns, damped, max_pool2


# --- the formula -----------------------------------------------------------------------------------
def trace_score(C: Tensor, A: Tensor, G: Tensor, damping_a: float, damping_g: float,
                C2: Tensor | None = None) -> Tensor:
    """``tr(C^T A^-1 C G^-1)`` for ``C`` (..., d, o), ``A`` (..., d, d), ``G`` (o, o), damped; with
    ``C2`` the cross form ``tr(C^T A^-1 C2 G^-1)`` (symmetric in C, C2)."""
    C, A, G = C.double(), A.double(), G.double()
    C2 = C if C2 is None else C2.double()
    X = torch.linalg.solve(damped(A, damping_a), C)  # A^-1 C
    Y = torch.linalg.solve(damped(G, damping_g), C2.transpose(-1, -2))  # G^-1 C2^T
    return (X * Y.transpose(-1, -2)).sum((-1, -2))


def patches(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C*9, H*W) unfolded 3x3 patches (channel-major), (N, C) -> (N, C, 1)."""
    return F.unfold(x, 3, padding=1) if x.dim() == 4 else x[:, :, None]


def positions(t: Tensor) -> Tensor:
    """(N, O, H, W) or (N, O) -> (N, O, L)."""
    return t.flatten(2) if t.dim() == 4 else t[:, :, None]


def layer_gradient(a: Tensor, delta: Tensor) -> Tensor:
    """``M = E[delta a^T]`` over samples and positions: (O, D)."""
    n, _, L = a.shape
    return torch.einsum("nol,ndl->od", delta, a) / (n * L)


def halves(n: int, cross: bool) -> tuple[slice, slice]:
    """The two sample sets a score's two gradient factors are estimated on: the same (the plain
    quadratic form) or the two halves of the batch (cross-fitted: no noise floor, see docs/senn.md)."""
    return (slice(0, n // 2), slice(n // 2, n)) if cross else (slice(0, n), slice(0, n))


def layer_score(a: Tensor, delta: Tensor, A: Tensor, G: Tensor, damping_a: float, damping_g: float,
                cross: bool = False, scale: float = 1.0) -> Tensor:
    """``eta = scale tr(M A^-1 M^T G^-1)``: the natural-gradient score of the layer's own weights
    (``scale`` = T for KFC's spatially independent derivatives, 1 for fully correlated ones)."""
    h1, h2 = halves(a.shape[0], cross)
    M1, M2 = layer_gradient(a[h1], delta[h1]), layer_gradient(a[h2], delta[h2])
    return scale * trace_score(M1.T, A, G, damping_a, damping_g, M2.T)


def width_gain(a: Tensor, delta: Tensor, f: Tensor, group: int, A: Tensor, G: Tensor,
               damping_a: float, damping_g: float, cross: bool = False, scale: float = 1.0) -> Tensor:
    """``d_eta' = scale tr(C^T A_f^-1 C G^-1)`` of each candidate: ``f`` (N, P*group, L) holds P
    candidates of ``group`` input rows each (9 per new conv channel, 1 per new projection input)."""
    n, _, L = a.shape
    P = f.shape[1] // group  # the big products (as matmuls) in the inputs' dtype, solves in float64
    Ad = damped(A.double(), damping_a)

    def rows(t: Tensor) -> Tensor:  # (m, P*group, L) -> (P, group, m*L)
        return t.reshape(t.shape[0], P, group, L).permute(1, 2, 0, 3).reshape(P, group, -1)

    def residual_cov(h: slice) -> Tensor:  # C = E[f r^T], r = delta - M A^-1 a, all on samples h
        K = torch.linalg.solve(Ad, layer_gradient(a[h], delta[h]).T.double()).T.to(a.dtype)  # M A^-1
        r = delta[h] - torch.einsum("od,ndl->nol", K, a[h])
        rt = r.permute(0, 2, 1).reshape(-1, r.shape[1])  # (m*L, O)
        return (rows(f[h]).reshape(P * group, -1) @ rt).reshape(P, group, -1) / rt.shape[0]

    h1, h2 = halves(n, cross)
    C1 = residual_cov(h1)
    C2 = residual_cov(h2) if cross else C1
    fr = rows(f)
    Af = torch.bmm(fr, fr.transpose(1, 2)) / (n * L)
    return scale * trace_score(C1, Af, G, damping_a, damping_g, C2)


# --- running factors -------------------------------------------------------------------------------
@dataclass
class DecisionRecord:
    """What one decision pass saw (subset of the batch, per-sample gradients)."""

    x_in: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    y: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    dy: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    dz: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    dproj: Tensor | None = None
    nu2: float = 0.0
    first: Tensor | None = None  # the first block's output, in the graph: the backward stops there


class CurvatureTracker:
    """Forward/backward hooks on an ``ExpandableCNN`` that keep the running factors in buffers of
    ``store`` (so the strategy's ``state_dict`` checkpoints them), named ``out_s_b_{A,G}`` (block
    output), ``conv_s_b_{A,G}`` (conv input patches after a pool / conv output) and ``proj_{A,G}``.

    ``mode``: None (hooks idle: evaluation), ``"ema"`` (update the factors from this batch),
    ``"decision"`` (record the decision batch in ``record``). ``nu2`` is set by the strategy's
    logits hook before the layers' gradient hooks fire (backward runs in reverse)."""

    def __init__(self, net: ExpandableCNN, store: nn.Module, decay: float, max_positions: int) -> None:
        self.net, self.store, self.decay, self.max_positions = net, store, decay, max_positions
        self.mode: str | None = None
        self.nu2 = 1.0
        self.n_batch = self.n_sub = 1
        self.record = DecisionRecord()
        self.handles: list = []
        self.attach()

    # --- hooks ------------------------------------------------------------------------------------
    def attach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for s, b, blk in self.net.blocks():
            self.handles.append(blk.conv.register_forward_hook(self._conv_hook(s, b)))
            self.handles.append(blk.register_forward_hook(self._block_hook(s, b)))
        self.handles.append(self.net.proj.register_forward_hook(self._proj_hook))

    def start(self, mode: str | None, x: Tensor, max_positions: int | None = None) -> None:
        """Before a forward pass on batch ``x``: the same leading images of it feed every factor
        (as many as ``max_positions`` input positions allow; default: the tracker's)."""
        self.mode, self.n_batch = mode, x.shape[0]
        limit = self.max_positions if max_positions is None else max_positions
        self.n_sub = max(2, min(x.shape[0], limit // max(1, x[0, 0].numel())))

    def _subset(self, t: Tensor) -> Tensor:
        return t[: self.n_sub]

    def _grad_hook(self, name: str, key: tuple[int, int] | None, kind: str) -> Callable[[Tensor], None]:
        def hook(g: Tensor) -> None:
            g = self._subset(g.detach()) * self.n_batch  # per-sample loss gradients
            if self.mode == "ema":
                self.update_G(f"{name}_G", g)
            elif self.mode == "decision":
                if kind == "proj":
                    self.record.dproj = g
                else:
                    getattr(self.record, kind)[key] = g
        return hook

    def _conv_hook(self, s: int, b: int) -> Callable:
        def hook(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            if self.mode is None or not out.requires_grad:
                return
            if self.mode == "ema" and s > 0 and b == 0:  # a stage's first conv reads pooled input
                self.update_A(f"conv_{s}_{b}_A", self._subset(inp[0].detach()))
            if self.mode == "decision":
                self.record.x_in[(s, b)] = self._subset(inp[0].detach())
            if (s, b) != (0, 0):
                out.register_hook(self._grad_hook(f"conv_{s}_{b}", (s, b), "dz"))
        return hook

    def _block_hook(self, s: int, b: int) -> Callable:
        def hook(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            if self.mode is None or not out.requires_grad:
                return
            if self.mode == "ema":
                self.update_A(f"out_{s}_{b}_A", self._subset(out.detach()))
            else:
                self.record.y[(s, b)] = self._subset(out.detach())
                if (s, b) == (0, 0):
                    self.record.first = out
            out.register_hook(self._grad_hook(f"out_{s}_{b}", (s, b), "dy"))
        return hook

    def _proj_hook(self, module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if self.mode is None or not out.requires_grad:
            return
        if self.mode == "ema":
            self.update_A("proj_A", self._subset(inp[0].detach()))
        out.register_hook(self._grad_hook("proj", None, "proj"))

    # --- factors ----------------------------------------------------------------------------------
    def update_G(self, name: str, g: Tensor) -> None:
        d = positions(g).transpose(0, 1).reshape(g.shape[1], -1)  # (O, N*L)
        self.update(name, d @ d.T / d.shape[1] / self.nu2)  # E[delta delta^T] / nu^2

    def update_A(self, name: str, x: Tensor) -> None:
        a = columns(x)  # (C*9, N*L): what F.unfold + a transpose gave, in one copy (same layout)
        self.update(name, a @ a.T / a.shape[1])  # E[a a^T] over samples and positions

    def update(self, name: str, value: Tensor) -> None:
        """Running average: the plain mean of the first 1/(1-decay) values, then exponential (so
        the first, often unrepresentative, batch does not dominate)."""
        old, count = getattr(self.store, name, None), getattr(self.store, name + "_n", None)
        if old is None or count is None or old.shape != value.shape:
            self.store.register_buffer(name, value.detach().clone())
            self.store.register_buffer(name + "_n", torch.ones((), device=value.device))
        else:
            count += 1
            w = max(1 - self.decay, 1.0 / float(count))
            old.mul_(1 - w).add_(value.detach(), alpha=w)

    def get(self, name: str) -> Tensor | None:
        return getattr(self.store, name, None)

    def drop(self, *names: str) -> None:
        for n in names:
            for key in (n, n + "_n"):
                if key in self.store._buffers:
                    del self.store._buffers[key]

    def consumer_factors(self, s: int, b: int) -> tuple[Tensor | None, Tensor | None]:
        """(A, G) of the layer that reads block (s, b)'s output."""
        net = self.net
        if b + 1 < len(net.stages[s]):
            return self.get(f"out_{s}_{b}_A"), self.get(f"conv_{s}_{b + 1}_G")
        if s + 1 < len(net.stages):
            return self.get(f"conv_{s + 1}_0_A"), self.get(f"conv_{s + 1}_0_G")
        return self.get("proj_A"), self.get("proj_G")

    # --- growth bookkeeping -----------------------------------------------------------------------
    def on_widen(self, s: int, b: int) -> None:
        """Factors whose size changed restart (they refill during the cooldown)."""
        self.drop(f"out_{s}_{b}_A", f"out_{s}_{b}_G", f"conv_{s}_{b}_G")
        if b + 1 == len(self.net.stages[s]):
            self.drop(f"conv_{s + 1}_0_A" if s + 1 < len(self.net.stages) else "proj_A")
        self.attach()

    def on_insert(self, s: int, b: int) -> None:
        """An identity block now sits at (s, b + 1): later blocks' factors move one place; the new
        block's output equals block (s, b)'s, so its factors start as copies of those."""
        n = len(self.net.stages[s])  # already includes the new block
        for j in range(n - 1, b + 1, -1):
            for kind in ("out", "conv"):
                for f in ("A", "G"):
                    self.copy(f"{kind}_{s}_{j - 1}_{f}", f"{kind}_{s}_{j}_{f}")
                    self.drop(f"{kind}_{s}_{j - 1}_{f}")
        for f in ("A", "G"):
            self.copy(f"out_{s}_{b}_{f}", f"out_{s}_{b + 1}_{f}")
        self.copy(f"out_{s}_{b}_G", f"conv_{s}_{b + 1}_G")
        self.attach()

    def copy(self, src: str, dst: str) -> None:
        """Factor ``dst`` := factor ``src`` (with its count), or absent if ``src`` is."""
        self.drop(dst)
        for suffix in ("", "_n"):
            t = self.get(src + suffix)
            if t is not None:
                self.store.register_buffer(dst + suffix, t.clone())


def consumer_input(net: ExpandableCNN, s: int, b: int, y: Tensor) -> Tensor:
    """Block (s, b)'s output as its consumer reads it (pooled after a stage's last block)."""
    return y if b + 1 < len(net.stages[s]) else net.stage_output(s, y)


def candidate_features(blk: ConvBlock, x: Tensor, V: Tensor) -> Tensor:
    """New channels' block outputs for proposal fan-in weights ``V`` (P, Cin, 3, 3): new BatchNorm
    channels normalise with the batch's statistics (train mode, gamma=1, beta=0); an identity
    block's new channels use PReLU slope 0.25."""
    z = F.conv2d(x, V, padding=1)
    if blk.kind == "base":
        z = F.batch_norm(z, None, None, training=True, eps=blk.bn.eps)
        return blk.act(z)
    return F.prelu(z, torch.full((V.shape[0],), 0.25, dtype=z.dtype, device=z.device))


# --- candidates -------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One possible growth step and its score on the decision batch."""

    kind: str  # "width" | "depth"
    stage: int
    block: int
    gain: float  # d_eta'
    eta: float  # eta of the layer reading the grown place (the reference of the ratio)
    params: int  # parameters it adds
    fan_in: Tensor | None = None  # width: the chosen proposals' input weights
    recorded: float | None = None  # the score an event records, where not ``abs_score`` (secnn)
    nu2: float = 1.0  # E||dl/dlogits||^2 of the decision batch
    noise: float = 0.0  # std of ``gain / nu2`` when nothing is to be gained: sqrt(#new weights) / (samples/2)

    def effective(self, depth_cost: float) -> float:
        return self.gain / (depth_cost if self.kind == "depth" else 1.0)

    def ratio(self, depth_cost: float) -> float:
        """``d_eta'/eta_layer`` (eta floored at 1e-6 nu^2: a cross-fitted eta can be ~0 or negative)."""
        return self.effective(depth_cost) / max(self.eta, 1e-6 * self.nu2)

    def abs_score(self, depth_cost: float) -> float:
        """``d_eta'/||dL/dy||^2``."""
        return self.effective(depth_cost) / self.nu2


def width_params(net: ExpandableCNN, s: int, b: int, k: int) -> int:
    blk, nxt = net.stages[s][b], net.consumer(s, b)
    own = k * blk.conv.in_channels * 9 + (2 * k if blk.kind == "base" else k)
    return own + (nxt.out_channels * k * 9 if isinstance(nxt, nn.Conv2d) else nxt.out_features * k)


def depth_params(net: ExpandableCNN, s: int, b: int) -> int:
    c = net.stages[s][b].conv.out_channels
    return c * c * 9 + c


def consumer_gradient(net: ExpandableCNN, rec: DecisionRecord, s: int, b: int) -> Tensor | None:
    """Per-sample output gradients of the layer reading block (s, b)'s output, (N, O, H, W) or (N, O)."""
    if b + 1 < len(net.stages[s]):
        return rec.dz.get((s, b + 1))
    if s + 1 < len(net.stages):
        return rec.dz.get((s + 1, 0))
    return rec.dproj


@dataclass(frozen=True)
class ScoreSettings:
    damping_a: float = 1e-3
    damping_g: float = 0.1
    cross: bool = True  # cross-fitted halves of the decision batch (unbiased under "nothing to gain")
    spatial: str = "correlated"  # KFC positions: "independent" (x T) or "correlated" (x 1)

    def kw(self, positions_: int) -> dict:
        return {"damping_a": self.damping_a, "damping_g": self.damping_g, "cross": self.cross,
                "scale": float(positions_) if self.spatial == "independent" else 1.0}


def candidate_maps(net: ExpandableCNN, s: int, b: int, x: Tensor, V: Tensor) -> Tensor:
    """``candidate_features`` of fan-ins ``V`` (P, Cin, 3, 3) for block input ``x`` (n, Cin, H, W),
    as the consumer reads them, channel-first: (P, n, h, w), or (P, n) for the projection (the
    same values up to rounding; channel-first, the P maps are never transposed)."""
    blk, (n, _, h, w), P = net.stages[s][b], x.shape, V.shape[0]
    z = (V.reshape(P, -1) @ columns(x)).view(P, n, h, w)
    if blk.kind == "base":  # new BatchNorm channels normalise with the batch (gamma 1, beta 0)
        z = F.batch_norm(z.view(1, P, -1), None, None, training=True, eps=blk.bn.eps).view(P, n, h, w)
        z = apply_activation(z, net.activation, inplace=True)
    else:
        z = F.leaky_relu(z, 0.25, inplace=True)  # = PReLU with slope 0.25
    if b + 1 == len(net.stages[s]):  # as net.stage_output
        z = max_pool2(z) if s + 1 < len(net.stages) else z.mean((2, 3))
    return z


def consumer_fit(net: ExpandableCNN, rec: DecisionRecord, s: int, b: int, A: Tensor, G: Tensor,
                 opts: ScoreSettings) -> LayerFit | None:
    """The layer reading block (s, b)'s output on the decision batch (None where its recorded
    shapes do not match its factors, e.g. a factor not refilled since a growth)."""
    y, delta = rec.y[(s, b)], consumer_gradient(net, rec, s, b)
    if delta is None:
        return None
    if b + 1 < len(net.stages[s]):
        a = y
    elif s + 1 < len(net.stages):  # the next stage's conv input, recorded (= net.pool(y))
        a = rec.x_in.get((s + 1, 0))
        a = net.stage_output(s, y) if a is None else a
    else:  # the projection, a dense layer: design matrices
        a, delta = y.mean((2, 3)).T, delta.T
        return LayerFit(a, delta, y.shape[0], A, G, **opts.kw(1)) if a.shape[0] == A.shape[0] and \
            delta.shape[0] == G.shape[0] else None
    if a.shape[1] * 9 != A.shape[0] or delta.shape[1] != G.shape[0]:
        return None
    n, L = y.shape[0], a.shape[2] * a.shape[3]
    return LayerFit(a, delta, n, A, G, **opts.kw(L))


def score_block(net: ExpandableCNN, tracker: CurvatureTracker, s: int, b: int, k: int, n_proposals: int,
                generator: torch.Generator, opts: ScoreSettings) -> list[Candidate]:
    """Width (``k`` channels: the best of ``n_proposals`` random fan-ins on the first half of the
    batch, scored jointly) and depth (identity block after it) candidates at block (s, b); none
    where a factor is not ready. The arithmetic is ``senn_fast``'s (equal, up to rounding, to the
    ``layer_score`` / ``width_gain`` formulas on the same data: tests/test_senn_score.py)."""
    rec, out = tracker.record, []
    A, G = tracker.consumer_factors(s, b)
    y, x = rec.y.get((s, b)), rec.x_in.get((s, b))
    if A is None or G is None or y is None or x is None:
        return out
    fit = consumer_fit(net, rec, s, b, A, G, opts)
    if fit is None:
        return out
    n, cin = y.shape[0], net.stages[s][b].conv.in_channels
    m = max(1, n // 2 if opts.cross else n)
    V = (torch.randn((n_proposals, cin, 3, 3), generator=generator) * (2.0 / (cin * 9)) ** 0.5).to(x)
    z = candidate_maps(net, s, b, x, V)
    f1 = columns(z[:, : fit.halves[0].stop], channel_first=True)  # all proposals, first half
    group = f1.shape[0] // n_proposals
    best = torch.argsort(fit.each(f1, group), descending=True, stable=True)[:k]
    joint = float(fit.joint(columns(z[best.to(z.device)], channel_first=True)))
    o = fit.d.shape[1] if fit.conv else fit.d.shape[0]
    noise = fit.scale * (group * len(best) * o) ** 0.5 / m
    out.append(Candidate("width", s, b, joint, float(fit.eta), width_params(net, s, b, len(best)),
                         V[best.to(V.device)], nu2=tracker.nu2, noise=noise))
    Ay, Gy, dy = tracker.get(f"out_{s}_{b}_A"), tracker.get(f"out_{s}_{b}_G"), rec.dy.get((s, b))
    if Ay is not None and Gy is not None and dy is not None:
        kwy = opts.kw(y.shape[2] * y.shape[3])
        gain = float(LayerFit(y, dy, n, Ay, Gy, **kwy).eta)  # an identity conv's gradient on y
        noise = kwy["scale"] * (y.shape[1] * 9 * dy.shape[1]) ** 0.5 / m
        out.append(Candidate("depth", s, b, gain, float(fit.eta), depth_params(net, s, b), nu2=tracker.nu2,
                             noise=noise))
    return out
