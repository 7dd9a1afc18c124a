"""Event streams as sources of 10 ms bins for the event-flow demo (``--source``):

- an event file in any format ``clplat.events`` reads (DSEC h5, AEDAT4, EVT2/EVT3 ``.raw``,
  ``.dat``, ``.es``, ``.npz``, text), streamed window by window (``iter_windows``: never loaded
  whole); a scene file written by ``python -m clplat.events scene`` also carries ground-truth flow;
- ``sim:VIDEO``: a video turned into events on the fly (``clplat.events.video``);
- ``synthetic``: a held-out synthetic scene rendered in memory, with its exact flow.

Each item is an :class:`EventBin`: the bin as the nets take it (``bilinear_counts``, channel 0 = ON)
and, when ground truth exists and the bin closes a whole target window, the target flow over the
``target_bins`` bins ending with it (what the nets predict) and its validity mask. Per-bin ground
truth from a file is chained into that window displacement by :func:`compose_flows`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clplat.errors import UserError
from clplat.events.represent import bilinear_counts
from clplat.events.types import Events
from clplat.streaming.sources import FrameSource

__all__ = ["EventBin", "EventBinSource", "compose_flows", "open_event_source"]

SYNTHETIC_SIZE = (96, 128)  # (H, W) of the in-memory synthetic scene
SYNTHETIC_MS = 600


@dataclass
class EventBin:
    """One bin: ``bins (2, H, W)`` float, its start time, and optional target ``flow (2, H, W)``
    (px over the target window) with ``valid (H, W)``."""

    index: int
    t0_us: int
    bins: Tensor
    events: int
    flow: Tensor | None = None
    valid: Tensor | None = None


def compose_flows(flows: Tensor, valids: Tensor) -> tuple[Tensor, Tensor]:
    """Chain per-bin forward flows ``(n, 2, H, W)`` (bin k moves the point seen at pixel p at the
    bin's start by ``flows[k, :, p]``) into the displacement over all n bins, of the point seen at
    each pixel at the first bin's start: ``D ← D + f_k(p + D)`` with bilinear sampling. A pixel is
    valid when every sampled flow is valid and the point stays in the image throughout."""
    n, _, h, w = flows.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flows.dtype), torch.arange(w, dtype=flows.dtype), indexing="ij")
    disp = torch.zeros(2, h, w, dtype=flows.dtype)
    ok = torch.ones(h, w, dtype=torch.bool)
    for k in range(n):
        px, py = xs + disp[0], ys + disp[1]
        grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1)[None]
        f = F.grid_sample(flows[k][None], grid, mode="bilinear", align_corners=True)[0]
        v = F.grid_sample(valids[k][None, None].to(flows.dtype), grid, mode="nearest", align_corners=True)[0, 0]
        ok &= (v > 0.5) & (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
        disp = disp + f
    px, py = xs + disp[0], ys + disp[1]
    return disp, ok & (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)


class EventBinSource(FrameSource):
    """Bins from an iterator of per-bin :class:`Events`; ground truth from a callable
    ``truth(k) -> (flow, valid) | None`` for bin k (its target window ends with bin k)."""

    def __init__(self, name: str, windows: Iterator[Events], height: int, width: int, bin_us: int,
                 truth=None, t0_us: int = 0) -> None:
        super().__init__(name=name, fps=1e6 / bin_us)
        self.windows, self.height, self.width, self.bin_us = windows, height, width, bin_us
        self.truth, self.t0_us = truth, t0_us
        self.has_truth = truth is not None

    def __iter__(self) -> Iterator[EventBin]:
        self.end_reason, k = "running", 0
        for ev in self.windows:
            if self._closed:
                break
            bins = bilinear_counts(ev, self.height, self.width) if len(ev) else torch.zeros(2, self.height, self.width)
            gt = self.truth(k) if self.truth is not None else None
            yield EventBin(k, self.t0_us + k * self.bin_us, bins, len(ev), *(gt or (None, None)))
            k += 1
        self.end_reason = f"end of events after {k} bins"


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """``"WxH"`` -> ``(H, W)``."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--sensor-size must look like 346x260, got {text!r}") from None
    if w < 1 or h < 1:
        raise UserError(f"--sensor-size must be positive, got {text!r}")
    return h, w


def _sensor_size(path: Path, fmt: str | None) -> tuple[int, int]:
    """The sensor size the file declares, else one streaming pass for the largest coordinates."""
    from clplat.events import iter_windows

    hi_x = hi_y = -1
    for win in iter_windows(path, 1_000_000, format=fmt):
        if win.width and win.height:
            return win.height, win.width
        if len(win):
            hi_x, hi_y = max(hi_x, int(win.x.max())), max(hi_y, int(win.y.max()))
    if hi_x < 0:
        raise UserError(f"{path}: holds no events")
    return hi_y + 1, hi_x + 1


def _file_truth(path: Path, bin_us: int, target_bins: int):
    """Ground truth of a scene file (per-bin flow chained over the target window), or None."""
    from clplat.events.scenes import read_scene_flow

    gt = read_scene_flow(path) if path.suffix in (".h5", ".hdf5") else None
    if gt is None:
        return None, None
    if gt["bin_us"] != bin_us:
        raise UserError(f"{path}: its ground truth has {gt['bin_us']} us bins, the model steps {bin_us} us bins")
    flows, valids = torch.from_numpy(gt["flow"]).float(), torch.from_numpy(gt["valid"])
    def truth(k: int):
        if k + 1 < target_bins or k >= flows.shape[0]:
            return None
        return compose_flows(flows[k + 1 - target_bins : k + 1], valids[k + 1 - target_bins : k + 1])

    return truth, gt["t0_us"]


def _synthetic(seed: int, bin_us: int, target_bins: int) -> EventBinSource:
    from clplat.events.scenes import SceneConfig, make_scene

    h, w = SYNTHETIC_SIZE
    scene = make_scene(SceneConfig(height=h, width=w, duration_ms=SYNTHETIC_MS, bin_ms=bin_us // 1000),
                       seed=2_000_000 + seed, keep_frames=False)
    n = SYNTHETIC_MS * 1000 // bin_us
    windows = (scene.events.slice_time(k * bin_us, (k + 1) * bin_us) for k in range(n))

    def truth(k: int):
        if k + 1 < target_bins:
            return None
        f, v = scene.displacement((k + 1 - target_bins) * bin_us, (k + 1) * bin_us)
        return torch.from_numpy(f), torch.from_numpy(v)

    return EventBinSource(f"synthetic scene (seed {seed})", windows, h, w, bin_us, truth)


def open_event_source(spec: str, bin_us: int, target_bins: int, seed: int = 0, format: str | None = None,
                      sensor_size: str | None = None) -> EventBinSource:
    """``synthetic`` | ``sim:VIDEO`` | an event file (format by magic bytes / extension, or ``format``)."""
    from clplat.events import detect_format, iter_windows

    if spec == "synthetic":
        return _synthetic(seed, bin_us, target_bins)
    size = _parse_size(sensor_size)
    if spec.startswith("sim:"):
        from clplat.events.readers import rewindow
        from clplat.events.video import iter_video_events

        video = Path(spec[4:])
        if not video.is_file():
            raise UserError(f"sim: video file not found: {video}")
        chunks = iter_video_events(video, seed=seed, size=size)
        first = next(chunks)  # the first frame sets the simulator's reference: no events, sizes known
        h, w = first.height, first.width
        windows = rewindow(_chain(first, chunks), bin_us, None, None)
        return EventBinSource(f"sim:{video.name}", windows, h, w, bin_us)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"event file not found: {path}")
    fmt = detect_format(path, format)
    h, w = size or _sensor_size(path, fmt)
    truth, t0 = _file_truth(path, bin_us, target_bins)
    windows = iter_windows(path, bin_us, t_start_us=t0, format=fmt)
    return EventBinSource(f"{path.name} ({fmt})", windows, h, w, bin_us, truth, t0_us=t0 or 0)


def _chain(first: Events, rest: Iterator[Events]) -> Iterator[Events]:
    yield first
    yield from rest


def event_image(bins: Tensor) -> np.ndarray:
    """RGB ``uint8 (H, W, 3)``: ON events red, OFF events blue, both magenta, none black."""
    on, off = (bins.clamp(0, 2) / 2 * 255).to(torch.uint8).numpy()
    img = np.zeros((*on.shape, 3), dtype=np.uint8)
    img[..., 0], img[..., 2] = on, off
    return img
