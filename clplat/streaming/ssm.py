"""ConvS5: a convolutional state-space layer, trained with a parallel scan, streamed one frame at a time.

Smith et al., "Convolutional State Space Models for Long-Range Spatiotemporal Modeling" (NeurIPS
2023); spec ``streaming.md`` §2. Written from the equations (the official code is non-commercial).

The state is ``P/2`` complex channels per pixel (the conjugate half of ``P`` real-system states),
stored as real/imaginary channel pairs ``(B, 2*(P/2), H, W)``: first the real parts, then the
imaginary parts. With ``⊛`` a "same" spatial conv::

    x_t = Λ̄ ⊙ x_{t-1} + B̄ ⊛ u_t            (complex, Λ̄ diagonal: one number per state channel)
    y_t = 2·Re(C̃ ⊛ x_t) + D ⊛ u_t + bias

Λ comes from the HiPPO-LegS eigenvalues (Re Λ clipped to ≤ -1e-4), Δ = exp(log_step) per state,
and zero-order hold gives ``Λ̄ = exp(ΛΔ)``, ``B̄ = (Λ̄ - 1)/Λ · B̃``. Because Λ̄ is diagonal and the
same at every pixel, the recurrence is elementwise, so ``forward`` computes all ``B̄ ⊛ u_t`` at
once, solves the recurrence for all ``t`` and applies ``C̃`` to all states at once; ``step`` runs
the recurrence (the state update is the fused ``clplat.kernels.ssm_step``, Triton on CUDA). Both
give the same numbers. Two parallel solvers (``ConvS5(scan=...)``):

- ``"chunked"`` (default, measured faster on CPU): Λ̄ does not change with time, so the states of a
  chunk of ``L`` steps are one matrix product with the lower-triangular Toeplitz matrix of
  ``Λ̄^(t-s)``, and chunks are chained through their end states (``chunked_lti_scan``);
- ``"assoc"``: the odd/even associative scan (``linear_scan``, depth ``O(log T)``), which also
  takes a time-varying ``a``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.kernels._backend import is_tracing
from clplat.kernels.ssm_step import ssm_step
from clplat.streaming.module import State, StreamModule

__all__ = ["ConvS5", "chunked_lti_scan", "hippo_legs_eigens", "linear_scan", "lti_powers", "scan_combine"]

Pair = tuple[Tensor, Tensor]  # (real, imaginary)


def hippo_legs_eigens(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``Λ (n,)`` and unitary eigenvectors ``V (n, n)`` of the normal part of HiPPO-LegS.

    HiPPO-LegS is ``A_nk = -sqrt(2n+1)sqrt(2k+1)`` below the diagonal, ``-(n+1)`` on it; adding the
    rank-one ``p pᵀ`` with ``p_n = sqrt(n + 1/2)`` leaves ``-I/2`` plus a skew-symmetric matrix,
    whose eigenvalues are ``-1/2 + iω`` (ω ascending: the negative-ω half comes first).
    """
    q = np.sqrt(1.0 + 2.0 * np.arange(n))
    hippo = -(np.tril(q[:, None] * q[None, :]) - np.diag(np.arange(n)))
    p = np.sqrt(np.arange(n) + 0.5)
    normal = hippo + p[:, None] * p[None, :]
    skew = normal - np.diag(np.diag(normal))
    omega, vecs = np.linalg.eigh(-1j * skew)  # Hermitian; eigenvalues of skew are iω
    return np.mean(np.diag(normal)) + 1j * omega, vecs


def scan_combine(first: tuple[Pair, Pair], second: tuple[Pair, Pair]) -> tuple[Pair, Pair]:
    """The associative operator of ``x_t = a_t x_{t-1} + b_t`` on complex (re, im) pairs:
    ``(a_i, b_i) ∘ (a_j, b_j) = (a_j a_i, a_j b_i + b_j)``, ``i`` the earlier element."""
    (ar_i, ai_i), (br_i, bi_i) = first
    (ar_j, ai_j), (br_j, bi_j) = second
    a = (ar_j * ar_i - ai_j * ai_i, ar_j * ai_i + ai_j * ar_i)
    b = (ar_j * br_i - ai_j * bi_i + br_j, ar_j * bi_i + ai_j * br_i + bi_j)
    return a, b


def _take(pair: Pair, index: slice) -> Pair:
    return pair[0][index], pair[1][index]


def _interleave(even: Tensor, odd: Tensor) -> Tensor:
    """``[e0, o0, e1, o1, ...]`` along dim 0; ``even`` may be one longer than ``odd``."""
    n = even.shape[0] + odd.shape[0]
    if odd.shape[0] < even.shape[0]:
        odd = torch.cat([odd, odd[:1]])
    return torch.stack([even, odd], dim=1).flatten(0, 1)[:n]


def linear_scan(a: Pair, b: Pair) -> tuple[Pair, Pair]:
    """Inclusive scan of ``scan_combine`` along dim 0 (time): returns the prefixes ``(A_t, x_t)``
    with ``x_t = a_t x_{t-1} + b_t``, ``x_{-1} = 0``. ``a`` broadcasts against ``b``.

    Odd/even recursion (as in Blelloch's scan): combine neighbouring pairs, scan the half-length
    sequence, then fix up the even positions. ``log2(T)`` levels, ``O(T)`` work; only torch ops, so
    autograd differentiates it and memory stays ``O(T)`` per leaf.
    """
    n = b[0].shape[0]
    if n < 2:
        return a, b
    pairs = scan_combine(
        (_take(a, slice(0, n - 1, 2)), _take(b, slice(0, n - 1, 2))),
        (_take(a, slice(1, None, 2)), _take(b, slice(1, None, 2))),
    )
    odd_a, odd_b = linear_scan(*pairs)  # prefixes ending at 1, 3, 5, ...
    rest = (n - 1) // 2  # even positions 2, 4, ... each extend the odd prefix before them
    ev_a, ev_b = scan_combine(
        (_take(odd_a, slice(0, rest)), _take(odd_b, slice(0, rest))),
        (_take(a, slice(2, None, 2)), _take(b, slice(2, None, 2))),
    )
    out_a = tuple(_interleave(torch.cat([x[:1], e]), o) for x, e, o in zip(a, ev_a, odd_a, strict=True))
    out_b = tuple(_interleave(torch.cat([x[:1], e]), o) for x, e, o in zip(b, ev_b, odd_b, strict=True))
    return out_a, out_b  # type: ignore[return-value]


def lti_powers(a: Pair, n: int) -> Pair:
    """``(a^0, ..., a^{n-1})`` along a new last dim, for ``a`` of shape ``(C,)``: by doubling
    (``log2 n`` complex products), so the rounding is no worse than the recurrence's own."""
    a_re, a_im = a[0][:, None], a[1][:, None]
    p_re, p_im = torch.ones_like(a_re), torch.zeros_like(a_im)
    while p_re.shape[1] < n:
        l_re = p_re[:, -1:] * a_re - p_im[:, -1:] * a_im  # a^k, with k the current length
        l_im = p_re[:, -1:] * a_im + p_im[:, -1:] * a_re
        n_re, n_im = p_re * l_re - p_im * l_im, p_re * l_im + p_im * l_re  # a^k .. a^(2k-1)
        p_re, p_im = torch.cat([p_re, n_re], 1), torch.cat([p_im, n_im], 1)
    return p_re[:, :n], p_im[:, :n]


def _rot(p_re: Tensor, p_im: Tensor) -> Tensor:
    """Complex numbers as real 2x2 blocks ``[[re, -im], [im, re]]`` in two new last dims."""
    return torch.stack([torch.stack([p_re, -p_im], -1), torch.stack([p_im, p_re], -1)], -2)


def chunked_lti_scan(a: Pair, v: Tensor, x0: Tensor | None = None, chunk: int = 16) -> Tensor:
    """``x_t = a ⊙ x_{t-1} + v_t`` (complex, ``a`` time-invariant) for all ``t``, as matrix products.

    ``a``: ``(C,)`` (re, im); ``v``: ``(C, T, 2, M)`` (state channel, time, re/im, anything);
    ``x0``: ``(C, 2, M)`` or ``None`` (zeros). Returns all states, shaped like ``v``.

    Time is cut into chunks of ``L = chunk`` steps. Inside a chunk the recurrence from a zero
    state is one ``2L x 2L`` real matrix per channel (the lower-triangular Toeplitz matrix of
    ``a^(t-s)``, complex entries as 2x2 blocks), applied to every chunk in one batched matmul. The
    states at the chunk ends obey the same recurrence with ``a^L``, one step per chunk: solved by
    the same function on ``T/L`` steps (recursion depth ``log_L T``). Each chunk then adds
    ``a^(l+1)`` times the state carried in from the previous chunk (``x0`` for the first) in one
    more batched matmul. Only non-negative powers of ``|a| <= 1`` appear, so nothing blows up.
    """
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2 (each level shortens time by that factor), got {chunk}")
    c, t, _, m = v.shape
    n = min(chunk, t)
    p_re, p_im = lti_powers(a, n + 1)
    lag = torch.arange(n, device=v.device)
    lag = lag[:, None] - lag[None, :]
    causal = (lag >= 0).to(v.dtype)
    lag = lag.clamp(min=0)
    toeplitz = _rot(p_re[:, lag] * causal, p_im[:, lag] * causal)  # (C, L, L, 2, 2): [l, s, r, r']
    toeplitz = toeplitz.transpose(2, 3).reshape(c, 1, 2 * n, 2 * n)
    chunks = -(-t // n)
    if chunks * n != t:  # zeros after the end change nothing before it
        v = F.pad(v, (0, 0, 0, 0, 0, chunks * n - t))
    v = v.reshape(c, chunks, 2 * n, m)
    local = torch.matmul(toeplitz, v)  # (C, chunks, 2L, M): each chunk from a zero state
    if chunks > 1:  # the states carried out of chunks 0 .. chunks-2 (their last rows of ``local``)
        ends = torch.matmul(toeplitz[:, :, -2:], v)  # all chunks: slicing v would cost a full pass
        carried = chunked_lti_scan((p_re[:, n], p_im[:, n]), ends[:, :-1], x0, chunk)
        first = carried.new_zeros(c, 1, 2, m) if x0 is None else x0[:, None]
        carry = torch.cat([first, carried], 1)
    elif x0 is not None:
        carry = x0[:, None]
    else:
        carry = None
    if carry is not None:  # + a^(l+1) times the state carried in
        inject = _rot(p_re[:, 1:], p_im[:, 1:]).reshape(c, 1, 2 * n, 2).expand(c, chunks, 2 * n, 2)
        local = torch.baddbmm(local.reshape(c * chunks, 2 * n, m), inject.reshape(c * chunks, 2 * n, 2),
                              carry.reshape(c * chunks, 2, m))
    out = local.view(c, chunks * n, 2, m)
    return out if chunks * n == t else out[:, :t]

class ConvS5(StreamModule):
    """ConvS5 layer: ``(B, channels, T, H, W) -> (B, channels, T, H, W)``; delay 0, unbounded memory.

    ``channels`` is U (input = output channels), ``state_channels`` is P (even; P/2 complex states).
    ``kernel_size`` (odd) is shared by the B̃, C̃ and D convs. ``dt_range`` bounds the log-uniform
    initial timestep. ``check_inputs`` validates shapes and finiteness on every call (one device
    sync per call on CUDA; skipped while a step is traced for compilation). ``scan`` picks the
    parallel solver (module docstring) and ``scan_chunk`` its chunk length ``L``; neither changes
    the parameters or the outputs beyond rounding, so weights load into either.
    """

    def __init__(
        self,
        channels: int,
        state_channels: int,
        kernel_size: int = 3,
        dt_range: tuple[float, float] = (1e-3, 1e-1),
        check_inputs: bool = True,
        scan: Literal["chunked", "assoc"] = "chunked",
        scan_chunk: int = 16,
    ) -> None:
        super().__init__()
        if scan not in ("chunked", "assoc"):
            raise ValueError(f"scan must be 'chunked' or 'assoc', got {scan!r}")
        if scan_chunk < 2:
            raise ValueError(f"scan_chunk must be >= 2, got {scan_chunk}")
        self.scan, self.scan_chunk = scan, scan_chunk
        if channels < 1 or state_channels < 2 or state_channels % 2:
            raise ValueError(f"need channels >= 1 and an even state_channels >= 2, got {channels}, {state_channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a 'same' conv), got {kernel_size}")
        if not 0 < dt_range[0] <= dt_range[1]:
            raise ValueError(f"dt_range must be 0 < low <= high, got {dt_range}")
        self.channels, self.state_channels, self.kernel_size = channels, state_channels, kernel_size
        self.check_inputs = check_inputs
        half, k = state_channels // 2, kernel_size
        lam, vecs = hippo_legs_eigens(state_channels)
        lam, v = lam[:half], vecs[:, :half]  # one of each conjugate pair
        self.lambda_re = nn.Parameter(torch.tensor(lam.real, dtype=torch.float32))
        self.lambda_im = nn.Parameter(torch.tensor(lam.imag, dtype=torch.float32))
        lo, hi = math.log(dt_range[0]), math.log(dt_range[1])
        self.log_step = nn.Parameter(torch.rand(half) * (hi - lo) + lo)
        # B̃ = V⁻¹B and C̃ = CV for real LeCun-normal B (P, U, k, k) and C (U, P, k, k).
        b = torch.randn(state_channels, channels, k, k, dtype=torch.float64) / math.sqrt(channels * k * k)
        c = torch.randn(channels, state_channels, k, k, dtype=torch.float64) / math.sqrt(state_channels * k * k)
        v_t = torch.from_numpy(v)
        b_t = torch.einsum("pn,puij->nuij", v_t.conj(), b.to(v_t.dtype))
        c_t = torch.einsum("upij,pn->unij", c.to(v_t.dtype), v_t)
        self.b_re, self.b_im = (nn.Parameter(t.float().contiguous()) for t in (b_t.real, b_t.imag))
        self.c_re, self.c_im = (nn.Parameter(t.float().contiguous()) for t in (c_t.real, c_t.imag))
        self.d = nn.Parameter(torch.randn(channels, channels, k, k) / math.sqrt(channels * k * k))
        self.bias = nn.Parameter(torch.zeros(channels))
        self._cache: tuple[tuple, tuple[Tensor, ...]] | None = None

    @property
    def state_half(self) -> int:
        return self.state_channels // 2

    @property
    def receptive_field(self) -> int | None:
        return None

    # ---- discretisation ---------------------------------------------------------------------
    def continuous_lambda(self) -> Pair:
        """Λ with the real part clipped to ≤ -1e-4 (a stable system)."""
        return self.lambda_re.clamp(max=-1e-4), self.lambda_im

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Zero-order hold: ``(Λ̄_re, Λ̄_im, w_in, b_in, w_out)``.

        ``w_in (2P/2 + U, U, k, k)`` stacks ``[B̄_re; B̄_im; D]`` so one conv of ``u`` gives both the
        state input and the feedthrough (``b_in`` is zero except the D part's bias);
        ``w_out = 2·[C̃_re, -C̃_im]`` turns the (re, im) state into ``2·Re(C̃ ⊛ x)``. Recomputed when
        autograd needs it, otherwise cached per parameter version (the "prime" cache of the paper).
        """
        params = list(self.parameters())
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]  # type: ignore[return-value]
            with torch.no_grad():
                out = self._discretize()
            self._cache = (key, out)
            return out
        return self._discretize()

    def _discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        lre, lim = self.continuous_lambda()
        dt = self.log_step.exp()
        mag = (lre * dt).exp()
        a_re, a_im = mag * (lim * dt).cos(), mag * (lim * dt).sin()
        # g = (Λ̄ - 1) / Λ = (Λ̄ - 1)·conj(Λ) / |Λ|²
        norm = lre * lre + lim * lim
        g_re = ((a_re - 1) * lre + a_im * lim) / norm
        g_im = (a_im * lre - (a_re - 1) * lim) / norm
        g_re, g_im = g_re.view(-1, 1, 1, 1), g_im.view(-1, 1, 1, 1)
        bbar_re = g_re * self.b_re - g_im * self.b_im
        bbar_im = g_re * self.b_im + g_im * self.b_re
        w_in = torch.cat([bbar_re, bbar_im, self.d])
        b_in = torch.cat([self.bias.new_zeros(2 * self.state_half), self.bias])
        w_out = 2 * torch.cat([self.c_re, -self.c_im], dim=1)
        return a_re, a_im, w_in, b_in, w_out

    # ---- validation ------------------------------------------------------------------------
    def _check_frame(self, frame: Tensor, what: str, dims: int) -> None:
        if frame.dim() != dims or frame.shape[1] != self.channels:
            want = "(B, C, T, H, W)" if dims == 5 else "(B, C, H, W)"
            raise ValueError(f"ConvS5 expects a {what} {want} with C={self.channels}, got shape {tuple(frame.shape)}")
        if not frame.is_floating_point():
            raise ValueError(f"ConvS5 expects a floating-point {what}, got {frame.dtype}")
        if self.check_inputs and not is_tracing() and not bool(torch.isfinite(frame).all()):
            raise ValueError(f"ConvS5 got non-finite values (nan/inf) in its input {what}")

    def _check_state(self, state: State, frame: Tensor) -> Tensor:
        want = (frame.shape[0], 2 * self.state_half, *frame.shape[-2:])
        ok = isinstance(state, tuple) and len(state) == 1 and isinstance(state[0], Tensor)
        if not ok or tuple(state[0].shape) != want:
            got = tuple(state[0].shape) if ok else type(state).__name__
            raise ValueError(
                f"ConvS5 state does not fit this layer and frame: expected a 1-tuple with a tensor {want} "
                f"(batch, state_channels, H, W), got {got}"
            )
        return state[0]

    # ---- StreamModule faces ----------------------------------------------------------------
    def _state_dtype(self, frame: Tensor) -> torch.dtype:
        return torch.promote_types(frame.dtype, torch.float32)  # state in fp32 (or fp64)

    def init_state(self, frame: Tensor) -> State:
        b, _, h, w = frame.shape
        return (torch.zeros(b, 2 * self.state_half, h, w, dtype=self._state_dtype(frame), device=frame.device),)

    def example_output(self, frame: Tensor) -> Tensor:
        return frame.new_zeros(frame.shape[0], self.channels, *frame.shape[-2:])

    def forward(self, clip: Tensor, state: State = None) -> Tensor:  # type: ignore[override]
        return self.forward_scan(clip, state)[0]

    def forward_scan(self, clip: Tensor, state: State = None) -> tuple[Tensor, State]:
        """The parallel form: ``(outputs (B, U, T, H, W), final state)``; ``state`` is the initial
        state (``None``: zeros), e.g. from ``step`` or an earlier ``forward_scan``."""
        self._check_frame(clip, "clip", 5)
        x0 = None if state is None else self._check_state(state, clip[:, :, 0])
        if self.scan == "chunked":
            return self._scan_chunked(clip, x0)
        return self._scan_assoc(clip, x0)

    def _scan_chunked(self, clip: Tensor, x0: Tensor | None) -> tuple[Tensor, State]:
        """``chunked_lti_scan`` between time-major NCHW convs: one copy of ``B̄ ⊛ u`` into the scan's
        layout ``(state channel, T, re/im, B·H·W)`` and one copy of the states out of it (both move
        whole ``H·W`` rows; a channels-last layout measured slower, its copies being transposes)."""
        bsz, _, t, h, w = clip.shape
        a_re, a_im, w_in, b_in, w_out = self.discretize()
        pad, half, sdt = self.kernel_size // 2, self.state_half, self._state_dtype(clip)
        frames = clip.permute(2, 0, 1, 3, 4).reshape(t * bsz, self.channels, h, w)  # time-major
        z = F.conv2d(frames, w_in.to(clip.dtype), b_in.to(clip.dtype), padding=pad).view(t, bsz, -1, h, w)
        bu, du = z.split([2 * half, self.channels], dim=2)
        v = bu.to(sdt).reshape(t, bsz, 2, half, h * w).permute(3, 0, 2, 1, 4).reshape(half, t, 2, bsz * h * w)
        if x0 is not None:
            x0 = x0.reshape(bsz, 2, half, h * w).permute(2, 1, 0, 3).reshape(half, 2, bsz * h * w)
        xs = chunked_lti_scan((a_re.to(sdt), a_im.to(sdt)), v, x0, self.scan_chunk)
        xs = xs.view(half, t, 2, bsz, h * w).permute(1, 3, 2, 0, 4).reshape(t, bsz, 2 * half, h, w)
        y = F.conv2d(xs.flatten(0, 1).to(clip.dtype), w_out.to(clip.dtype), padding=pad).view(t, bsz, -1, h, w)
        y = y + du
        return y.permute(1, 2, 0, 3, 4), (xs[-1],)

    def _scan_assoc(self, clip: Tensor, x0: Tensor | None) -> tuple[Tensor, State]:
        """The odd/even associative scan (``linear_scan``) between time-major NCHW convs."""
        bsz, _, t, h, w = clip.shape
        a_re, a_im, w_in, b_in, w_out = self.discretize()
        pad, half, sdt = self.kernel_size // 2, self.state_half, self._state_dtype(clip)
        frames = clip.permute(2, 0, 1, 3, 4).reshape(t * bsz, self.channels, h, w)  # time-major
        z = F.conv2d(frames, w_in.to(clip.dtype), b_in.to(clip.dtype), padding=pad).view(t, bsz, -1, h, w)
        bu_re, bu_im, du = z[:, :, :half].to(sdt), z[:, :, half : 2 * half].to(sdt), z[:, :, 2 * half :]
        a_re, a_im = a_re.to(sdt).view(1, 1, half, 1, 1), a_im.to(sdt).view(1, 1, half, 1, 1)
        if x0 is not None:  # fold the initial state into the first input: b_0 += Λ̄ x_0
            x0_re, x0_im = x0[:, :half], x0[:, half:]
            first_re = bu_re[:1] + a_re * x0_re - a_im * x0_im
            first_im = bu_im[:1] + a_re * x0_im + a_im * x0_re
            bu_re, bu_im = torch.cat([first_re, bu_re[1:]]), torch.cat([first_im, bu_im[1:]])
        a_seq = (a_re.expand(t, 1, half, 1, 1), a_im.expand(t, 1, half, 1, 1))
        _, (x_re, x_im) = linear_scan(a_seq, (bu_re, bu_im))
        xs = torch.cat([x_re, x_im], dim=2)  # (T, B, 2*half, H, W)
        y = F.conv2d(xs.flatten(0, 1).to(clip.dtype), w_out.to(clip.dtype), padding=pad).view(t, bsz, -1, h, w)
        y = y + du
        return y.permute(1, 2, 0, 3, 4), (xs[-1],)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        self._check_frame(frame, "frame", 4)
        x = self._check_state(state, frame)
        a_re, a_im, w_in, b_in, w_out = self.discretize()
        pad, half = self.kernel_size // 2, self.state_half
        z = F.conv2d(frame, w_in.to(frame.dtype), b_in.to(frame.dtype), padding=pad)
        x_new = ssm_step(x, z[:, : 2 * half], a_re.to(x.dtype), a_im.to(x.dtype))
        y = F.conv2d(x_new.to(frame.dtype), w_out.to(frame.dtype), padding=pad) + z[:, 2 * half :]
        return y, (x_new,)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, state_channels={self.state_channels}, kernel_size={self.kernel_size}"
