"""Event-camera optical flow (``evflow_lstm``, ``evflow_snn``): one 10 ms bin in, one flow out.

``python -m clplat.stream --model evflow_lstm --source recording.h5 --out flow.mp4``. The source is
an event file in any format ``clplat.events`` reads, ``sim:VIDEO`` (a video through the event
simulator on the fly) or ``synthetic`` (a held-out synthetic scene); see
``clplat.streaming.event_source``. Every bin is one ``step``; each shown frame is the event image
(ON red, OFF blue) beside the predicted flow in the standard colour wheel
(``torchvision.utils.flow_to_image``, a fixed ``--flow-range`` for full saturation) and, when the
source has ground truth, the true flow, with the bin's EPE overlaid. The stats JSON gets EPE/nPE
over the run next to the latency statistics.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.apps import STREAM_APPS, ModelRef, StreamApp, StreamTrack
from clplat.streaming.event_source import EventBin, event_image, open_event_source

__all__ = ["EventFlowApp", "flow_colours"]


def flow_colours(flow: Tensor, max_px: float) -> np.ndarray:
    """``(2, H, W)`` flow -> RGB ``uint8 (H, W, 3)`` on the Middlebury colour wheel, saturating at
    ``max_px`` (``flow_to_image`` scales by the largest vector, so a reference vector of length
    ``max_px`` is appended as one extra column and cut off again)."""
    from torchvision.utils import flow_to_image

    ref = torch.zeros(2, flow.shape[1], 1, dtype=torch.float32)
    ref[0] = max_px
    rgb = flow_to_image(torch.cat([flow.float().cpu(), ref], dim=2))[:, :, :-1]
    return rgb.permute(1, 2, 0).contiguous().numpy()


class EventFlowTrack(StreamTrack):
    """One stream: the last flow, EPE of the bin and the run's EPE/nPE sums."""

    def __init__(self, app: EventFlowApp) -> None:
        from clplat.streaming.evflow.metrics import FlowScores

        self.app = app
        self.scores = FlowScores()
        self.flow: Tensor | None = None
        self.epe: float | None = None
        self.events = 0
        self.step_ms = 0.0

    def input(self, frame: EventBin) -> Tensor:
        return frame.bins[None]

    def update(self, frame: EventBin, y: Tensor | None, step_s: float) -> None:
        self.events += frame.events
        self.flow = None if y is None else y[0].float().cpu()
        self.epe = None
        if self.flow is not None and frame.flow is not None:
            epe = self.scores.add(self.flow, frame.flow, frame.valid)
            sel = epe[frame.valid]
            self.epe = float(sel.mean()) if sel.numel() else None
        self.step_ms = 1e3 * step_s

    def draw(self, frame: EventBin) -> np.ndarray:
        from clplat.streaming.sinks import annotate

        r = self.app.flow_range
        panels = [event_image(frame.bins)]
        panels.append(flow_colours(self.flow, r) if self.flow is not None else np.zeros_like(panels[0]))
        if frame.flow is not None:
            panels.append(flow_colours(frame.flow * frame.valid, r))
        gap = np.full((panels[0].shape[0], 2, 3), 128, dtype=np.uint8)
        row = np.concatenate([p for q in panels for p in (q, gap)][:-1], axis=1)
        lines = [f"bin {frame.index} ({frame.t0_us / 1e3:.0f} ms): {frame.events} events",
                 "events | flow" + (" | truth" if frame.flow is not None else "") + f" (wheel saturates at {r:g} px)",
                 f"step {self.step_ms:.1f} ms"]
        if self.epe is not None:
            lines.append(f"EPE {self.epe:.2f} px (run {self.scores.summary()['epe']:.2f})")
        return annotate(row, lines, min_side=256)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"events": self.events}
        if self.scores.pixels:
            out["flow_scores"] = self.scores.summary()
        return out


@STREAM_APPS.register("event_flow")
class EventFlowApp(StreamApp):
    """A ``clplat.event_flow/1`` file (``python -m clplat.streaming.evflow train``)."""

    shipped = {"evflow_lstm": "evflow_lstm.safetensors", "evflow_snn": "evflow_snn.safetensors"}
    formats = ("clplat.event_flow/1",)
    synthetic_frames = None  # a synthetic scene ends by itself

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--event-format", default=None,
                            help="event file format when the extension / magic bytes do not tell "
                                 "(dsec, aedat4, evt2, evt3, dat, es, npz, text)")
        parser.add_argument("--sensor-size", default=None,
                            help="WxH of the sensor for files that do not store it (sim: resizes the video)")
        parser.add_argument("--flow-range", type=float, default=10.0,
                            help="flow length (px per target window) drawn at full colour saturation")

    def __init__(self, ref: ModelRef, args: argparse.Namespace) -> None:
        super().__init__(ref, args)
        from clplat.streaming.evflow.weights import load_event_flow

        if getattr(args, "flow_range", 10.0) <= 0:
            raise UserError(f"--flow-range must be > 0, got {args.flow_range}")
        net, self.meta = load_event_flow(ref.path)  # type: ignore[arg-type]
        self.bin_us = int(self.meta.get("input", {}).get("bin_us", 10_000))
        self.target_bins = int(self.meta.get("target_bins", 10))
        self.flow_range = float(getattr(args, "flow_range", 10.0))
        self.make_step(net)

    def describe(self) -> dict[str, Any]:
        m = self.meta.get("model", {})
        return {**super().describe(), "arch": m.get("arch"), "width": m.get("width"),
                "bin_us": self.bin_us, "target_bins": self.target_bins}

    def open_source(self, spec: str, seed: int) -> Any:
        return open_event_source(spec, self.bin_us, self.target_bins, seed=seed,
                                 format=getattr(self.args, "event_format", None),
                                 sensor_size=getattr(self.args, "sensor_size", None))

    def track(self, source: Any) -> StreamTrack:
        return EventFlowTrack(self)

    def lines(self, stream_summary: dict[str, Any]) -> list[str]:
        s = stream_summary.get("flow_scores")
        if not s:
            return []
        return [f"flow vs ground truth: EPE {s['epe']:.3f} px, 1PE {s['1pe']:.1f}%, 3PE {s['3pe']:.1f}%, "
                f"5PE {s['5pe']:.1f}% over {s['valid_pixels']} valid pixels"]
