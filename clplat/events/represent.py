"""Event tensors for networks (spec streaming.md §4-§5), all float32 torch tensors built by one
splat primitive (``clplat.kernels.event_hist``: vectorised scatter on CPU, Triton atomics on GPU).

Polarity channels: **channel 0 = ON (p = 1), channel 1 = OFF (p = 0)**.

- ``counts``          [2, H, W]   events per pixel and polarity.
- ``bilinear_counts`` [2, H, W]   Ponghiran et al.'s per-bin input: each event adds
  ``(1-|x-x0|)(1-|y-y0|)`` to its 4 neighbours; with integer (unrectified) coordinates this equals
  ``counts``; pass float ``coords`` (e.g. from :func:`rectify`) to get the spread.
- ``voxel_grid``      [B, H, W]   Zhu et al. / DSEC: ``t* = (B-1)(t-t0)/(tN-t0)``, value
  ``p ∈ {-1,+1}`` shared linearly between the two nearest bins (and bilinearly in space for float
  coords), then mean/std normalisation over the non-zero entries. Unlike tonic, B-1 scaling and the
  input polarity array is never modified.
- ``bin_stream``      [T, 2, H, W] fixed ``bin_us`` bins, bin index ``(t - t0) // bin_us``.
"""

from __future__ import annotations

import numpy as np
import torch

from clplat.events.types import Events
from clplat.kernels.event_hist import event_hist

__all__ = ["bilinear_counts", "bin_stream", "counts", "rectify", "voxel_grid"]

Coords = tuple[np.ndarray, np.ndarray]


def rectify(ev: Events, rectify_map: np.ndarray) -> Coords:
    """Float (x, y) from a DSEC ``rectify_map`` (H, W, 2): ``x_r, y_r = map[y, x]``."""
    xy = rectify_map[ev.y.astype(np.int64), ev.x.astype(np.int64)]
    return xy[:, 0].astype(np.float32), xy[:, 1].astype(np.float32)


def _tensors(ev: Events, coords: Coords | None, device: torch.device | str | None):
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if coords is None:
        x = torch.from_numpy(ev.x.astype(np.float32)).to(dev)
        y = torch.from_numpy(ev.y.astype(np.float32)).to(dev)
    else:
        if len(coords[0]) != len(ev) or len(coords[1]) != len(ev):
            raise ValueError("coords must hold one (x, y) per event")
        x = torch.as_tensor(np.asarray(coords[0], dtype=np.float32)).to(dev)
        y = torch.as_tensor(np.asarray(coords[1], dtype=np.float32)).to(dev)
    off = torch.from_numpy(1 - ev.p.astype(np.int64)).to(dev)  # channel: 0 = ON, 1 = OFF
    return x, y, off, dev


def counts(ev: Events, height: int, width: int, device=None, backend: str | None = None) -> torch.Tensor:
    """[2, H, W] event counts per polarity (channel 0 = ON)."""
    x, y, off, _ = _tensors(ev, None, device)
    return event_hist(off.float(), y, x, torch.ones_like(x), (2, height, width), backend=backend)


def bilinear_counts(ev: Events, height: int, width: int, coords: Coords | None = None,
                    device=None, backend: str | None = None) -> torch.Tensor:
    """[2, H, W] counts with spatial bilinear weights (the §4 per-bin input; channel 0 = ON)."""
    x, y, off, _ = _tensors(ev, coords, device)
    return event_hist(off.float(), y, x, torch.ones_like(x), (2, height, width), interp_xy=True, backend=backend)


def voxel_grid(ev: Events, bins: int, height: int, width: int, coords: Coords | None = None,
               normalize: bool = True, device=None, backend: str | None = None) -> torch.Tensor:
    """[B, H, W] voxel grid over the events' own time span (§5 formula, p ∈ {-1, +1})."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    x, y, off, dev = _tensors(ev, coords, device)
    if not len(ev):
        return torch.zeros(bins, height, width, device=dev)
    t = torch.from_numpy(ev.t - ev.t[0]).to(dev).double()
    span = float(ev.t[-1] - ev.t[0])
    tstar = ((bins - 1) * t / span).float() if span > 0 else torch.zeros_like(x)
    value = 1.0 - 2.0 * off.float()  # +1 ON, -1 OFF
    grid = event_hist(tstar, y, x, value, (bins, height, width), interp_c=True,
                      interp_xy=coords is not None, backend=backend)
    return _normalize_nonzero(grid) if normalize else grid


def _normalize_nonzero(grid: torch.Tensor) -> torch.Tensor:
    """(v - mean) / std over the non-zero entries only (std unbiased, as DSEC's representation
    code); zeros stay zero. One nonzero() pass, then gathers and a scatter of the few touched
    entries (boolean-mask indexing is several times slower on CPU)."""
    flat = grid.reshape(-1)
    idx = flat.nonzero().squeeze(1)
    if idx.numel() == 0:
        return grid
    vals = flat.index_select(0, idx)
    vals = vals - vals.mean()
    if vals.numel() > 1:
        std = vals.std()
        if float(std) > 0:
            vals = vals / std
    return torch.zeros_like(flat).index_copy_(0, idx, vals).view_as(grid)


def bin_stream(ev: Events, bin_us: int = 10_000, height: int | None = None, width: int | None = None,
               kind: str = "bilinear", t0_us: int | None = None, n_bins: int | None = None,
               coords: Coords | None = None, device=None, backend: str | None = None) -> torch.Tensor:
    """[T, 2, H, W]: events cut into ``bin_us`` bins from ``t0_us`` (default: first event), each bin
    as ``bilinear_counts`` (``kind='bilinear'``) or ``counts`` (``kind='counts'``). ``n_bins``
    defaults to the bins that hold events; events past it are dropped."""
    if kind not in ("bilinear", "counts"):
        raise ValueError(f"kind must be 'bilinear' or 'counts', got {kind!r}")
    height = height if height is not None else ev.height
    width = width if width is not None else ev.width
    if height is None or width is None:
        raise ValueError("height and width are needed (the events do not carry a sensor size)")
    x, y, off, dev = _tensors(ev, coords, device)
    start = int(t0_us) if t0_us is not None else (int(ev.t[0]) if len(ev) else 0)
    b = np.floor_divide(ev.t - start, bin_us)
    if n_bins is None:
        n_bins = int(b.max()) + 1 if len(ev) and b.max() >= 0 else 0
    chan = torch.from_numpy(b).to(dev).float() * 2 + off.float()
    chan[torch.from_numpy(b < 0).to(dev)] = -1.0  # before t0: dropped by the bounds check
    out = event_hist(chan, y, x, torch.ones_like(x), (max(2 * n_bins, 1), height, width),
                     interp_xy=kind == "bilinear", backend=backend)
    return out[: 2 * n_bins].view(n_bins, 2, height, width)
