"""Video -> events: an ideal DVS pixel model in the ESIM / v2e style.

Each pixel keeps a reference log intensity ``L_ref`` (set by the first frame). Between two frames the
log intensity ``L = log(I + eps)`` is taken to change linearly in time; every time it crosses
``L_ref ± C`` an ON/OFF event is emitted at the interpolated crossing time and ``L_ref`` moves by
``±C``. Thresholds ``C_on``, ``C_off`` are drawn once per pixel from ``N(mean, sigma)`` (clipped at
``min_threshold``), which is the fixed-pattern spread of real sensors. An event closer than
``refractory_us`` to the pixel's previous emitted event is dropped (the crossing is still consumed,
so ``L_ref`` follows the signal). Optional shot noise: Poisson events at ``noise_rate_hz`` per pixel
with random polarity, leaving ``L_ref`` alone. Everything is a function of (frames, config, seed).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clplat.events.types import Events, concat_events

__all__ = ["EventSimulator", "SimConfig", "simulate"]


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold_on: float = Field(0.2, gt=0, description="mean ON contrast threshold (log units)")
    threshold_off: float = Field(0.2, gt=0, description="mean OFF contrast threshold (log units)")
    threshold_sigma: float = Field(0.03, ge=0, description="per-pixel threshold spread (std)")
    min_threshold: float = Field(0.01, gt=0)
    refractory_us: int = Field(100, ge=0)
    noise_rate_hz: float = Field(0.0, ge=0, description="shot-noise events per pixel per second")
    log_eps: float = Field(1e-3, gt=0, description="L = log(I + eps) for I in [0, 1]")


class EventSimulator:
    """Stateful simulator: feed frames one at a time with :meth:`step` (bounded memory for long
    videos); events of one inter-frame interval come out sorted by time."""

    def __init__(self, height: int, width: int, cfg: SimConfig | None = None, seed: int = 0):
        self.cfg = cfg or SimConfig()
        self.h, self.w = height, width
        self.rng = np.random.default_rng(seed)
        c = self.cfg
        shape = (height, width)
        self.c_on = np.maximum(self.rng.normal(c.threshold_on, c.threshold_sigma, shape), c.min_threshold).ravel()
        self.c_off = np.maximum(self.rng.normal(c.threshold_off, c.threshold_sigma, shape), c.min_threshold).ravel()
        self.l_ref: np.ndarray | None = None
        self.l_prev: np.ndarray | None = None
        self.t_prev: int | None = None
        self.last_event = np.full(height * width, np.iinfo(np.int64).min // 2, dtype=np.int64)

    def _log(self, frame: np.ndarray) -> np.ndarray:
        f = np.asarray(frame, dtype=np.float64)
        if f.shape != (self.h, self.w):
            raise ValueError(f"frame shape {f.shape} != ({self.h}, {self.w})")
        return np.log(np.clip(f, 0.0, None) + self.cfg.log_eps).ravel()

    def step(self, frame: np.ndarray, t_us: int) -> Events:
        """Events from the previous frame to this one (none for the first frame)."""
        lb = self._log(frame)
        t_us = int(t_us)
        if self.l_ref is None:
            self.l_ref, self.l_prev, self.t_prev = lb.copy(), lb, t_us
            return Events([], [], [], [], self.w, self.h)
        if t_us <= self.t_prev:
            raise ValueError(f"frame timestamps must increase ({t_us} after {self.t_prev})")
        parts = [self._crossings(lb, t_us, +1), self._crossings(lb, t_us, -1)]
        noise = self._noise(t_us)
        ev = concat_events([p for p in parts + [noise] if len(p)], self.w, self.h)
        order = np.lexsort((ev.x, ev.y, ev.t))  # deterministic order for equal times
        ev = ev._take(order)
        self.l_prev, self.t_prev = lb, t_us
        return ev

    def _crossings(self, lb: np.ndarray, t_us: int, sign: int) -> Events:
        la, ta = self.l_prev, self.t_prev
        thr = self.c_on if sign > 0 else self.c_off
        n = np.floor(sign * (lb - self.l_ref) / thr).astype(np.int64)
        n = np.maximum(n, 0)
        pix = np.flatnonzero(n)
        if not pix.size:
            return Events([], [], [], [], self.w, self.h)
        xs, ys, ts, keep_all = [], [], [], []
        dl = lb[pix] - la[pix]
        for k in range(1, int(n[pix].max()) + 1):
            sel = pix[n[pix] >= k]
            d = dl[n[pix] >= k]
            level = self.l_ref[sel] + sign * k * thr[sel]
            frac = np.clip((level - la[sel]) / d, 0.0, 1.0)
            t = ta + np.floor(frac * (t_us - ta)).astype(np.int64)
            keep = t - self.last_event[sel] >= self.cfg.refractory_us
            self.last_event[sel[keep]] = t[keep]
            xs.append(sel % self.w)
            ys.append(sel // self.w)
            ts.append(t)
            keep_all.append(keep)
        self.l_ref[pix] += sign * n[pix] * thr[pix]
        keep = np.concatenate(keep_all)
        p = np.full(int(keep.sum()), 1 if sign > 0 else 0)
        return Events(np.concatenate(xs)[keep], np.concatenate(ys)[keep], np.concatenate(ts)[keep], p, self.w, self.h)

    def _noise(self, t_us: int) -> Events:
        rate = self.cfg.noise_rate_hz
        if rate <= 0:
            return Events([], [], [], [], self.w, self.h)
        dt = t_us - self.t_prev
        k = self.rng.poisson(rate * dt * 1e-6, self.h * self.w)
        pix = np.repeat(np.arange(self.h * self.w), k)
        t = self.t_prev + self.rng.integers(0, dt, len(pix))
        return Events(pix % self.w, pix // self.w, t, self.rng.integers(0, 2, len(pix)), self.w, self.h)


def simulate(frames: np.ndarray, timestamps_us: np.ndarray, cfg: SimConfig | None = None, seed: int = 0) -> Events:
    """Events from ``frames`` [N, H, W] (intensity in [0, 1]) at increasing ``timestamps_us`` [N]."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) != len(timestamps_us):
        raise ValueError("frames must be [N, H, W] with one timestamp per frame")
    sim = EventSimulator(frames.shape[1], frames.shape[2], cfg, seed)
    parts = [sim.step(f, t) for f, t in zip(frames, np.asarray(timestamps_us))]
    return concat_events([p for p in parts if len(p)], frames.shape[2], frames.shape[1])
