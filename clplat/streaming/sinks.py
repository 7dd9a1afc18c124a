"""Where streaming predictions go: a live window, an annotated video file, latency statistics.

A live window needs a display (``DISPLAY``/``WAYLAND_DISPLAY`` set and an OpenCV build with
highgui); headless machines get an annotated video file instead. Every frame is drawn with its
prediction, confidence and per-frame latency, upscaled first so the text stays legible on the
32x32 frames of the synthetic source. Files are written under a temporary name and renamed when
complete, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clplat.errors import UserError
from clplat.io import atomic_write_text

_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def display_available() -> bool:
    """True when a window can be opened: a display is set and OpenCV's highgui works."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("clplat-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("clplat-probe")
    except cv2.error:
        return False
    return True


@dataclass
class LatencyStats:
    """Per-frame latencies in seconds; ``summary()`` gives mean/p50/p95/p99 in ms and frames/s."""

    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def summary(self) -> dict[str, float | int]:
        if not self.samples:
            return {"frames": 0}
        ms = np.asarray(self.samples, dtype=np.float64) * 1e3
        mean = float(ms.mean())
        return {
            "frames": int(ms.size),
            "mean_ms": round(mean, 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "max_ms": round(float(ms.max()), 4),
            "fps": round(1e3 / mean, 2) if mean > 0 else float("inf"),
        }


def write_json(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON atomically (temporary file, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return p


def annotate(image: np.ndarray, lines: list[str], min_side: int = 256,
             color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Upscale an RGB frame to at least ``min_side`` px and draw ``lines``; returns BGR for OpenCV."""
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / min(h, w))))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if scale > 1:
        bgr = cv2.resize(bgr, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    font_scale = max(0.4, min(bgr.shape[:2]) / 500)
    thick = max(1, int(round(font_scale * 2)))
    y = int(22 * font_scale / 0.5)
    step = y
    font = cv2.FONT_HERSHEY_SIMPLEX
    for text in lines:  # dark outline first, so the text reads on any background
        cv2.putText(bgr, text, (6, y), font, font_scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(bgr, text, (6, y), font, font_scale, color[::-1], thick, cv2.LINE_AA)
        y += step
    return bgr


class VideoFileSink:
    """Annotated frames into an mp4 (``mp4v``) or avi (``MJPG``); the frame size is fixed by the first."""

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _FOURCC:
            raise UserError(f"--out must end in one of {', '.join(sorted(_FOURCC))}, got '{self.path.name}'")
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.stem + ".partial" + suffix)
        self.fps = fps if fps > 0 else 25.0
        self.fourcc = cv2.VideoWriter_fourcc(*_FOURCC[suffix])
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        h, w = bgr.shape[:2]
        if self.writer is None:
            self.size = (w + w % 2, h + h % 2)  # most codecs want even sizes
            self.writer = cv2.VideoWriter(str(self.tmp), self.fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise UserError(f"cannot write video '{self.path}' (OpenCV VideoWriter failed to open)")
        if (w, h) != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_NEAREST)
        self.writer.write(np.ascontiguousarray(bgr))
        self.frames += 1

    def close(self, keep: bool = True) -> Path | None:
        """Finish the file; ``keep=False`` (an aborted run) deletes it instead."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if keep and self.frames and self.tmp.exists():
            os.replace(self.tmp, self.path)
            return self.path
        self.tmp.unlink(missing_ok=True)
        return None


class WindowSink:
    """A live OpenCV window; pressing ``q`` or Esc asks the caller to stop."""

    def __init__(self, title: str = "clplat stream") -> None:
        self.title = title
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def write(self, bgr: np.ndarray) -> bool:
        """Show a frame; returns False when the user asked to quit."""
        cv2.imshow(self.title, bgr)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


__all__ = ["LatencyStats", "VideoFileSink", "WindowSink", "annotate", "display_available", "write_json"]
