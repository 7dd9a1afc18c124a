"""ConvS5 (parallel scan vs recurrence, discretisation, gradients) and ConvLSTM (step vs sequence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clplat.streaming import ConvLSTM, ConvS5
from clplat.streaming.ssm import chunked_lti_scan, hippo_legs_eigens, linear_scan, lti_powers, scan_combine

SCANS = ["chunked", "assoc"]


def _layer(seed: int = 0, channels: int = 3, state: int = 8, k: int = 3, dtype=torch.float32, **kw) -> ConvS5:
    torch.manual_seed(seed)
    return ConvS5(channels, state, kernel_size=k, **kw).to(dtype)


def _steps(module, clip, state=None):
    outs = []
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = module.step(clip[:, :, t], state)
            outs.append(y)
    return torch.stack(outs, 2), state


# ---- scan equals step -------------------------------------------------------------------------
@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("t", [1, 2, 3, 7, 64, 93, pytest.param(1000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("with_state", [False, True])
def test_scan_equals_step(t, with_state, scan):
    layer = _layer(t, scan=scan)
    g = torch.Generator().manual_seed(t)
    clip = torch.randn(1, 3, t, 3, 4, generator=g)
    state = (torch.randn(1, 8, 3, 4, generator=g),) if with_state else None
    with torch.no_grad():
        y_scan, final_scan = layer.forward_scan(clip, state)
    y_step, final_step = _steps(layer, clip, state)
    torch.testing.assert_close(y_scan, y_step, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final_scan[0], final_step[0], atol=1e-5, rtol=1e-5)
    assert y_scan.shape == clip.shape
    if with_state:  # the initial state matters (a scan that ignored it would still match zero-state steps)
        assert not torch.allclose(y_scan[:, :, 0], layer(clip)[:, :, 0], atol=1e-3)


def test_observe_with_scan_then_imagine_with_steps():
    """The generation pattern: scan over the context, continue the returned state one frame at a time."""
    layer = _layer(1)
    clip = torch.randn(1, 3, 40, 5, 5)
    with torch.no_grad():
        full = layer(clip)
        head, state = layer.forward_scan(clip[:, :, :25])
    tail, _ = _steps(layer, clip[:, :, 25:], state)
    torch.testing.assert_close(torch.cat([head, tail], 2), full, atol=1e-5, rtol=1e-5)


def test_long_memory_is_kept():
    """An impulse at frame 0 still reaches frame 999 (slow states; nothing is truncated)."""
    layer = _layer(2)
    clip = torch.zeros(1, 3, 1000, 2, 2)
    clip[:, :, 0] = 1.0
    with torch.no_grad():
        y = layer(clip)
    assert y[:, :, -1].abs().max() > 1e-4


# ---- the scan itself --------------------------------------------------------------------------
def _random_pair(shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_combine_is_associative():
    g = torch.Generator().manual_seed(0)
    x, y, z = ((_random_pair((5, 3), g), _random_pair((5, 3), g)) for _ in range(3))
    left = scan_combine(scan_combine(x, y), z)
    right = scan_combine(x, scan_combine(y, z))
    for p, q in zip(left, right, strict=True):
        torch.testing.assert_close(p[0], q[0])
        torch.testing.assert_close(p[1], q[1])


def test_combine_is_the_recurrence():
    """Composing two steps of x -> a·x + b (complex) by hand: ((a2 a1), a2 b1 + b2)."""
    a1, b1, a2, b2 = 0.5 + 0.25j, 1 - 2j, -0.3 + 0.7j, 0.1 + 0.2j
    (ar, ai), (br, bi) = scan_combine(
        ((torch.tensor(a1.real), torch.tensor(a1.imag)), (torch.tensor(b1.real), torch.tensor(b1.imag))),
        ((torch.tensor(a2.real), torch.tensor(a2.imag)), (torch.tensor(b2.real), torch.tensor(b2.imag))),
    )
    assert complex(ar, ai) == pytest.approx(a2 * a1)
    assert complex(br, bi) == pytest.approx(a2 * b1 + b2)


@pytest.mark.parametrize("t", [1, 2, 5, 8, 33])
def test_linear_scan_matches_a_loop_with_time_varying_a(t):
    g = torch.Generator().manual_seed(t)
    a, b = _random_pair((t, 4), g), _random_pair((t, 4), g)
    a = (0.7 * a[0], 0.7 * a[1])
    _, (xr, xi) = linear_scan(a, b)
    ca, cb = torch.complex(*a), torch.complex(*b)
    x, ref = torch.zeros(4, dtype=torch.complex128), []
    for k in range(t):
        x = ca[k] * x + cb[k]
        ref.append(x)
    ref = torch.stack(ref)
    torch.testing.assert_close(torch.complex(xr, xi), ref)


def _complex_loop(a, v, x0):
    """Reference for ``chunked_lti_scan``: the recurrence one step at a time in complex128."""
    ca, cv = torch.complex(*a)[:, None], torch.complex(v[:, :, 0], v[:, :, 1])
    x = torch.zeros_like(cv[:, 0]) if x0 is None else torch.complex(x0[:, 0], x0[:, 1])
    out = []
    for k in range(v.shape[1]):
        x = ca * x + cv[:, k]
        out.append(x)
    out = torch.stack(out, 1)
    return torch.stack([out.real, out.imag], 2)


@pytest.mark.parametrize("t", [1, 3, 4, 5, 16, 17, 37, 70])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_scan_matches_a_loop(t, with_state):
    """Chunks of 4: T not a multiple of L (padding), T > L² (two levels of chunk-end recursion)."""
    g = torch.Generator().manual_seed(t)
    radius = torch.rand(3, generator=g, dtype=torch.float64) * 0.5 + 0.49  # |a| in [0.49, 0.99]
    angle = torch.rand(3, generator=g, dtype=torch.float64) * 6.0 - 3.0
    a = (radius * angle.cos(), radius * angle.sin())
    v = torch.randn(3, t, 2, 5, generator=g, dtype=torch.float64)
    x0 = torch.randn(3, 2, 5, generator=g, dtype=torch.float64) if with_state else None
    got = chunked_lti_scan(a, v, x0, chunk=4)
    assert got.shape == v.shape
    torch.testing.assert_close(got, _complex_loop(a, v, x0), atol=1e-12, rtol=1e-12)
    _, (xr, xi) = linear_scan((a[0][None, :, None].expand(t, 3, 1), a[1][None, :, None].expand(t, 3, 1)),
                              (v[:, :, 0].transpose(0, 1), v[:, :, 1].transpose(0, 1)))
    if x0 is None:  # the associative scan agrees too
        torch.testing.assert_close(got, torch.stack([xr, xi], 2).transpose(0, 1), atol=1e-12, rtol=1e-12)


def test_lti_powers():
    a = (torch.tensor([0.9, -0.3], dtype=torch.float64), torch.tensor([0.2, 0.8], dtype=torch.float64))
    p_re, p_im = lti_powers(a, 11)
    want = torch.complex(*a)[:, None] ** torch.arange(11)
    torch.testing.assert_close(torch.complex(p_re, p_im), want)


def test_chunked_scan_gradcheck_float64():
    """Gradients reach ``a`` (through the Toeplitz and carry matrices), the inputs and ``x0``."""
    g = torch.Generator().manual_seed(11)
    a_re = (0.8 * torch.rand(2, generator=g, dtype=torch.float64)).requires_grad_()
    a_im = (0.4 * torch.rand(2, generator=g, dtype=torch.float64)).requires_grad_()
    v = torch.randn(2, 7, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda ar, ai, u, s: chunked_lti_scan((ar, ai), u, s, chunk=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a_re, a_im, v, x0), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [2, 5, 16])
def test_chunked_and_assoc_layers_agree(chunk):
    """The two solvers share the parameters: outputs and final states agree, initial state given."""
    layer = _layer(12, scan="assoc")
    g = torch.Generator().manual_seed(12)
    clip, state = torch.randn(2, 3, 41, 4, 3, generator=g), (torch.randn(2, 8, 4, 3, generator=g),)
    with torch.no_grad():
        y_a, (last_a,) = layer.forward_scan(clip, state)
        layer.scan, layer.scan_chunk = "chunked", chunk
        y_c, (last_c,) = layer.forward_scan(clip, state)
    torch.testing.assert_close(y_c, y_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last_c, last_a, atol=1e-5, rtol=1e-5)


# ---- initialisation and discretisation --------------------------------------------------------
def test_hippo_legs_eigens():
    n = 8
    lam, v = hippo_legs_eigens(n)
    q = np.sqrt(1.0 + 2.0 * np.arange(n))
    legs = -(np.tril(q[:, None] * q[None, :]) - np.diag(np.arange(n)))
    p = np.sqrt(np.arange(n) + 0.5)
    normal = legs + np.outer(p, p)
    full = np.linalg.eigvals(normal)
    np.testing.assert_allclose(lam, full[np.argsort(full.imag)], atol=1e-9)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-12)
    np.testing.assert_allclose(v.conj().T @ v, np.eye(n), atol=1e-9)
    np.testing.assert_allclose(normal @ v, v * lam[None, :], atol=1e-9)
    half = lam[: n // 2]  # the kept half: with its conjugates, the whole spectrum
    both = np.concatenate([half, half.conj()])
    np.testing.assert_allclose(both[np.argsort(both.imag)], lam, atol=1e-9)
    layer = ConvS5(2, n)
    np.testing.assert_allclose(layer.lambda_re.detach().numpy(), half.real, atol=1e-6)
    np.testing.assert_allclose(layer.lambda_im.detach().numpy(), half.imag, atol=1e-5)


def test_real_part_of_lambda_is_clipped():
    layer = _layer()
    with torch.no_grad():
        layer.lambda_re.fill_(0.3)
        a_re, a_im, *_ = layer.discretize()
    assert (layer.continuous_lambda()[0] <= -1e-4).all()
    assert (a_re**2 + a_im**2 < 1).all()


def test_zoh_matches_matrix_exponential():
    """Per state: exp of the augmented real system [[ΛΔ, Δ·I], [0, 0]] (Λ as a 2x2 rotation-scaling
    block) holds Λ̄ top-left and the input matrix (Λ̄ - 1)/Λ top-right (Van Loan)."""
    layer = _layer(3, channels=2, state=6, dtype=torch.float64)
    with torch.no_grad():
        layer.log_step.copy_(torch.tensor([-6.0, -3.0, -0.5]))
        a_re, a_im, w_in, _, _ = layer.discretize()
        lre, lim = layer.continuous_lambda()
        dt = layer.log_step.exp()
    s = 3
    m = torch.zeros(s, 4, 4, dtype=torch.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = lre, -lim, lim, lre
    m[:, :2, :2] *= dt.view(-1, 1, 1)
    m[:, 0, 2] = m[:, 1, 3] = dt
    e = torch.linalg.matrix_exp(m)
    torch.testing.assert_close(a_re, e[:, 0, 0])
    torch.testing.assert_close(a_im, e[:, 1, 0])
    gmat = e[:, :2, 2:]  # acts on (B̃_re, B̃_im) per state
    b_re, b_im = layer.b_re.detach(), layer.b_im.detach()
    want_re = gmat[:, 0, 0].view(-1, 1, 1, 1) * b_re + gmat[:, 0, 1].view(-1, 1, 1, 1) * b_im
    want_im = gmat[:, 1, 0].view(-1, 1, 1, 1) * b_re + gmat[:, 1, 1].view(-1, 1, 1, 1) * b_im
    torch.testing.assert_close(w_in[:s], want_re)
    torch.testing.assert_close(w_in[s : 2 * s], want_im)
    torch.testing.assert_close(w_in[2 * s :], layer.d.detach())


def test_step_cache_follows_weight_updates():
    layer = _layer(4)
    frame = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        first = layer.discretize()
        assert layer.discretize() is first  # cached while the weights do not change
        y1, _ = layer.step(frame)
        layer.log_step.add_(0.5)  # an optimiser step bumps the version
        assert layer.discretize() is not first
        y2, _ = layer.step(frame)
        fresh = layer._discretize()
    torch.testing.assert_close(layer.discretize()[2], fresh[2])
    assert not torch.allclose(y1, y2)


# ---- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", SCANS)
def test_scan_gradcheck_float64(scan):
    layer = _layer(5, channels=2, state=4, dtype=torch.float64, scan=scan, scan_chunk=2)
    g = torch.Generator().manual_seed(5)
    clip = torch.randn(1, 2, 5, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    params = [layer.log_step, layer.lambda_re, layer.lambda_im, layer.b_im]

    def f(u, s, *p):
        y, (last,) = layer.forward_scan(u, (s,))
        return y, last

    assert torch.autograd.gradcheck(f, (clip, x0, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("scan", SCANS)
def test_scan_gradient_equals_sequential_loop_gradient(scan):
    layer = _layer(6, channels=2, state=6, dtype=torch.float64, scan=scan, scan_chunk=4)
    g = torch.Generator().manual_seed(6)
    clip = torch.randn(2, 2, 13, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 13, 3, 3, generator=g, dtype=torch.float64)

    def grads(run):
        layer.zero_grad()
        clip.grad = None
        (run() * weight).sum().backward()
        return [clip.grad.clone()] + [p.grad.clone() for p in layer.parameters()]

    scan = grads(lambda: layer(clip))
    loop = grads(lambda: torch.stack([y for y in _grad_steps(layer, clip)], 2))
    for a, b in zip(scan, loop, strict=True):
        torch.testing.assert_close(a, b)


def _grad_steps(layer, clip):
    state = None
    for t in range(clip.shape[2]):
        y, state = layer.step(clip[:, :, t], state)
        yield y


# ---- ConvLSTM ---------------------------------------------------------------------------------
@pytest.mark.parametrize("with_state", [False, True])
def test_convlstm_step_equals_sequence(with_state):
    torch.manual_seed(7)
    cell = ConvLSTM(3, 5, kernel_size=3)
    clip = torch.randn(2, 3, 9, 4, 5)
    state = (torch.randn(2, 5, 4, 5), torch.randn(2, 5, 4, 5)) if with_state else None
    with torch.no_grad():
        y_seq, (h, c) = cell.forward_sequence(clip, state)
    y_step, (h2, c2) = _steps(cell, clip, state)
    assert y_seq.shape == (2, 5, 9, 4, 5)
    torch.testing.assert_close(y_seq, y_step, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c, c2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h, y_seq[:, :, -1])


def test_convlstm_with_1x1_kernel_is_an_lstm():
    """Independent reference: on 1x1 frames with k=1, a ConvLSTM is nn.LSTM with the same weights."""
    torch.manual_seed(8)
    cell = ConvLSTM(4, 6, kernel_size=1)
    lstm = torch.nn.LSTM(4, 6, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(cell.input_conv.weight.flatten(1))
        lstm.bias_ih_l0.copy_(cell.input_conv.bias)
        lstm.weight_hh_l0.copy_(cell.hidden_conv.weight.flatten(1))
        lstm.bias_hh_l0.zero_()
    seq = torch.randn(3, 11, 4)
    with torch.no_grad():
        want, _ = lstm(seq)
        got = cell(seq.transpose(1, 2)[..., None, None])
    torch.testing.assert_close(got[..., 0, 0].transpose(1, 2), want, atol=1e-6, rtol=1e-5)


# ---- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: ConvS5(3, 8), lambda: ConvLSTM(3, 8)])
def test_bad_input_is_named(make):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name} expects a frame .*C=3.*\(1, 4, 5, 5\)"):
        layer.step(torch.zeros(1, 4, 5, 5))
    with pytest.raises(ValueError, match=rf"{name} expects a clip"):
        layer(torch.zeros(1, 3, 5, 5))
    bad = torch.zeros(1, 3, 5, 5)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        layer.step(bad)
    clip = torch.zeros(1, 3, 4, 5, 5)
    clip[:, :, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        layer(clip)
    other = type(layer)(3, 6)  # a state from another configuration
    _, foreign = other.step(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match=rf"{name} state does not fit"):
        layer.step(torch.zeros(1, 3, 5, 5), foreign)
    _, small = layer.step(torch.zeros(1, 3, 4, 4))  # same layer, other frame size
    with pytest.raises(ValueError, match="state does not fit"):
        layer.step(torch.zeros(1, 3, 5, 5), small)


def test_bad_configuration():
    with pytest.raises(ValueError, match="even state_channels"):
        ConvS5(3, 7)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvS5(3, 8, kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvLSTM(3, 8, kernel_size=4)
    with pytest.raises(ValueError, match="scan must be 'chunked' or 'assoc'"):
        ConvS5(3, 8, scan="fft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scan_chunk must be >= 2"):
        ConvS5(3, 8, scan_chunk=1)


def test_stream_module_faces():
    layer = _layer(9)
    clip = torch.randn(1, 3, 6, 4, 4)
    assert layer.delay == 0 and layer.temporal_stride == 1 and layer.receptive_field is None
    (state,) = layer.init_state(clip[:, :, 0])
    assert state.shape == (1, 8, 4, 4) and not state.any()
    with torch.no_grad():
        y, _ = layer.forward_steps(clip)
        torch.testing.assert_close(y, layer(clip), atol=1e-5, rtol=1e-5)
    copy = ConvS5(3, 8)
    copy.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy(clip), layer(clip))


def test_layers_compose_in_a_stream_sequential():
    """Both layers are ordinary StreamModules: a container's step equals its forward."""
    from clplat.streaming import FrameLocal, StreamSequential

    torch.manual_seed(10)
    net = StreamSequential(ConvS5(3, 8), FrameLocal(torch.nn.ReLU()), ConvLSTM(3, 4))
    clip = torch.randn(1, 3, 10, 5, 5)
    with torch.no_grad():
        y, _ = net.forward_steps(clip)
        torch.testing.assert_close(y, net(clip), atol=1e-5, rtol=1e-5)
    assert net.delay == 0 and net.receptive_field is None
