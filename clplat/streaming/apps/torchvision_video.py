"""torchvision's Kinetics-400 video classifiers, from a local weights file, played per frame.

``--model torchvision:r2plus1d_18 --weights r2plus1d_18.pth`` (also ``r3d_18``, ``mc3_18``: the
torchvision video models ``clplat.streaming.convert`` makes exact). Nothing is downloaded: the
weights are the user's file (a ``state_dict`` saved by ``torch.save``, read with
``weights_only=True``, or a ``.safetensors``); the class names, the preprocessing (resize to
128x171, centre crop 112, mean/std) and the clip sampling (15 frames/s, 16-frame clips) come from
the weights metadata torchvision ships with its code. A faster source is thinned to the model's
frame rate (every ``round(fps / 15)``-th frame).

The clip classifier becomes a stream by conversion: the global temporal average becomes a
running mean over the last ``clip_len / temporal_stride`` output positions (one clip's worth),
so the prediction at an emitting frame is ``fc`` of the mean pooled features of the last
16 frames' positions. Symmetric temporal padding makes the stream lag: r2plus1d_18 and r3d_18
emit every 8 frames, 54 frames after the frames they describe (3.6 s at 15 frames/s); mc3_18
emits every frame, 5 frames late. Until the first emission the frame shows "warming up".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.apps import STREAM_APPS, ModelRef, StreamApp, StreamTrack
from clplat.streaming.apps.classify import ClassifierTrack

__all__ = ["KineticsApp", "TorchvisionVideoApp", "read_state_dict"]

_WRAPPERS = ("state_dict", "model", "model_state", "model_state_dict")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a local weights file: ``torch.load(weights_only=True)`` (a plain state dict, or
    one under ``state_dict``/``model``) or safetensors. Anything else is one ``UserError`` line."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, a pickle weights_only refuses, a damaged header, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read weights '{path}': not a state dict that torch.load(weights_only=True) "
                        f"or safetensors can read ({first})") from None
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"weights '{path}' hold no state dict (a mapping of parameter names to tensors)")
    return obj


class KineticsTrack(ClassifierTrack):
    """The classifier track, with the clip's delay in the text of every frame."""

    def draw(self, frame: Any) -> Any:
        from clplat.streaming.sinks import annotate

        return annotate(frame.image, [self.pred_text, self.step_text, f"lags {self.app.delay_frames} frames"])


class KineticsApp(StreamApp):
    """What the Kinetics-400 classifiers from a user's weights file share: ``--weights`` and
    ``--clip-len``, a source thinned to the model's frame rate (``self.preset.frame_rate``), and
    the Kinetics track (labels only when the source's classes are Kinetics')."""

    weights_help: ClassVar[str] = ""
    clip_len_help: ClassVar[str] = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--weights", help=cls.weights_help)
        parser.add_argument("--clip-len", type=int, default=None, help=cls.clip_len_help)

    @staticmethod
    def check_weights_args(label: str, args: argparse.Namespace, what: str) -> None:
        if not args.weights:
            raise UserError(f"{label} needs --weights PATH (a local Kinetics-400 {what}; nothing is downloaded)")
        if args.clip_len is not None and args.clip_len < 1:
            raise UserError("--clip-len must be >= 1")

    def open_source(self, spec: str, seed: int) -> Any:
        """The source, thinned to the model's frame rate when it is much faster."""
        from clplat.streaming.sources import EveryNth, open_source

        source = open_source(spec, seed=seed)
        n = max(1, round(source.fps / self.preset.frame_rate))
        return EveryNth(source, n) if n > 1 else source

    def track(self, source: Any) -> StreamTrack:
        if source.class_names != self.class_names:
            source.has_labels = False  # moving digits are not Kinetics classes
        return KineticsTrack(self, source)


@STREAM_APPS.register("torchvision")
class TorchvisionVideoApp(KineticsApp):
    """``torchvision:NAME`` with ``--weights PATH``: a torchvision Kinetics video ResNet, streamed."""

    schemes = ("torchvision",)
    weights_help = "local weights of the torchvision model (.pth state dict or .safetensors); nothing is downloaded"
    clip_len_help = "frames one prediction averages (default: the clip length of the model's Kinetics evaluation, 16)"

    def __init__(self, ref: ModelRef, args: argparse.Namespace) -> None:
        from clplat.nn import load_state_checked
        from clplat.streaming import convert
        from clplat.streaming.models.torchvision_video import (
            NOT_STREAMABLE,
            build_video_model,
            kinetics_preset,
            video_model_names,
        )
        from clplat.streaming.pool import WindowAvgPool
        from clplat.streaming.sources import ResizeCropSpec

        super().__init__(ref, args)
        name = ref.scheme_arg or ""
        if name not in video_model_names():
            raise UserError(f"unknown torchvision video model '{name}' (torchvision has: "
                            f"{', '.join(video_model_names())})")
        if name in NOT_STREAMABLE:
            raise UserError(f"torchvision:{name} cannot be streamed exactly: {NOT_STREAMABLE[name]} "
                            "(streamable: r3d_18, mc3_18, r2plus1d_18)")
        self.check_weights_args(f"torchvision:{name}", args, "state dict")
        preset = kinetics_preset(name)
        self.path = Path(args.weights)
        state = read_state_dict(self.path)
        fc = state.get("fc.weight")
        num_classes = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.dim() == 2 else len(preset.categories)
        net = build_video_model(name, num_classes).eval()
        load_state_checked(net, state, f"weights '{self.path}' do not fit torchvision:{name}")
        self.name, self.preset = name, preset
        self.class_names = list(preset.categories) if num_classes == len(preset.categories) else []
        self.spec = ResizeCropSpec(size=preset.crop, mean=preset.mean, std=preset.std, resize=preset.resize)
        self.clip_len = args.clip_len or preset.clip_len
        try:
            stream = convert(net)
        except NotImplementedError as err:
            raise UserError(f"torchvision:{name} cannot be streamed exactly: {err}") from None
        # the global temporal mean becomes a mean over one clip's worth of output positions
        self.window = max(1, self.clip_len // stream.temporal_stride)
        pools = [m for m in stream.modules() if isinstance(m, WindowAvgPool)]
        if len(pools) != 1:
            raise UserError(f"torchvision:{name}: expected one global temporal pool, found {len(pools)}")
        pools[0].window = self.window
        self.make_step(stream)
        self.delay_frames = int(stream.delay)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": str(self.path), "arch": f"torchvision:{self.name}",
                "window_positions": self.window, "temporal_stride": int(self.stream.temporal_stride)}  # type: ignore[union-attr]

    def lines(self, stream_summary: dict[str, Any]) -> list[str]:
        return [f"prediction = fc(mean of the last {self.window} output positions = {self.clip_len} frames), "
                f"emitted every {self.stream.temporal_stride} frames, {self.delay_frames} frames late"]  # type: ignore[union-attr]
