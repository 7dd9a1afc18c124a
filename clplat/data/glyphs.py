"""Procedurally generated glyphs: many classes of letter-like stroke figures, no digits, no downloads.

Why: the shipped backbone must be pretrained honestly, on data that shares no classes with the
built-in stream (scikit-learn digits). Each class is a fixed random figure of 2-4 strokes (lines,
Bezier curves, arcs, polygon outlines, dots) drawn from its own seeded generator; each sample is
that figure under a random affine warp, control-point jitter and stroke width, rendered with PIL
at 64 px, then degraded to a random resolution (8-32 px) and resized to ``image_size``, so the
features learned also cope with tiny, blurry inputs such as the 8x8 digits.

The data depends only on (first_class, num_classes, train_per_class, test_per_class,
image_size): the task, not the run seed, fixes it, like ``synthetic``. ``first_class`` selects the
figures ``first_class .. first_class + num_classes - 1`` (relabelled ``0 .. num_classes - 1``), so a
stream can use classes the shipped backbone never saw: it was pretrained on classes 0-99.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pydantic import Field

from clplat.data import DATASETS
from clplat.data.base import ClassificationData, DataConfig, TensorSplit, resize_images, standardize

GLYPH_SEED = 20_231_002
CANVAS = 64
DEGRADE_SIZES = (8, 10, 12, 16, 24, 32)

Stroke = tuple[str, np.ndarray]  # (kind, control points in the unit square, shape (k, 2))


def glyph_strokes(class_id: int) -> list[Stroke]:
    """The fixed figure of one class: 2-4 strokes with control points in [0.12, 0.88]^2."""
    rng = np.random.default_rng([GLYPH_SEED, class_id])
    strokes: list[Stroke] = []
    for _ in range(int(rng.integers(2, 5))):
        kind = str(rng.choice(["line", "bezier", "arc", "polygon", "dot"], p=[0.3, 0.3, 0.15, 0.15, 0.1]))
        n_pts = {"line": 2, "bezier": 3, "arc": 3, "polygon": int(rng.integers(3, 5)), "dot": 1}[kind]
        pts = rng.uniform(0.12, 0.88, size=(n_pts, 2))
        if kind == "arc":  # centre, (radius, unused), (start angle, sweep) in unit-square units
            pts[1] = (rng.uniform(0.12, 0.35), 0.0)
            pts[2] = (rng.uniform(0, 1), rng.uniform(0.3, 0.85))
        strokes.append((kind, pts))
    return strokes


def _polyline(kind: str, pts: np.ndarray) -> np.ndarray:
    """Dense points along one stroke (unit-square coordinates)."""
    t = np.linspace(0.0, 1.0, 24)[:, None]
    if kind == "bezier":
        return (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t**2 * pts[2]
    if kind == "arc":
        start, sweep = pts[2, 0] * 2 * math.pi, pts[2, 1] * 2 * math.pi
        ang = start + sweep * t[:, 0]
        return pts[0] + pts[1, 0] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if kind == "polygon":
        return np.concatenate([pts, pts[:1]], axis=0)
    return pts


def render_glyph(strokes: list[Stroke], rng: np.random.Generator) -> np.ndarray:
    """One random rendition of a figure on a ``CANVAS`` x ``CANVAS`` float32 image in [0, 1]."""
    angle = rng.uniform(-0.3, 0.3)
    scale = rng.uniform(0.8, 1.1, size=2)
    shear = rng.uniform(-0.25, 0.25)
    shift = rng.uniform(-0.08, 0.08, size=2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    warp = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    width = max(1, int(round(rng.uniform(2.5, 6.5))))
    fg = int(rng.uniform(180, 255))
    img = Image.new("L", (CANVAS, CANVAS), int(rng.uniform(0, 40)))
    draw = ImageDraw.Draw(img)
    for kind, pts in strokes:
        pts = pts + rng.normal(0.0, 0.025, size=pts.shape) * (kind != "arc")
        line = (_polyline(kind, pts) - 0.5) @ warp.T + 0.5 + shift
        xy = [(float(a), float(b)) for a, b in line * CANVAS]
        if kind == "dot":
            (cx, cy), r = xy[0], width * 0.9
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        else:
            draw.line(xy, fill=fg, width=width, joint="curve")
    return np.asarray(img, dtype=np.float32) / 255.0


def _degrade(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Resize each image through a random low resolution, then to ``size`` (bilinear, antialiased)."""
    out = torch.empty((x.shape[0], 1, size, size))
    low = rng.choice(DEGRADE_SIZES, size=x.shape[0])
    for res in np.unique(low):
        sel = torch.from_numpy(np.nonzero(low == res)[0])
        small = F.interpolate(x[sel], size=(int(res), int(res)), mode="bilinear", antialias=True,
                              align_corners=False)
        out[sel] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return out


def make_glyphs(num_classes: int, per_class: int, size: int, rng: np.random.Generator,
                first_class: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_classes * per_class, 1, size, size)`` images in [0, 1] and labels ``0 ..
    num_classes - 1`` (label j is figure ``first_class + j``), shuffled."""
    figures = [glyph_strokes(first_class + c) for c in range(num_classes)]
    y = np.repeat(np.arange(num_classes), per_class)
    canvas = np.stack([render_glyph(figures[c], rng) for c in y])
    x = _degrade(torch.from_numpy(canvas).unsqueeze(1), size, rng)
    x = (x + torch.from_numpy(rng.normal(0.0, 0.03, size=x.shape).astype(np.float32))).clamp_(0, 1)
    perm = torch.from_numpy(rng.permutation(len(y)))
    return x[perm].contiguous(), torch.from_numpy(y)[perm].contiguous()


class GlyphsConfig(DataConfig):
    num_classes: int = Field(10, gt=1)
    first_class: int = Field(0, ge=0, description="first glyph class id (classes relabelled from 0)")
    train_per_class: int = Field(60, gt=0)
    test_per_class: int = Field(20, gt=0)


@DATASETS.register("glyphs", config=GlyphsConfig)
def build_glyphs(cfg, seed: int) -> ClassificationData:
    """Uses ``data.first_class`` / ``num_classes`` / ``train_per_class`` / ``test_per_class`` /
    ``image_size`` (32)."""
    size = cfg.image_size or 32
    first = int(getattr(cfg, "first_class", 0))
    # first_class 0 keeps the seed the shipped backbone was pretrained with (same images).
    rng = np.random.default_rng([GLYPH_SEED, cfg.num_classes, cfg.train_per_class, size] + ([first] if first else []))
    x_tr, y_tr = make_glyphs(cfg.num_classes, cfg.train_per_class, size, rng, first)
    x_te, y_te = make_glyphs(cfg.num_classes, cfg.test_per_class, size, rng, first)
    x_tr, x_te = resize_images(x_tr, None, cfg.channels), resize_images(x_te, None, cfg.channels)
    mean = std = None
    if cfg.normalize:
        x_tr, x_te, mean, std = standardize(x_tr, x_te)
    return ClassificationData(
        name="glyphs",
        train=TensorSplit(x_tr, y_tr, mean, std),
        test=TensorSplit(x_te, y_te, mean, std),
        train_targets=y_tr.numpy(),
        test_targets=y_te.numpy(),
        class_names=[f"glyph_{first + i}" for i in range(cfg.num_classes)],
        input_shape=tuple(x_tr.shape[1:]),
    )
