"""SENN's natural expansion score (issue 10): the Kronecker formula against an explicit Fisher
and explicit inverses on a tiny layer, the hooks' factors against direct computations, and the
decision on constructed cases (width must help / nothing to gain)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clplat.backbones.expandable_cnn import ExpandableCNN
from clplat.strategies.base import StreamContext
from clplat.strategies.senn import Senn, SennConfig
from clplat.strategies.senn_score import damped, layer_score, patches, width_gain


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spd(d: int, g: torch.Generator) -> torch.Tensor:
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    return m @ m.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def tiny_layer(seed: int = 0):
    """A linear layer on per-position inputs a (N, D, L) and candidate inputs f (N, Df, L) with a
    loss whose per-sample output gradient is delta (N, O, L); gradients come from autograd."""
    g = torch.Generator().manual_seed(seed)
    N, D, Df, O, L = 12, 5, 3, 4, 6
    a = torch.randn(N, D, L, generator=g, dtype=torch.float64)
    f = torch.randn(N, Df, L, generator=g, dtype=torch.float64) + 0.5 * a[:, :Df]  # correlated with a
    delta = torch.randn(N, O, L, generator=g, dtype=torch.float64)
    W = torch.randn(O, D, dtype=torch.float64, generator=g).requires_grad_()
    Wf = torch.zeros(O, Df, dtype=torch.float64, requires_grad=True)  # the new fan-out: zero
    out = torch.einsum("od,ndl->nol", W, a) + torch.einsum("od,ndl->nol", Wf, f)
    loss = (out * delta).sum() / N  # mean over samples of sum_l <delta, out>
    gW, gWf = torch.autograd.grad(loss, [W, Wf])
    return a, f, delta, gW, gWf, spd(D, g), spd(O, g), L


def explicit_quadratic(g1: torch.Tensor, g2: torch.Tensor, A: torch.Tensor, G: torch.Tensor, T: float,
                       da: float, dg: float) -> float:
    """vec(g1)^T F^-1 vec(g2) with the explicit Kronecker Fisher F = T (G (x) A) (row-major vec)."""
    Fisher = T * torch.kron(damped(G, dg), damped(A, da))
    return float(g1.flatten() @ torch.linalg.inv(Fisher) @ g2.flatten())


@pytest.mark.parametrize("spatial", [1.0, 6.0])
def test_layer_score_equals_explicit_fisher(spatial: float) -> None:
    a, _, delta, gW, _, A, G, L = tiny_layer()
    got = float(layer_score(a, delta, A, G, 1e-3, 0.1, scale=spatial))
    # g = T E[delta a^T] is the autograd gradient; with scale s the Fisher is T^2/s (A (x) G)
    want = explicit_quadratic(gW, gW, A, G, L * L / spatial, 1e-3, 0.1)
    assert got == pytest.approx(want, rel=1e-9)


def test_width_gain_equals_explicit_fisher() -> None:
    a, f, delta, gW, gWf, A, G, L = tiny_layer()
    got = float(width_gain(a, delta, f, f.shape[1], A, G, 1e-3, 0.1)[0])
    # the new weights' gradient minus what the old weights' gradient explains through A:
    B = torch.einsum("ndl,nfl->df", a, f) / (a.shape[0] * L)  # E[a f^T]
    g_res = gWf - gW @ torch.linalg.inv(damped(A, 1e-3)) @ B
    Af = torch.einsum("ndl,nfl->df", f, f) / (a.shape[0] * L)
    want = explicit_quadratic(g_res, g_res, Af, G, L * L, 1e-3, 0.1)
    assert got == pytest.approx(want, rel=1e-9)
    # P candidates at once = each on its own
    two = torch.cat([f, f.flip(1)], 1)
    both = width_gain(a, delta, two, f.shape[1], A, G, 1e-3, 0.1)
    assert float(both[0]) == pytest.approx(got, rel=1e-9)
    assert float(both[1]) == pytest.approx(float(width_gain(a, delta, f.flip(1), 3, A, G, 1e-3, 0.1)[0]), rel=1e-9)


def test_cross_fitted_gain_is_the_halves_cross_product() -> None:
    a, f, delta, *_, A, G, L = tiny_layer(1)
    n = a.shape[0]
    got = float(width_gain(a, delta, f, f.shape[1], A, G, 1e-3, 0.1, cross=True)[0])
    res = []
    for h in (slice(0, n // 2), slice(n // 2, n)):
        M = torch.einsum("nol,ndl->od", delta[h], a[h]) / (a[h].shape[0] * L)
        r = delta[h] - torch.einsum("od,ndl->nol", M @ torch.linalg.inv(damped(A, 1e-3)), a[h])
        res.append(L * torch.einsum("nfl,nol->of", f[h], r) / (a[h].shape[0] * L))  # gradient of the new weights
    Af = torch.einsum("ndl,nfl->df", f, f) / (n * L)
    assert got == pytest.approx(explicit_quadratic(res[0], res[1], Af, G, L * L, 1e-3, 0.1), rel=1e-9)


def test_gain_is_a_lower_bound_of_the_exact_increase() -> None:
    """With A = E[a a^T] of the same batch, d_eta' <= eta([a; f]) - eta(a) (Schur complement)."""
    a, f, delta, *_, G, L = tiny_layer(2)
    n = a.shape[0]
    A = torch.einsum("ndl,nel->de", a, a) / (n * L)
    af = torch.cat([a, f], 1)
    Afull = torch.einsum("ndl,nel->de", af, af) / (n * L)
    exact = float(layer_score(af, delta, Afull, G, 1e-9, 0.1) - layer_score(a, delta, A, G, 1e-9, 0.1))
    gain = float(width_gain(a, delta, f, f.shape[1], A, G, 1e-9, 0.1)[0])
    assert 0 < gain <= exact * (1 + 1e-9)


def test_running_factors_average_first_then_decay() -> None:
    """decay 0.5: the first two values are averaged plainly, later ones weigh 0.5 (no first-batch bias)."""
    from torch import nn

    from clplat.strategies.senn_score import CurvatureTracker

    tr = CurvatureTracker(ExpandableCNN({"in_channels": 1, "stages": [[2]]}), nn.Module(), 0.5, 64)
    for v in (4.0, 2.0, 8.0):
        tr.update("x", torch.tensor([v]))
    assert float(tr.get("x")) == pytest.approx(0.5 * (4 + 2) / 2 + 0.5 * 8)
    tr.drop("x")
    assert tr.get("x") is None and tr.get("x_n") is None


# --- hooks and decisions on a real network -----------------------------------------------------------
def ctx(g: torch.Generator, classes: int = 4) -> StreamContext:
    return StreamContext(n_exposed=classes, exposed_classes=list(range(classes)), label_index=torch.arange(classes),
                         generator=g, epoch=3)


def strategy(width: int, n: int = 1024, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    net = ExpandableCNN({"in_channels": 1, "stages": [[width], [width]], "num_features": 8})
    st = Senn(SennConfig(decision_batch=n, decision_pool=n, curvature_every=1, warmup=0, cooldown=0, **cfg),
              net, 4, (1, 8, 8))
    x = torch.randn(n, 1, 8, 8)
    teacher = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(7))
    h = F.conv2d(x, teacher, padding=1).relu().mean((2, 3))  # 4 conv features: a 1-wide net cannot see them
    y = (h - h.mean(0)).argmax(1)
    st.pool_x, st.pool_y = x, y
    return st, x, y


def test_tracker_factors_equal_direct_computation() -> None:
    st, x, y = strategy(2, n=64)
    xb, yb = x[:32], y[:32]
    st.training_loss(xb, yb, ctx(torch.Generator())).backward()  # first EMA step: the factors are this batch's
    st.tracker.mode = None
    net = st.backbone
    feats = {}
    h = xb
    for s, stage in enumerate(net.stages):
        for b, blk in enumerate(stage):
            h = blk(h)
            feats[(s, b)] = h
        h = net.stage_output(s, h)
    for t in feats.values():
        t.retain_grad()
    logits = st.head(net.proj_act(net.proj(h)))
    logits.retain_grad()
    ref = F.cross_entropy(logits, yb)
    ref.backward()
    nu2 = float((logits.grad * 32).pow(2).sum(1).mean())
    for (s, b), t in feats.items():
        a = patches(t.detach())
        A = torch.einsum("ndl,nel->de", a, a) / (a.shape[0] * a.shape[2])
        d = (t.grad * 32).flatten(2)
        G = torch.einsum("nol,npl->op", d, d) / (d.shape[0] * d.shape[2]) / nu2
        assert torch.allclose(getattr(st.curv, f"out_{s}_{b}_A"), A, rtol=1e-5, atol=1e-7)
        assert torch.allclose(getattr(st.curv, f"out_{s}_{b}_G"), G, rtol=1e-4, atol=1e-9)


def train(st: Senn, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> None:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(st.parameters(), lr=1e-2)
    for _ in range(steps):
        i = torch.randperm(len(y), generator=g)[:128]
        loss = st.training_loss(x[i], y[i], ctx(g))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("thresholds", [
    {"abs_thresh": 5e-3, "noise_z": 0.0},  # the absolute criterion alone
    {"abs_thresh": 0.0, "noise_z": 2.0},  # the significance test alone
])
def test_width_that_must_help_grows_and_a_saturated_net_does_not(thresholds) -> None:
    """A 1-channel net cannot represent a 6-filter teacher: the score asks for width. The same net
    scored on labels drawn from its own predictive distribution has nothing to gain from any new
    feature (E[dl/dlogits | x] = 0): no growth, although the per-sample gradients are as large.

    The cross-fitted score is unbiased there, but its noise on 2 x 1024 samples is ~1e-3 (in
    ||dL/dy||^2 units), so the test's absolute threshold is 5e-3 instead of SENN's 2.5e-3 (seeds 0-4
    of this construction: help 0.008-0.10, nothing to gain <= 0.0031); or, with no absolute
    threshold, the significance test (2 null standard deviations, sqrt(32)/1024 each) decides."""
    st, x, y = strategy(1, n=2048, **thresholds)
    train(st, x, y)
    chosen = st._decide(ctx(torch.Generator().manual_seed(1)))
    assert [c.kind for c in chosen] == ["width"]
    assert chosen[0].abs_score(20) > 5e-3 and chosen[0].ratio(20) > 0.03

    with torch.no_grad():
        st.train()
        p = st.logits(x).softmax(1)
    st.pool_y = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(2))[:, 0]
    assert st._decide(ctx(torch.Generator().manual_seed(1))) == []
