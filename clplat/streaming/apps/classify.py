"""Clip classifiers trained by ``python -m clplat.stream train`` (X3D, LRCN), played per frame.

Each frame goes through the converted network's ``step`` once; an emitted prediction belongs to
the frame ``delay`` steps back, and is scored against that frame's label when the source has
labels (the synthetic moving-digits stream). Frames are drawn with the prediction, its
confidence and the step latency.
"""

from __future__ import annotations

import argparse
from collections import deque
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clplat.streaming.apps import STREAM_APPS, ModelRef, StreamApp, StreamTrack

__all__ = ["SHIPPED", "ClassifierApp", "label_text"]

SHIPPED = {
    "stream_x3d_moving_digits": "stream_x3d_moving_digits.safetensors",
    "stream_lrcn_moving_digits": "stream_lrcn_moving_digits.safetensors",
}


def label_text(class_names: list[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


class ClassifierTrack(StreamTrack):
    """One stream: pending labels (scored as their predictions arrive) and the shown text."""

    def __init__(self, app: ClassifierApp, source: Any) -> None:
        self.app, self.source = app, source
        self.labelled = bool(source.has_labels)
        self.pending: deque[int] = deque()
        self.pred_text, self.step_text = "warming up", ""
        self.hits = self.scored = 0

    def input(self, frame: Any) -> Tensor:
        return self.app.spec.to_tensor(frame.image)

    def prediction(self, y: Tensor) -> tuple[int, float]:
        """``(class, confidence)`` of one stream's output."""
        probs = torch.softmax(y.reshape(y.shape[0], -1).float(), dim=1)[0].cpu()
        conf, idx = probs.max(0)
        return int(idx), float(conf)

    def update(self, frame: Any, y: Tensor | None, step_s: float) -> None:
        if self.labelled and frame.label is not None:
            self.pending.append(frame.label)
        self.step_text = f"step {1e3 * step_s:.1f} ms"
        if y is not None:
            idx, conf = self.prediction(y)
            self.pred_text = f"pred {label_text(self.app.class_names, idx)} ({conf:.0%})"
            if self.pending:
                self.scored += 1
                self.hits += idx == self.pending.popleft()

    def draw(self, frame: Any) -> np.ndarray:
        from clplat.streaming.sinks import annotate

        lines = [self.pred_text, self.step_text]
        if frame.label is not None and self.labelled:
            lines.append(f"true {label_text(self.app.class_names, frame.label)}")
        return annotate(frame.image, lines)

    def summary(self) -> dict[str, Any]:
        if not self.scored:
            return {}
        return {"accuracy": {"per_frame": round(self.hits / self.scored, 4), "scored": self.scored}}


@STREAM_APPS.register("classify")
class ClassifierApp(StreamApp):
    """A ``clplat.stream_model/1`` file (X3D or LRCN clip classifier), converted and stepped."""

    shipped = SHIPPED
    formats = ("clplat.stream_model/1",)

    def __init__(self, ref: ModelRef, args: argparse.Namespace) -> None:
        from clplat.streaming import convert
        from clplat.streaming.sources import FrameSpec
        from clplat.streaming.training.weights import load_trained

        super().__init__(ref, args)
        net, self.meta = load_trained(ref.path)
        self.spec = FrameSpec.from_dict(self.meta["input"])
        self.class_names = list(self.meta.get("class_names") or [])
        self.make_step(convert(net))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "arch": self.meta.get("arch")}

    def open_source(self, spec: str, seed: int) -> Any:
        """Sources of ``clplat.streaming.sources``; ``synthetic`` shows digits like the training data's."""
        from clplat.data.moving_digits import MovingDigitsSpec
        from clplat.streaming.sources import open_source

        data = self.meta.get("data", {})
        look = MovingDigitsSpec(canvas=data.get("canvas", self.spec.size[0]), digit_size=data.get("digit_size", 16),
                                label=data.get("label", "digit"))
        return open_source(spec, synthetic=look, seed=seed)

    def lines(self, stream_summary: dict[str, Any]) -> list[str]:
        acc = stream_summary.get("accuracy")
        return [f"per-frame accuracy {acc['per_frame']:.4f} over {acc['scored']} frames"] if acc else []

    def track(self, source: Any) -> StreamTrack:
        if source.class_names and source.class_names != self.class_names:
            source.has_labels = False  # the source's labels are not this model's classes
        return ClassifierTrack(self, source)
