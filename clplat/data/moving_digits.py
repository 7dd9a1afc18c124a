"""Moving digits: a labelled synthetic video dataset, generated on the fly, nothing downloaded.

Each video shows one of scikit-learn's 8x8 handwritten digits, upscaled (default 8 -> 16 px) and
tinted with a random colour, moving over a dark noisy canvas (default 32x32, RGB).

- **Label** (default ``label="digit"``): the digit class, 10 classes; the digit bounces off the
  canvas walls at a random speed. With ``label="direction"`` the label is the motion direction
  (0 right, 1 left, 2 down, 3 up), the digit wraps around the canvas, and a model must look at
  several frames to tell the classes apart.
- **Split**: the digit images are split exactly like the ``digits`` dataset (stratified 20 %,
  split seed 0), so held-out videos only ever show held-out digit images.
- **Determinism**: video ``i`` of a split is a pure function of ``(seed, split, i)``, whatever the
  order, worker or machine.
- **Streams**: :class:`MovingDigitsStream` concatenates videos of random lengths into an endless
  stream with per-frame labels; this is what the streaming demo plays and scores.

Frames are ``uint8`` arrays ``(T, H, W, 3)`` in RGB order; the consumer normalises them (the
streaming runtime does it in ``clplat.streaming.sources.FrameSpec``), so video files, cameras and
the generator all go through one preprocessing path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

from clplat.data.digits import SPLIT_SEED

Split = Literal["train", "test"]
LabelKind = Literal["digit", "direction"]
DIRECTIONS = ("right", "left", "down", "up")
_DIRECTION_VECTORS = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]], dtype=np.float64)  # (dy, dx)
_SPLIT_ID = {"train": 0, "test": 1}


@dataclass(frozen=True)
class MovingDigitsSpec:
    """How videos look. ``speed`` is in canvas pixels per frame."""

    canvas: int = 32
    digit_size: int = 16
    frames: int = 16
    label: LabelKind = "digit"
    speed: tuple[float, float] = (0.7, 2.0)
    noise: float = 12.0
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 8 <= self.digit_size <= self.canvas:
            raise ValueError(f"digit_size must be in [8, canvas={self.canvas}], got {self.digit_size}")
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if not 0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed must be 0 < low <= high, got {self.speed}")
        if self.label not in ("digit", "direction"):
            raise ValueError(f"label must be 'digit' or 'direction', got {self.label!r}")

    @property
    def num_classes(self) -> int:
        return 10 if self.label == "digit" else len(DIRECTIONS)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)] if self.label == "digit" else list(DIRECTIONS)


@lru_cache(maxsize=4)
def digit_pool(split: Split, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digit images (float in [0, 1]) and classes of one split, same split as ``digits``."""
    if split not in _SPLIT_ID:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    bunch = load_digits()
    idx = np.arange(len(bunch.target))
    tr, te = train_test_split(idx, test_size=test_fraction, stratify=bunch.target, random_state=SPLIT_SEED)
    chosen = np.sort(tr if split == "train" else te)
    images = (bunch.images[chosen] / 16.0).astype(np.float32)
    images.setflags(write=False)
    targets = bunch.target[chosen].astype(np.int64)
    targets.setflags(write=False)
    return images, targets


def _sprite(image8: np.ndarray, size: int, tint: np.ndarray) -> np.ndarray:
    """Upscale an 8x8 digit to ``size`` px and colour it: float ``(size, size, 3)`` in [0, 255]."""
    big = cv2.resize(image8, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(big, 0.0, 1.0)[:, :, None] * tint[None, None, :] * 255.0


def render_video(image8: np.ndarray, frames: int, rng: np.random.Generator, spec: MovingDigitsSpec,
                 direction: int | None = None) -> np.ndarray:
    """Render one digit moving for ``frames`` frames: ``uint8 (frames, canvas, canvas, 3)``.

    ``direction=None`` bounces off the walls in a random direction; an int in 0..3 moves along
    that axis (see ``DIRECTIONS``) and wraps around the canvas.
    """
    c, s = spec.canvas, spec.digit_size
    tint = rng.uniform(0.55, 1.0, size=3)
    sprite = _sprite(image8, s, tint)
    background = rng.uniform(0.0, 40.0, size=3)
    speed = rng.uniform(*spec.speed)
    if direction is None:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
    else:
        vel = speed * _DIRECTION_VECTORS[direction] + rng.normal(0.0, 0.1, size=2)
    room = c - s
    pos = rng.uniform(0.0, room, size=2) if room > 0 else np.zeros(2)
    out = np.empty((frames, c, c, 3), dtype=np.uint8)
    for t in range(frames):
        canvas = np.empty((c, c, 3), dtype=np.float32)
        canvas[:] = background
        y, x = int(round(pos[0])), int(round(pos[1]))
        if direction is None:
            canvas[y:y + s, x:x + s] = np.maximum(canvas[y:y + s, x:x + s], sprite)
        else:
            layer = np.zeros((c, c, 3), dtype=np.float32)
            layer[:s, :s] = sprite
            canvas = np.maximum(canvas, np.roll(layer, (y % c, x % c), axis=(0, 1)))
        if spec.noise > 0:
            canvas += rng.normal(0.0, spec.noise, size=canvas.shape).astype(np.float32)
        out[t] = np.clip(canvas, 0, 255).astype(np.uint8)
        pos = pos + vel
        if direction is None:  # bounce: reflect position and velocity at the walls
            for k in range(2):
                if pos[k] < 0:
                    pos[k], vel[k] = -pos[k], -vel[k]
                elif pos[k] > room:
                    pos[k], vel[k] = 2 * room - pos[k], -vel[k]
                pos[k] = min(max(pos[k], 0.0), float(room))
    return out


def _video(split: Split, seed: int, index: int, frames: int, spec: MovingDigitsSpec,
           label: int | None = None) -> tuple[np.ndarray, int]:
    """Video ``index`` of a split; ``label`` forces the class (balanced datasets pass ``i % K``)."""
    rng = np.random.default_rng([seed, _SPLIT_ID[split], index])
    images, targets = digit_pool(split, spec.test_fraction)
    if spec.label == "digit":
        cls = int(rng.integers(10)) if label is None else label
        candidates = np.flatnonzero(targets == cls)
        image = images[candidates[rng.integers(len(candidates))]]
        return render_video(image, frames, rng, spec), cls
    cls = int(rng.integers(len(DIRECTIONS))) if label is None else label
    image = images[rng.integers(len(images))]
    return render_video(image, frames, rng, spec, direction=cls), cls


class MovingDigits(Dataset):
    """``n_videos`` clips of ``spec.frames`` frames with per-frame labels, classes balanced.

    Item ``i`` is ``(video uint8 (T, H, W, 3), labels int64 (T,))``. With ``switch_prob > 0`` a
    clip may start with the tail of another video and cut to this one at a random frame; the
    per-frame labels follow the cut. Training on such clips teaches a streaming model to change
    its mind quickly when the scene changes, which is what it meets on a live stream.

    With ``segment_frames=(lo, hi)`` a clip is instead a window of a stream like
    :class:`MovingDigitsStream`: videos of ``lo..hi`` frames one after the other, the window
    starting at a random frame of its first video, so clips hold 0, 1 or more cuts and the
    per-frame labels follow them (``switch_prob`` is then unused). The last video has class
    ``i % num_classes``, the earlier ones random classes.
    """

    def __init__(self, split: Split = "train", n_videos: int = 1000, spec: MovingDigitsSpec | None = None,
                 seed: int = 0, switch_prob: float = 0.0,
                 segment_frames: tuple[int, int] | None = None) -> None:
        if split not in _SPLIT_ID:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n_videos < 1:
            raise ValueError("n_videos must be >= 1")
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError("switch_prob must be in [0, 1]")
        self.split: Split = split
        self.n_videos = n_videos
        self.spec = spec or MovingDigitsSpec()
        self.seed = seed
        self.switch_prob = switch_prob
        if segment_frames is not None and not 1 <= segment_frames[0] <= segment_frames[1]:
            raise ValueError(f"segment_frames must be 1 <= low <= high, got {segment_frames}")
        self.segment_frames = segment_frames

    def __len__(self) -> int:
        return self.n_videos

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < self.n_videos:
            raise IndexError(i)
        if self.segment_frames is not None:
            return self._stream_window(i)
        k, t = self.spec.num_classes, self.spec.frames
        video, cls = _video(self.split, self.seed, i, t, self.spec, label=i % k)
        labels = np.full(t, cls, dtype=np.int64)
        rng = np.random.default_rng([self.seed, _SPLIT_ID[self.split], i, 1])
        if t > 1 and self.switch_prob > 0 and rng.random() < self.switch_prob:
            other = int(rng.integers(self.n_videos, 2 * self.n_videos))  # an index no clip uses
            prev, prev_cls = _video(self.split, self.seed, other, t, self.spec)
            cut = int(rng.integers(1, t))
            video = np.concatenate([prev[t - cut:], video[: t - cut]])
            labels = np.concatenate([np.full(cut, prev_cls), labels[: t - cut]]).astype(np.int64)
        return torch.from_numpy(video), torch.from_numpy(labels)

    def _stream_window(self, i: int) -> tuple[Tensor, Tensor]:
        """Clip ``i`` as a window of a segmented stream; see the class docstring."""
        assert self.segment_frames is not None
        lo, hi = self.segment_frames
        t, k = self.spec.frames, self.spec.num_classes
        rng = np.random.default_rng([self.seed, _SPLIT_ID[self.split], i, 2])
        lengths = []  # segment lengths inside the window, last first
        left = t
        while left > 0:
            n = int(rng.integers(lo, hi + 1))
            if not lengths:  # the window ends at a random frame of the last video
                n = int(rng.integers(1, n + 1))
            lengths.append(min(n, left))
            left -= lengths[-1]
        videos, labels = [], []
        for j, n in enumerate(reversed(lengths)):
            last = j == len(lengths) - 1
            index = i if last else int(rng.integers(self.n_videos, 64 * self.n_videos))
            video, cls = _video(self.split, self.seed, index, n, self.spec, label=i % k if last else None)
            videos.append(video)
            labels.append(np.full(n, cls, dtype=np.int64))
        return torch.from_numpy(np.concatenate(videos)), torch.from_numpy(np.concatenate(labels))

    @property
    def targets(self) -> np.ndarray:
        """The class of each video (its last frame's label when no cut happens)."""
        return np.arange(self.n_videos) % self.spec.num_classes


class MovingDigitsStream:
    """An endless stream of moving-digit videos, one after the other, with per-frame labels.

    Segment lengths are drawn in ``segment_frames`` (inclusive); iteration yields
    ``(frame uint8 (H, W, 3), label, segment_start)`` where ``segment_start`` marks a cut. Two
    streams with the same arguments yield the same frames.
    """

    def __init__(self, split: Split = "test", spec: MovingDigitsSpec | None = None, seed: int = 0,
                 segment_frames: tuple[int, int] = (32, 64)) -> None:
        if not 1 <= segment_frames[0] <= segment_frames[1]:
            raise ValueError(f"segment_frames must be 1 <= low <= high, got {segment_frames}")
        self.split: Split = split
        self.spec = spec or MovingDigitsSpec()
        self.seed = seed
        self.segment_frames = segment_frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, int, bool]]:
        rng = np.random.default_rng([self.seed, _SPLIT_ID[self.split], 2**31 - 1])
        index = 0
        while True:
            length = int(rng.integers(self.segment_frames[0], self.segment_frames[1] + 1))
            video, cls = _video(self.split, self.seed + 7919, index, length, self.spec)
            for t in range(length):
                yield video[t], cls, t == 0
            index += 1


__all__ = ["DIRECTIONS", "MovingDigits", "MovingDigitsSpec", "MovingDigitsStream", "digit_pool",
           "render_video"]
