"""Synthetic scenes -> training windows and held-out streams: 10 ms event bins with targets.

A scene (``clplat.events.scenes.make_scene``) gives events and the exact motion of every point.
Bin ``k`` covers ``[k·bin, (k+1)·bin)``; its input is ``bin_stream`` (bilinear counts, channel 0 =
ON); its target is the displacement over the ``target_bins`` bins that end with it (100 ms, as the
spec's DSEC targets), of the point seen at each pixel at the window's start, and where that point
is still visible at the end (``valid``). Rendering costs about a second per scene, so rendered
scenes are cached (``torch.save`` of plain tensors, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from clplat.events.represent import bin_stream
from clplat.events.scenes import SceneConfig, make_scene
from clplat.io import atomic_path
from clplat.streaming.evflow.config import DataSection

__all__ = ["SceneTensors", "WindowDataset", "render_scenes", "scene_seeds", "scene_targets"]

SceneTensors = dict[str, Tensor]  # bins (N, T, 2, H, W) f16, flow (N, T, 2, H, W) f16, valid (N, T, H, W) bool


def scene_seeds(seed: int, split: str, n: int) -> list[int]:
    """Disjoint seed ranges for training and held-out scenes."""
    base = 1_000_000 if split == "test" else 0
    return [base + 10_000 * seed + i for i in range(n)]


def scene_config(d: DataSection, duration_ms: int) -> SceneConfig:
    return SceneConfig(height=d.height, width=d.width, duration_ms=duration_ms, bin_ms=d.bin_ms,
                       n_objects=d.n_objects, max_speed=d.max_speed, background_speed=d.background_speed)


def scene_targets(scene, n_bins: int, bin_us: int, target_bins: int) -> tuple[Tensor, Tensor]:
    """``(flow (T, 2, H, W), valid (T, H, W))``: bin k's target is the displacement from
    ``(k + 1 - target_bins)·bin`` to ``(k + 1)·bin`` (the motion is analytic, so early bins too)."""
    flows, valids = [], []
    for k in range(n_bins):
        f, v = scene.displacement((k + 1 - target_bins) * bin_us, (k + 1) * bin_us)
        flows.append(torch.from_numpy(f))
        valids.append(torch.from_numpy(v))
    return torch.stack(flows), torch.stack(valids)


def _render(d: DataSection, duration_ms: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    scene = make_scene(scene_config(d, duration_ms), seed=seed, keep_frames=False)
    n_bins, bin_us = duration_ms // d.bin_ms, d.bin_ms * 1000
    bins = bin_stream(scene.events, bin_us, d.height, d.width, t0_us=0, n_bins=n_bins)
    flow, valid = scene_targets(scene, n_bins, bin_us, d.target_bins)
    return bins.half(), flow.half(), valid


def _cache_path(d: DataSection, duration_ms: int, seeds: list[int]) -> Path | None:
    if d.cache_dir is None:
        return None
    key = json.dumps({"data": d.model_dump(exclude={"cache_dir", "train_scenes", "test_scenes"}),
                      "ms": duration_ms, "seeds": seeds, "v": 1}, sort_keys=True)
    return Path(d.cache_dir) / f"scenes_{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def render_scenes(d: DataSection, split: str, seed: int, log=print) -> SceneTensors:
    """The ``split`` scenes of a data section (from the cache when it holds them)."""
    n = d.train_scenes if split == "train" else d.test_scenes
    duration = d.train_scene_ms if split == "train" else d.test_scene_ms
    seeds = scene_seeds(seed, split, n)
    path = _cache_path(d, duration, seeds)
    if path is not None and path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # a damaged cache is re-rendered, not fatal
            log(f"re-rendering scenes: cache {path} unreadable ({err})")
    log(f"rendering {n} {split} scenes of {duration} ms at {d.width}x{d.height} ...")
    parts = [_render(d, duration, s) for s in seeds]
    out = {k: torch.stack([p[i] for p in parts]) for i, k in enumerate(("bins", "flow", "valid"))}
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save(out, tmp)
    return out


class WindowDataset(Dataset):
    """Every ``warmup + grad`` bin window of every scene, at start offsets ``0, stride, 2·stride, ...``
    (so every 10 ms phase of the motion is seen). Item: ``(bins (W+G, 2, H, W), flow (L, 2, H, W),
    valid (L, H, W))`` with the targets of the window's last ``L = loss_bins`` bins."""

    def __init__(self, scenes: SceneTensors, warmup: int, grad: int, loss_bins: int, stride: int = 1) -> None:
        self.scenes, self.length, self.loss_bins = scenes, warmup + grad, loss_bins
        n, t = scenes["bins"].shape[:2]
        if t < self.length:
            raise ValueError(f"scenes of {t} bins are shorter than a window of {self.length}")
        self.windows = [(i, o) for i in range(n) for o in range(0, t - self.length + 1, stride)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        i, o = self.windows[k]
        end = o + self.length
        s = self.scenes
        return (s["bins"][i, o:end].float(), s["flow"][i, end - self.loss_bins:end].float(),
                s["valid"][i, end - self.loss_bins:end])
