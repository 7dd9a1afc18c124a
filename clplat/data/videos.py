"""Videos as a dataset for neural video representations (``dataset: videos``, PFNR).

Each video is one session of ``scenario.kind: video_sessions``. A sample is one frame: ``x`` the
frame as float ``(3, H, W)`` in [0, 1] and ``y`` its *global frame id* (frames of video 0 first).
The id is the INR's coordinate, not a class: exposing a session's ids in ascending order makes the
exposure index equal to the global id, so a strategy recovers (video, frame) from the offsets.

Sources: ``data.videos`` lists files (mp4/avi/..., read with PyAV) or folders of frame images
(name order). Frames are area-pooled (``adaptive_avg_pool2d``, as NeRV pools its 1080p targets)
to ``data.size`` and stored as ``uint8``; ``data.stride`` keeps every k-th frame and
``data.max_frames`` caps the count. Without ``data.videos`` a built-in set of generated videos is
used (moving digits, a drifting procedural texture, a zooming pattern), a pure function of
``data.builtin_seed`` and the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor
from torch.utils.data import Dataset

from clplat.data import DATASETS
from clplat.data.base import ClassificationData, DataConfig
from clplat.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
Builtin = Literal["digits", "texture", "zoom"]


class VideosConfig(DataConfig):
    """``data:`` of ``dataset: videos``. ``size`` = [H, W] of the targets (area pooling)."""

    dataset: str = "videos"
    videos: list[str] | None = Field(None, description="video files or frame folders; None: built-in")
    size: tuple[int, int] = (64, 64)
    max_frames: int | None = Field(None, ge=1)
    stride: int = Field(1, ge=1)
    builtin: list[Builtin] = Field(default_factory=lambda: ["digits", "texture", "zoom"])
    builtin_frames: int = Field(24, ge=1, description="frames of each built-in video (before stride)")
    builtin_seed: int = 0

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"size must be positive, got {list(v)}")
        return v


class FrameSplit(Dataset):
    """All frames, ``uint8 (N, 3, H, W)``; items are ``(float frame in [0, 1], global frame id)``."""

    def __init__(self, frames: Tensor) -> None:
        self.frames = frames.contiguous()

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.frames[i].float() / 255.0, torch.tensor(i)

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return self.frames[index].float() / 255.0, index

    @property
    def targets(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)


@dataclass
class VideoData(ClassificationData):
    """Frames of every video; ``offsets[v]:offsets[v+1]`` are video v's global frame ids."""

    names: list[str] | None = None
    offsets: list[int] | None = None

    def video(self, v: int) -> Tensor:
        """Video ``v`` as float ``(T, 3, H, W)`` in [0, 1]."""
        assert self.offsets is not None
        return self.train.frames[self.offsets[v]:self.offsets[v + 1]].float() / 255.0


# --- reading ----------------------------------------------------------------------------------------
def read_video_file(path: Path) -> list[np.ndarray]:
    """Every frame of a video file as ``uint8 (H, W, 3)`` RGB, with PyAV; unreadable -> UserError."""
    import av

    av.logging.set_level(None)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as err:
        raise UserError(f"data.videos: cannot read video '{path}' ({type(err).__name__})") from None


def read_frame_folder(path: Path) -> list[np.ndarray]:
    import cv2

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"data.videos: cannot read frame image '{f}'")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def pool_frames(frames: list[np.ndarray], size: tuple[int, int], name: str) -> Tensor:
    """``uint8 (T, 3, H, W)`` area-pooled to ``size``; frames must share a shape and not be smaller."""
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise UserError(f"data.videos: '{name}' has frames of different sizes {sorted(shapes)}")
    h, w = frames[0].shape[:2]
    if h < size[0] or w < size[1]:
        raise UserError(f"data.videos: '{name}' is {h}x{w}, smaller than data.size {size[0]}x{size[1]}")
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    if (h, w) != tuple(size):
        x = F.adaptive_avg_pool2d(x, size)
    return x.round().clamp(0, 255).to(torch.uint8)


def load_video(source: str, cfg: VideosConfig) -> Tensor:
    """One entry of ``data.videos`` -> ``uint8 (T, 3, H, W)`` after stride, cap and pooling."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data.videos: '{source}' not found")
    frames = read_frame_folder(path) if path.is_dir() else read_video_file(path)
    frames = frames[:: cfg.stride][: cfg.max_frames]
    if not frames:
        raise UserError(f"data.videos: '{source}' has no frames")
    return pool_frames(frames, cfg.size, source)


# --- built-in generated videos ----------------------------------------------------------------------
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return yy, xx


def gen_digits(h: int, w: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """Two coloured handwritten digits bouncing over a slowly shifting colour gradient."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0
    yy, xx = _grid(h, w)
    side = max(8, min(h, w) // 3)
    sprites = [cv2.resize(digits[rng.integers(len(digits))], (side, side), interpolation=cv2.INTER_LINEAR)
               for _ in range(2)]
    tints = rng.uniform(0.5, 1.0, size=(2, 3))
    pos = rng.uniform(0, [h - side, w - side], size=(2, 2))
    vel = rng.uniform(-1, 1, size=(2, 2)) * min(h, w) / 24
    base = rng.uniform(0.1, 0.4, size=3)
    out = np.empty((frames, h, w, 3), dtype=np.float64)
    for t in range(frames):
        canvas = base + 0.15 * np.stack([xx, yy, np.sin(xx * 2 + t / 5)], -1)
        for k in range(2):
            y, x = (int(round(v)) for v in pos[k])
            layer = np.clip(sprites[k], 0, 1)[:, :, None] * tints[k]
            canvas[y:y + side, x:x + side] = np.maximum(canvas[y:y + side, x:x + side], layer)
        out[t] = canvas
        pos += vel
        for k in range(2):  # reflect at the walls
            for d, room in enumerate((h - side, w - side)):
                if not 0 <= pos[k, d] <= room:
                    vel[k, d] = -vel[k, d]
                    pos[k, d] = np.clip(pos[k, d], 0, room)
    return out


def gen_texture(h: int, w: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural texture (a few oriented plane waves per channel) drifting and slowly rotating."""
    yy, xx = _grid(h, w)
    n = 4
    freq = rng.uniform(2, 6, size=(3, n))
    angle = rng.uniform(0, np.pi, size=(3, n))
    speed = rng.uniform(-0.3, 0.3, size=(3, n))
    out = np.empty((frames, h, w, 3), dtype=np.float64)
    for t in range(frames):
        for c in range(3):
            a = angle[c] + 0.01 * t
            proj = np.cos(a)[:, None, None] * xx + np.sin(a)[:, None, None] * yy
            waves = np.sin(np.pi * freq[c][:, None, None] * proj + speed[c][:, None, None] * t)
            out[t, :, :, c] = 0.5 + 0.5 * waves.mean(0)
    return out


def gen_zoom(h: int, w: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """Rings and a checkerboard, zooming in about a drifting centre."""
    yy, xx = _grid(h, w)
    centre = rng.uniform(-0.3, 0.3, size=2)
    rate = rng.uniform(0.03, 0.06)
    colours = rng.uniform(0.1, 0.9, size=(2, 3))
    out = np.empty((frames, h, w, 3), dtype=np.float64)
    for t in range(frames):
        z = np.exp(rate * t)
        cy, cx = centre + 0.01 * t
        r = np.hypot(yy - cy, xx - cx) * 6 / z
        checker = (np.floor((xx - cx) * 4 / z) + np.floor((yy - cy) * 4 / z)) % 2
        mix = 0.5 + 0.5 * np.cos(np.pi * 2 * r) * (0.5 + 0.5 * checker)
        out[t] = colours[0] * mix[..., None] + colours[1] * (1 - mix[..., None])
    return out


GENERATORS = {"digits": gen_digits, "texture": gen_texture, "zoom": gen_zoom}


def builtin_video(kind: str, cfg: VideosConfig, index: int) -> Tensor:
    """Generated at twice ``data.size`` and area-pooled, like a real video: ``uint8 (T, 3, H, W)``."""
    h, w = cfg.size
    rng = np.random.default_rng([cfg.builtin_seed, index])
    video = GENERATORS[kind](2 * h, 2 * w, cfg.builtin_frames, rng)
    frames = [np.clip(f * 255.0, 0, 255).round().astype(np.uint8) for f in video]
    return pool_frames(frames[:: cfg.stride][: cfg.max_frames], cfg.size, kind)


@DATASETS.register("videos", config=VideosConfig)
def build_videos(cfg: VideosConfig, seed: int) -> VideoData:
    """All sessions' frames; the same config always gives the same frames (``seed`` is unused)."""
    if cfg.videos is not None and not cfg.videos:
        raise UserError("data.videos: the list is empty")
    if cfg.videos is None:
        names = list(cfg.builtin)
        if not names:
            raise UserError("data.builtin: no built-in video chosen")
        videos = [builtin_video(k, cfg, i) for i, k in enumerate(names)]
    else:
        names = [Path(v).stem or str(v) for v in cfg.videos]
        videos = [load_video(v, cfg) for v in cfg.videos]
    offsets = np.cumsum([0] + [len(v) for v in videos]).tolist()
    split = FrameSplit(torch.cat(videos))
    targets = split.targets
    return VideoData(name="videos", train=split, test=split, train_targets=targets, test_targets=targets,
                     class_names=[f"{names[v]}:{t}" for v in range(len(videos)) for t in range(len(videos[v]))],
                     input_shape=(3, *cfg.size), names=names, offsets=offsets)
