"""Bouncing digits: Moving-MNIST-style videos (several digits bouncing on a black canvas), for
next-frame prediction; generated on the fly from scikit-learn's 8x8 digits, nothing downloaded.

Each video shows ``digits`` digit images (upscaled to ``digit_size`` px) moving at constant speed
and reflecting off the canvas walls; overlapping digits combine by maximum, as in Moving MNIST.
The digit images follow the ``digits`` split (held-out videos show held-out images), and video
``i`` of a split is a pure function of ``(seed, split, i)``. Frames are ``uint8 (T, H, W)``
(grayscale); the trajectory is continuous, positions are rounded to whole pixels when drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clplat.data.moving_digits import Split, digit_pool

__all__ = ["BouncingDigits", "BouncingDigitsSpec", "render_bouncing"]

_SPLIT_ID = {"train": 0, "test": 1}


@dataclass(frozen=True)
class BouncingDigitsSpec:
    """How videos look; ``speed`` is in canvas pixels per frame."""

    canvas: int = 64
    digit_size: int = 28
    digits: int = 2
    frames: int = 20
    speed: tuple[float, float] = (2.0, 4.0)

    def __post_init__(self) -> None:
        if not 8 <= self.digit_size <= self.canvas:
            raise ValueError(f"digit_size must be in [8, canvas={self.canvas}], got {self.digit_size}")
        if self.digits < 1 or self.frames < 1:
            raise ValueError(f"digits and frames must be >= 1, got {self.digits}, {self.frames}")
        if not 0 <= self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed must be 0 <= low <= high, got {self.speed}")


def _bounce(pos: np.ndarray, vel: np.ndarray, room: float) -> None:
    """Reflect positions and velocities (in place) at the walls ``0`` and ``room``."""
    low, high = pos < 0, pos > room
    pos[low], vel[low] = -pos[low], -vel[low]
    pos[high], vel[high] = 2 * room - pos[high], -vel[high]
    np.clip(pos, 0.0, room, out=pos)


def render_bouncing(images: np.ndarray, frames: int, rng: np.random.Generator, spec: BouncingDigitsSpec) -> np.ndarray:
    """Render ``images (n, 8, 8)`` in [0, 1] bouncing for ``frames`` frames: ``uint8 (frames, H, W)``."""
    c, s = spec.canvas, spec.digit_size
    sprites = [np.clip(cv2.resize(im, (s, s), interpolation=cv2.INTER_LINEAR), 0, 1) for im in images]
    room = float(c - s)
    pos = rng.uniform(0.0, room, size=(len(images), 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=len(images))
    speed = rng.uniform(*spec.speed, size=len(images))
    vel = np.stack([np.sin(angle), np.cos(angle)], axis=1) * speed[:, None]
    out = np.zeros((frames, c, c), dtype=np.float32)
    for t in range(frames):
        for sprite, (y, x) in zip(sprites, np.rint(pos).astype(int), strict=True):
            np.maximum(out[t, y : y + s, x : x + s], sprite, out=out[t, y : y + s, x : x + s])
        pos += vel
        _bounce(pos, vel, room)
    return (out * 255.0 + 0.5).astype(np.uint8)


class BouncingDigits(Dataset):
    """``n_videos`` videos; item ``i`` is ``uint8 (T, H, W)``."""

    def __init__(self, split: Split = "train", n_videos: int = 1000, spec: BouncingDigitsSpec | None = None,
                 seed: int = 0) -> None:
        if split not in _SPLIT_ID:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n_videos < 1:
            raise ValueError("n_videos must be >= 1")
        self.split: Split = split
        self.n_videos = n_videos
        self.spec = spec or BouncingDigitsSpec()
        self.seed = seed

    def __len__(self) -> int:
        return self.n_videos

    def video(self, i: int, frames: int | None = None) -> np.ndarray:
        """Video ``i`` with ``frames`` frames (default ``spec.frames``); a longer video of the same
        index continues the same trajectory, which long-horizon evaluation relies on."""
        rng = np.random.default_rng([self.seed, _SPLIT_ID[self.split], i])
        images, _ = digit_pool(self.split)
        chosen = images[rng.integers(len(images), size=self.spec.digits)]
        return render_bouncing(chosen, frames or self.spec.frames, rng, self.spec)

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self.n_videos:
            raise IndexError(i)
        return torch.from_numpy(self.video(i))
