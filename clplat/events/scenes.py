"""Synthetic event scenes with exact dense optical flow: textured planes moving in front of a
textured background, rendered at ``frame_us`` steps and turned into events by ``simulate``.

Every layer (background first, then ``n_objects`` discs) is a plane with an analytic texture and a
similarity motion about its centre: ``q(t) = c0 + v·t + s(t)·R(θ(t))·u`` for a point ``u`` of the
plane, with ``θ(t) = θ0 + ω·t`` ("rotate") and ``s(t) = s0·exp(κ·t)`` ("zoom"); every object also
translates. Because the motion is parametric, the flow of the point seen at pixel q is exact.

Flow convention: ``flow[k, :, y, x] = (dx, dy)`` in pixels, the displacement over bin k (from
``t_k = k·bin`` to ``t_{k+1}``) of the scene point visible at pixel (x, y) at ``t_k`` — the flow of
the bin the network has just seen. ``valid[k]`` is False where that point is hidden at ``t_{k+1}``
(by a nearer object) or leaves the image. :meth:`Scene.displacement` gives the exact flow between
any two times (e.g. the 100 ms targets of sequential learning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clplat.events.simulate import SimConfig, simulate
from clplat.events.types import Events

__all__ = ["Scene", "SceneConfig", "make_scene", "read_scene_flow", "write_scene_h5"]

MOTIONS = ("translate", "rotate", "zoom")


class SceneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    duration_ms: int = Field(200, ge=1)
    bin_ms: int = Field(10, ge=1)
    frame_us: int = Field(1000, ge=1, description="render step fed to the simulator")
    n_objects: int = Field(3, ge=0)
    motions: tuple[str, ...] = MOTIONS
    max_speed: float = Field(150.0, ge=0, description="object speed bound, pixels per second")
    background_speed: float = Field(60.0, ge=0, description="background speed bound, px/s")
    max_rotation: float = Field(2.0, ge=0, description="|ω| bound, rad/s")
    max_zoom: float = Field(1.0, ge=0, description="|κ| bound, 1/s (scale = exp(κ t))")
    radius: tuple[float, float] = (0.12, 0.3)
    texture_waves: int = Field(6, ge=1)
    texture_scale: float = Field(6.0, gt=0, description="typical texture period, pixels")
    sim: SimConfig = SimConfig()

    @field_validator("motions")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if m not in MOTIONS]
        if bad or not v:
            raise ValueError(f"motions must be a non-empty subset of {MOTIONS}, got {v}")
        return v


@dataclass
class Layer:
    """A textured plane: motion parameters, texture waves and a disc radius (None = infinite)."""

    c0: np.ndarray
    v: np.ndarray
    theta0: float
    omega: float
    s0: float
    kappa: float
    radius: float | None
    freqs: np.ndarray  # [K, 2] cycles/pixel in plane coordinates
    phases: np.ndarray  # [K]
    bias: float
    gain: float

    def pose(self, t: float) -> tuple[np.ndarray, float, float]:
        return self.c0 + self.v * t, self.theta0 + self.omega * t, self.s0 * np.exp(self.kappa * t)

    def to_plane(self, qx: np.ndarray, qy: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        c, th, s = self.pose(t)
        dx, dy = qx - c[0], qy - c[1]
        co, si = np.cos(th), np.sin(th)
        return (co * dx + si * dy) / s, (-si * dx + co * dy) / s

    def to_image(self, ux: np.ndarray, uy: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        c, th, s = self.pose(t)
        co, si = np.cos(th), np.sin(th)
        return c[0] + s * (co * ux - si * uy), c[1] + s * (si * ux + co * uy)

    def inside(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        if self.radius is None:
            return np.ones(ux.shape, dtype=bool)
        return ux * ux + uy * uy <= self.radius * self.radius

    def texture(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        """Grey level at plane coordinates: a sharpened sum of plane waves."""
        phase = 2 * np.pi * (ux[..., None] * self.freqs[:, 0] + uy[..., None] * self.freqs[:, 1]) + self.phases
        wave = np.sin(phase).sum(-1) / np.sqrt(len(self.phases))
        return np.clip(self.bias + self.gain * np.tanh(1.5 * wave), 0.02, 1.0)


@dataclass
class Scene:
    cfg: SceneConfig
    seed: int
    events: Events
    flow: np.ndarray  # [T_bins, 2, H, W] float32, (dx, dy) px per bin
    valid: np.ndarray  # [T_bins, H, W] bool
    frames: np.ndarray | None = None  # [T_bins + 1, H, W] at the bin boundaries
    layers: list[Layer] = field(default_factory=list, repr=False)

    def displacement(self, t0_us: int, t1_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (dx, dy) [2, H, W] of the point seen at each pixel at t0 until t1, and its validity."""
        return _displacement(self.layers, self.cfg.height, self.cfg.width, t0_us * 1e-6, t1_us * 1e-6)


def _make_layers(cfg: SceneConfig, rng: np.random.Generator) -> list[Layer]:
    h, w = cfg.height, cfg.width
    size = min(h, w)

    def waves() -> tuple[np.ndarray, np.ndarray]:
        k = cfg.texture_waves
        period = cfg.texture_scale * rng.uniform(0.7, 2.0, k)
        ang = rng.uniform(0, np.pi, k)
        return np.stack([np.cos(ang), np.sin(ang)], 1) / period[:, None], rng.uniform(0, 2 * np.pi, k)

    def rand_vec(bound: float) -> np.ndarray:
        ang = rng.uniform(0, 2 * np.pi)
        return rng.uniform(0.3, 1.0) * bound * np.array([np.cos(ang), np.sin(ang)])

    f, ph = waves()
    layers = [Layer(np.array([w / 2, h / 2]), rand_vec(cfg.background_speed), 0.0, 0.0, 1.0, 0.0, None, f, ph,
                    rng.uniform(0.35, 0.55), rng.uniform(0.2, 0.3))]
    for _ in range(cfg.n_objects):
        kind = cfg.motions[int(rng.integers(len(cfg.motions)))]
        f, ph = waves()
        omega = rng.uniform(0.4, 1.0) * cfg.max_rotation * rng.choice([-1, 1]) if kind == "rotate" else 0.0
        kappa = rng.uniform(0.4, 1.0) * cfg.max_zoom * rng.choice([-1, 1]) if kind == "zoom" else 0.0
        speed = cfg.max_speed if kind == "translate" else cfg.max_speed / 3
        layers.append(Layer(np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h]), rand_vec(speed),
                            rng.uniform(0, 2 * np.pi), omega, 1.0, kappa, rng.uniform(*cfg.radius) * size, f, ph,
                            rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.35)))
    return layers


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    qy, qx = np.mgrid[0:h, 0:w].astype(np.float64)
    return qx, qy


def _owner(layers: list[Layer], qx: np.ndarray, qy: np.ndarray, t: float) -> np.ndarray:
    """Index of the nearest layer covering each pixel at time t (last drawn = nearest)."""
    owner = np.zeros(qx.shape, dtype=np.int64)
    for i, layer in enumerate(layers[1:], start=1):
        owner[layer.inside(*layer.to_plane(qx, qy, t))] = i
    return owner


def render(layers: list[Layer], h: int, w: int, t: float) -> np.ndarray:
    qx, qy = _grid(h, w)
    img = np.empty((h, w))
    owner = _owner(layers, qx, qy, t)
    for i, layer in enumerate(layers):
        m = owner == i
        if m.any():
            img[m] = layer.texture(*layer.to_plane(qx[m], qy[m], t))
    return img


def _displacement(layers: list[Layer], h: int, w: int, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    qx, qy = _grid(h, w)
    owner = _owner(layers, qx, qy, t0)
    flow = np.zeros((2, h, w), dtype=np.float64)
    valid = np.zeros((h, w), dtype=bool)
    for i, layer in enumerate(layers):
        m = owner == i
        if not m.any():
            continue
        ux, uy = layer.to_plane(qx[m], qy[m], t0)
        px, py = layer.to_image(ux, uy, t1)
        flow[0][m], flow[1][m] = px - qx[m], py - qy[m]
        # visible at t1: inside the image and not covered by a nearer layer there
        ok = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
        for near in layers[i + 1:]:
            ok &= ~near.inside(*near.to_plane(px, py, t1))
        valid[m] = ok
    return flow.astype(np.float32), valid


def make_scene(cfg: SceneConfig | None = None, seed: int = 0, keep_frames: bool = True) -> Scene:
    """A scene from (cfg, seed): events from the simulator, exact per-bin flow and validity."""
    cfg = cfg or SceneConfig()
    rng = np.random.default_rng(seed)
    layers = _make_layers(cfg, rng)
    h, w = cfg.height, cfg.width
    t_frames = np.arange(0, cfg.duration_ms * 1000 + 1, cfg.frame_us, dtype=np.int64)
    frames = np.stack([render(layers, h, w, t * 1e-6) for t in t_frames])
    events = simulate(frames, t_frames, cfg.sim, seed=int(rng.integers(2**31)))
    bin_us = cfg.bin_ms * 1000
    n_bins = cfg.duration_ms // cfg.bin_ms
    flow = np.zeros((n_bins, 2, h, w), dtype=np.float32)
    valid = np.zeros((n_bins, h, w), dtype=bool)
    for k in range(n_bins):
        flow[k], valid[k] = _displacement(layers, h, w, k * bin_us * 1e-6, (k + 1) * bin_us * 1e-6)
    boundaries = None
    if keep_frames:
        boundaries = np.stack([render(layers, h, w, k * bin_us * 1e-6) for k in range(n_bins + 1)]).astype(np.float32)
    return Scene(cfg, seed, events, flow, valid, boundaries, layers)


def write_scene_h5(path, scene: Scene):
    """The scene's events in the DSEC layout plus ``/flow/forward`` [T, 2, H, W] float32 (dx, dy px
    per bin), ``/flow/valid`` [T, H, W] uint8 and attributes ``bin_us``, ``t0_us`` (absolute start
    of bin 0), in one atomic write."""
    import hdf5plugin

    from clplat.events.dsec import write_dsec_h5

    comp = hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.SHUFFLE)

    def add_flow(f) -> None:
        g = f.create_group("flow")
        h, w = scene.flow.shape[2:]
        g.create_dataset("forward", data=scene.flow, chunks=(1, 2, h, w), **comp)
        g.create_dataset("valid", data=scene.valid.astype(np.uint8), chunks=(1, h, w), **comp)
        g.attrs["bin_us"] = scene.cfg.bin_ms * 1000
        g.attrs["t0_us"] = 0

    return write_dsec_h5(path, scene.events, extra=add_flow)


def read_scene_flow(path) -> dict | None:
    """``{"flow", "valid", "bin_us", "t0_us"}`` from a file written by :func:`write_scene_h5`;
    None when the file has no ``/flow`` group (a plain recording)."""
    from clplat.events.dsec import _h5

    try:
        with _h5().File(str(path), "r") as f:
            if "flow" not in f:
                return None
            g = f["flow"]
            return {"flow": g["forward"][:], "valid": g["valid"][:].astype(bool),
                    "bin_us": int(g.attrs["bin_us"]), "t0_us": int(g.attrs["t0_us"])}
    except (OSError, KeyError) as err:
        from clplat.errors import UserError

        raise UserError(f"{path}: unreadable ground-truth flow ({err})") from None
