"""Frame sources for the streaming runtime: webcam, video files, image folders, the generator.

Every source yields :class:`Frame` objects holding the *original* RGB ``uint8`` image, so a sink
can draw on what the user sees; :class:`FrameSpec` turns a frame into the model's input tensor
(centre crop to the model's aspect, resize, scale to [0, 1], normalise). Training uses the same
``FrameSpec`` on its clips, so a live frame and a training frame go through one code path.

Errors a user can cause (missing file, no camera, corrupt video, empty folder) raise
:class:`clplat.errors.UserError` with one clear line. Frames that cannot be decoded in the middle
of a stream are skipped and counted in ``source.skipped``; ``source.end_reason`` says why the
stream ended.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from clplat.data.moving_digits import MovingDigitsSpec, MovingDigitsStream
from clplat.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Our errors say it in one line: silence OpenCV's and its bundled FFmpeg's own console logging.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@dataclass(frozen=True)
class FrameSpec:
    """The model's input: ``size`` (H, W), RGB, and per-channel ``mean``/``std`` on [0, 1] values."""

    size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    def fit(self, image: np.ndarray) -> np.ndarray:
        """Centre-crop ``image`` (H, W, 3) to the model's aspect ratio, then resize to ``size``."""
        h, w = image.shape[:2]
        th, tw = self.size
        if (h, w) == (th, tw):
            return image
        if h * tw != w * th:  # crop the longer side so nothing is stretched
            if h * tw > w * th:
                ch = max(1, round(w * th / tw))
                top = (h - ch) // 2
                image = image[top:top + ch]
            else:
                cw = max(1, round(h * tw / th))
                left = (w - cw) // 2
                image = image[:, left:left + cw]
        shrinking = image.shape[0] > th
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image), (tw, th), interpolation=interp)

    def normalize(self, frames: Tensor) -> Tensor:
        """``uint8 (..., H, W, 3)`` -> ``float32 (..., 3, H, W)``, normalised; frames already sized."""
        x = frames.float().div_(255.0).movedim(-1, -3)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def clip_tensor(self, video: Tensor) -> Tensor:
        """A batch of sized clips ``uint8 (B, T, H, W, 3)`` -> model input ``(B, 3, T, H, W)``."""
        return self.normalize(video).transpose(1, 2).contiguous()

    def to_tensor(self, image: np.ndarray) -> Tensor:
        """One frame ``uint8 (H, W, 3)`` of any size -> model input ``(1, 3, H, W)``."""
        return self.normalize(torch.from_numpy(np.ascontiguousarray(self.fit(image)))).unsqueeze(0)

    def to_dict(self) -> dict[str, list]:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> FrameSpec:
        return cls(size=tuple(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ResizeCropSpec(FrameSpec):
    """torchvision's video preset (``VideoClassification``): every frame resized to ``resize``
    (H, W) regardless of its aspect, then centre-cropped to ``size``, scaled and normalised.
    Resizing uses OpenCV (area averaging when shrinking, which stands in for torchvision's
    antialiased bilinear; bilinear when enlarging)."""

    resize: tuple[int, int] = (128, 171)

    def fit(self, image: np.ndarray) -> np.ndarray:
        rh, rw = self.resize
        th, tw = self.size
        if image.shape[:2] != (rh, rw):
            interp = cv2.INTER_AREA if image.shape[0] > rh else cv2.INTER_LINEAR
            image = cv2.resize(np.ascontiguousarray(image), (rw, rh), interpolation=interp)
        top, left = int(round((rh - th) / 2)), int(round((rw - tw) / 2))  # as torchvision's center_crop
        return image[top:top + th, left:left + tw]


@dataclass
class Frame:
    """One frame: ``image`` is RGB ``uint8 (H, W, 3)`` at the source's resolution."""

    image: np.ndarray
    index: int
    label: int | None = None
    segment_start: bool = False


@dataclass
class FrameSource:
    """Base of all sources: iterate for frames, ``close()`` to release the device or file."""

    name: str
    fps: float = 25.0
    class_names: list[str] | None = None
    has_labels: bool = False
    skipped: int = 0
    end_reason: str = "not started"
    _closed: bool = field(default=False, repr=False)

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EveryNth(FrameSource):
    """Every ``n``-th frame of ``source`` (for a model trained at a lower frame rate); the
    source's labels, skip count and end reason show through."""

    def __init__(self, source: FrameSource, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        super().__init__(name=source.name if n == 1 else f"{source.name} (every {n}th frame)",
                         fps=source.fps / n, class_names=source.class_names, has_labels=source.has_labels)
        self.source, self.n = source, n

    def __iter__(self) -> Iterator[Frame]:
        kept = 0
        try:
            for i, frame in enumerate(self.source):
                if i % self.n == 0:
                    frame.index = kept
                    kept += 1
                    yield frame
        finally:
            self.skipped, self.end_reason = self.source.skipped, self.source.end_reason

    def close(self) -> None:
        super().close()
        self.source.close()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class CaptureSource(FrameSource):
    """OpenCV ``VideoCapture`` over a camera index or a video file."""

    def __init__(self, name: str, capture: cv2.VideoCapture, *, live: bool, expected: int = 0) -> None:
        fps = capture.get(cv2.CAP_PROP_FPS)
        super().__init__(name=name, fps=fps if 0 < fps < 1000 else 25.0)
        self.capture = capture
        self.live = live
        self.expected = expected

    def __iter__(self) -> Iterator[Frame]:
        index, failures = 0, 0
        self.end_reason = "running"
        while not self._closed:
            ok, bgr = self.capture.read()
            if not ok or bgr is None:
                if self.live and failures < 10:  # a camera may drop a frame; give it a few tries
                    failures += 1
                    self.skipped += 1
                    continue
                if self.live:
                    self.end_reason = f"camera stopped delivering frames after {index} frames"
                elif self.expected and index < self.expected - 1:
                    self.end_reason = (f"decoding stopped at frame {index} of {self.expected} "
                                       "(truncated or corrupt video)")
                else:
                    self.end_reason = f"end of video after {index} frames"
                return
            failures = 0
            yield Frame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index=index)
            index += 1
        self.end_reason = f"stopped after {index} frames"

    def close(self) -> None:
        super().close()
        self.capture.release()


class PyAVSource(FrameSource):
    """PyAV decoding, used for files OpenCV cannot open; corrupt packets are skipped and counted."""

    def __init__(self, name: str, path: Path) -> None:
        import av

        av.logging.set_level(None)
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as err:
            raise UserError(f"cannot read video '{path}': not a decodable video file "
                            f"({getattr(err, 'strerror', None) or err})") from None
        rate = self.stream.average_rate
        super().__init__(name=name, fps=float(rate) if rate else 25.0)

    def __iter__(self) -> Iterator[Frame]:
        import av

        index = 0
        self.end_reason = "running"
        for packet in self.container.demux(self.stream):
            if self._closed:
                break
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                self.skipped += 1
                continue
            for frame in decoded:
                yield Frame(image=frame.to_ndarray(format="rgb24"), index=index)
                index += 1
        self.end_reason = f"end of video after {index} frames"

    def close(self) -> None:
        super().close()
        self.container.close()


def open_video(path: str | Path) -> FrameSource:
    """A video file (mp4, avi, ...) through OpenCV, else PyAV; fails early if no frame decodes."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"video file not found: {p}")
    capture = cv2.VideoCapture(str(p))
    if capture.isOpened():
        ok, _ = capture.read()
        if ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            return CaptureSource(p.name, capture, live=False, expected=max(expected, 0))
    capture.release()
    probe = PyAVSource(p.name, p)
    first = next(iter(probe), None)
    probe.close()
    if first is None:
        raise UserError(f"cannot read video '{p}': no decodable frames (corrupt or unsupported codec)")
    return PyAVSource(p.name, p)


def open_webcam(index: int = 0) -> FrameSource:
    """Camera ``index`` through OpenCV; a missing camera is a user error, not a traceback."""
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise UserError(f"no camera found at index {index} (could not open webcam {index})")
    return CaptureSource(f"webcam:{index}", capture, live=True)


class ImageFolderSource(FrameSource):
    """Images of a folder in name order, one frame each; unreadable files are skipped, with a warning."""

    def __init__(self, folder: str | Path, fps: float = 25.0) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"image folder not found: {root}")
        self.files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"image folder '{root}' has no images ({', '.join(IMAGE_SUFFIXES)})")
        super().__init__(name=root.name or str(root), fps=fps)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        self.end_reason = "running"
        for path in self.files:
            if self._closed:
                break
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                self.skipped += 1
                _warn(f"skipping unreadable image {path.name}")
                continue
            yield Frame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index=index)
            index += 1
        if index == 0:
            raise UserError(f"image folder '{self.name}': none of {len(self.files)} images could be read")
        self.end_reason = f"end of folder after {index} images ({self.skipped} unreadable)"


class SyntheticSource(FrameSource):
    """The moving-digits generator as a labelled live stream (held-out digits by default)."""

    def __init__(self, spec: MovingDigitsSpec | None = None, seed: int = 0, split: str = "test",
                 segment_frames: tuple[int, int] = (32, 64), fps: float = 25.0) -> None:
        self.stream = MovingDigitsStream(split=split, spec=spec, seed=seed,  # type: ignore[arg-type]
                                         segment_frames=segment_frames)
        super().__init__(name=f"synthetic:{split}", fps=fps, class_names=self.stream.spec.class_names,
                         has_labels=True)

    def __iter__(self) -> Iterator[Frame]:
        self.end_reason = "running"
        for index, (image, label, start) in enumerate(self.stream):
            if self._closed:
                break
            yield Frame(image=image, index=index, label=label, segment_start=start)
        self.end_reason = "stopped"


def open_source(spec: str, *, synthetic: MovingDigitsSpec | None = None, seed: int = 0) -> FrameSource:
    """``synthetic`` | ``webcam`` | ``webcam:N`` | a video file | an image folder -> a source."""
    if spec == "synthetic":
        return SyntheticSource(synthetic, seed=seed)
    if spec == "webcam" or spec.startswith("webcam:"):
        raw = spec.partition(":")[2] or "0"
        if not raw.isdigit():
            raise UserError(f"webcam index must be an integer, got '{raw}'")
        return open_webcam(int(raw))
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path)
    if path.is_file():
        return open_video(path)
    raise UserError(f"source not found: '{spec}' (expected webcam, synthetic, a video file or an image "
                    "folder)")


__all__ = ["EveryNth", "Frame", "FrameSource", "FrameSpec", "ImageFolderSource", "ResizeCropSpec", "SyntheticSource",
           "open_source", "open_video", "open_webcam"]
