"""Next-frame predictors (ConvS5 / ConvLSTM ``FramePredictor``): context, then imagination.

Each stream runs in episodes of ``--context + --horizon`` frames. During the first ``--context``
frames of an episode the model sees the true frames; after that it imagines: its own prediction
of each frame is fed back as the next input, one ``step`` per frame, while the source keeps
supplying the truth to compare with. Every shown frame is the truth (left) beside the model's
prediction of that frame (right); the stats JSON gets the per-frame MSE of the predictions
(averaged over episodes) next to the latency statistics, and the MSE of copying the last context
frame as a floor. Frames are validated on the host side (a source's frame, a prediction before it
is fed back), not in the step, so ``--compile`` and ``--cuda-graph`` apply. ``--source
synthetic`` plays held-out bouncing-digits videos (one per episode, as the model was trained on);
a video file or webcam is converted to grey and resized to the model's canvas (a model trained
on digits will not predict natural scenes well).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.apps import STREAM_APPS, ModelRef, StreamApp, StreamTrack
from clplat.streaming.sources import Frame, FrameSource, FrameSpec

__all__ = ["BouncingDigitsSource", "NextFrameApp"]


class BouncingDigitsSource(FrameSource):
    """Held-out bouncing-digits videos one after another (video ``k`` fills episode ``k``), as RGB."""

    def __init__(self, spec: Any, seed: int, frames_per_video: int, fps: float = 8.0) -> None:
        from clplat.data.bouncing_digits import BouncingDigits

        self.videos = BouncingDigits("test", 1, spec, seed=seed)
        self.frames_per_video = frames_per_video
        super().__init__(name=f"synthetic:bouncing_digits(seed {seed})", fps=fps)

    def __iter__(self) -> Iterator[Frame]:
        self.end_reason, index, k = "running", 0, 0
        while not self._closed:
            for j, grey in enumerate(self.videos.video(k, self.frames_per_video)):
                if self._closed:
                    break
                yield Frame(image=np.repeat(grey[:, :, None], 3, axis=2), index=index, segment_start=j == 0)
                index += 1
            k += 1
        self.end_reason = f"stopped after {index} frames"


def _panel(truth: np.ndarray, pred: np.ndarray, lines: list[str]) -> np.ndarray:
    """Grey ``(H, W)`` frames in [0, 1] side by side (truth | prediction), annotated, BGR."""
    from clplat.streaming.sinks import annotate

    gap = np.full((truth.shape[0], 2), 0.5, dtype=np.float32)
    row = np.clip(np.concatenate([truth, gap, pred], axis=1), 0, 1)
    return annotate(np.repeat((row * 255).astype(np.uint8)[:, :, None], 3, axis=2), lines, min_side=256)


class PredictionTrack(StreamTrack):
    """One stream's episode clock, last prediction and per-horizon error sums."""

    def __init__(self, app: NextFrameApp) -> None:
        self.app = app
        self.t = 0  # frames seen by this stream
        self.pred: Tensor | None = None  # the model's prediction of the coming frame, probabilities
        self.last_context: Tensor | None = None
        n = app.period
        self.sums = {"mse": np.zeros(n), "copy_last": np.zeros(n)}
        self.counts = np.zeros(n, dtype=np.int64)
        self.truth: Tensor | None = None
        self.shown: tuple[np.ndarray, np.ndarray, list[str]] | None = None

    @property
    def phase(self) -> int:
        return self.t % self.app.period

    def starts_over(self) -> bool:
        return self.phase == 0  # a new episode: the model forgets the last one

    def input(self, frame: Frame) -> Tensor:
        if frame.image.dtype.kind == "f" and not np.isfinite(frame.image).all():
            raise UserError(f"frame {frame.index} of the source has non-finite values (nan/inf)")
        grey = cv2.cvtColor(self.app.spec.fit(frame.image), cv2.COLOR_RGB2GRAY)
        self.truth = torch.from_numpy(grey).float().div_(255.0)[None, None].to(self.app.device)
        if self.phase == 0:
            self.pred = None
        if self.phase < self.app.context:
            self.last_context = self.truth
            return self.truth
        return self.pred  # type: ignore[return-value]  # imagining: the model's own frame

    def update(self, frame: Frame, y: Tensor | None, step_s: float) -> None:
        truth, k, c = self.truth, self.phase, self.app.context
        assert truth is not None and y is not None  # a predictor emits every step
        if not bool(torch.isfinite(y).all()):  # it becomes the next input while imagining
            raise UserError(f"the model predicted non-finite values (nan/inf) at frame {self.t + 1} of a stream")
        shown = truth if self.pred is None else self.pred
        if self.pred is not None:
            self.sums["mse"][k] += float(((self.pred - truth) ** 2).mean())
            if k >= c and self.last_context is not None:
                self.sums["copy_last"][k] += float(((self.last_context - truth) ** 2).mean())
            self.counts[k] += 1
        label = f"imagined +{k - c + 1}" if k >= c else f"context {k + 1}/{c}"
        self.shown = (truth[0, 0].cpu().numpy(), shown[0, 0].float().cpu().numpy(),
                      [f"frame {self.t + 1}: {label}", "truth | model", f"step {1e3 * step_s:.1f} ms"])
        self.pred = torch.sigmoid(y.float())
        self.t += 1

    def draw(self, frame: Frame) -> np.ndarray:
        assert self.shown is not None
        return _panel(*self.shown)

    def summary(self) -> dict[str, Any]:
        scored = self.counts > 0
        mse = np.where(scored, self.sums["mse"] / np.maximum(self.counts, 1), np.nan)
        copy = np.where(scored, self.sums["copy_last"] / np.maximum(self.counts, 1), np.nan)
        imagined = [k for k in range(self.app.context, self.app.period) if scored[k]]
        out: dict[str, Any] = {
            "context": self.app.context, "horizon": self.app.horizon,
            "episodes": -(-self.t // self.app.period),
            # frame k of an episode (k >= 1): the prediction made at frame k-1, vs the truth
            "mse_per_frame": [round(float(m), 5) for m in mse[1:] if np.isfinite(m)],
        }
        if imagined:
            out["mse_imagined_mean"] = round(float(np.mean(mse[imagined])), 5)
            out["copy_last_mse_imagined_mean"] = round(float(np.mean(copy[imagined])), 5)
        return out


@STREAM_APPS.register("next_frame")
class NextFrameApp(StreamApp):
    """A ``clplat.frame_predictor/1`` file (``python -m clplat.stream train`` with ``task: next_frame``)."""

    shipped = {"convs5_moving_digits": "convs5_moving_digits.safetensors"}
    formats = ("clplat.frame_predictor/1",)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--context", type=int, default=8, help="true frames the model sees per episode")
        parser.add_argument("--horizon", type=int, default=40, help="frames it then imagines per episode")

    def __init__(self, ref: ModelRef, args: argparse.Namespace) -> None:
        super().__init__(ref, args)
        if args.context < 1 or args.horizon < 1:
            raise UserError(f"--context and --horizon must be >= 1, got {args.context}, {args.horizon}")
        from clplat.streaming.prediction.run import load_predictor

        net, self.meta = load_predictor(ref.path)  # type: ignore[arg-type]
        self.context, self.horizon = args.context, args.horizon
        self.period = self.context + self.horizon
        canvas = int(self.meta.get("data", {}).get("canvas", 64))
        self.spec = FrameSpec(size=(canvas, canvas))
        # Frames are checked where they come from (the track: source frames, and each prediction
        # before it is fed back), so the step reads nothing on the host: --compile / --cuda-graph.
        net.check_inputs = False
        self.make_step(net)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "arch": f"{self.meta.get('model', {}).get('core')} next-frame predictor",
                "core": self.meta.get("model", {}).get("core")}

    def max_frames(self, spec: str, given: int | None) -> int | None:
        """One episode of the synthetic source unless told otherwise."""
        return given if given is not None or spec != "synthetic" else self.period

    def open_source(self, spec: str, seed: int) -> FrameSource:
        if spec != "synthetic":
            return super().open_source(spec, seed)
        from clplat.data.bouncing_digits import BouncingDigitsSpec

        d = self.meta.get("data", {})
        look = BouncingDigitsSpec(canvas=d.get("canvas", 64), digit_size=d.get("digit_size", 28),
                                  digits=d.get("digits", 2), speed=tuple(d.get("speed", (2.0, 4.0))))
        return BouncingDigitsSource(look, seed, self.period)

    def track(self, source: FrameSource) -> StreamTrack:
        return PredictionTrack(self)

    def lines(self, stream_summary: dict[str, Any]) -> list[str]:
        if "mse_imagined_mean" not in stream_summary:
            return []
        s = stream_summary
        return [f"imagined-frame MSE {s['mse_imagined_mean']:.4f} (copying the last context frame: "
                f"{s['copy_last_mse_imagined_mean']:.4f}) over {s['episodes']} episode(s) of "
                f"{s['context']} + {s['horizon']} frames"]
