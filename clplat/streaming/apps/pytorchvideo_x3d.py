"""pytorchvideo's Kinetics-400 X3D checkpoints, from a local file, played per frame.

``--model pytorchvideo:x3d_s --weights X3D_S.pyth`` (also ``x3d_xs``, ``x3d_m``). Nothing is
downloaded and pytorchvideo is not needed: the file (pytorchvideo's ``{"model_state": ...}``
checkpoint, a bare state dict, or a ``.safetensors``; read with ``weights_only=True``) is mapped
key by key onto clplat's X3D (``clplat.streaming.models.pytorchvideo_x3d``). Preprocessing is
pytorchvideo's hub recipe for the size: short side scaled and centre-cropped to 182 px (256 for
x3d_m), mean 0.45 / std 0.225, one frame every ``sampling_rate`` frames of a 30 frames/s video
(a source is thinned to that rate); the class names are Kinetics-400's, from torchvision's
weights metadata (the same alphabetical list pytorchvideo's checkpoints were trained with).

The stream approximates the clip model (said once at start): pytorchvideo's squeeze-excite
averages over the whole clip, the stream's over the last ``clip_len`` positions; the prediction
is ``fc`` of the mean of the last ``clip_len`` positions' features, every frame, 28 frames late
(symmetric temporal padding of the stem and 26 blocks).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import Tensor

from clplat.errors import UserError
from clplat.streaming.apps import STREAM_APPS, ModelRef
from clplat.streaming.apps.torchvision_video import KineticsApp, read_state_dict

__all__ = ["PytorchvideoX3DApp"]


@STREAM_APPS.register("pytorchvideo")
class PytorchvideoX3DApp(KineticsApp):
    """``pytorchvideo:x3d_xs|x3d_s|x3d_m`` with ``--weights PATH``: a Kinetics X3D, streamed."""

    schemes = ("pytorchvideo",)
    weights_help = ("local pytorchvideo X3D checkpoint (.pyth/.pth with model_state, a state dict, or "
                    ".safetensors); nothing is downloaded")
    clip_len_help = ("frames the squeeze-excite and the prediction average (default: the size's clip "
                     "length: 4 / 13 / 16)")

    def __init__(self, ref: ModelRef, args: argparse.Namespace) -> None:
        from clplat.streaming import convert
        from clplat.streaming.models.pytorchvideo_x3d import X3D_PRESETS, build_x3d, from_pytorchvideo_state
        from clplat.streaming.models.torchvision_video import kinetics_preset
        from clplat.streaming.sources import FrameSpec

        super().__init__(ref, args)
        name = ref.scheme_arg or ""
        if name not in X3D_PRESETS:
            raise UserError(f"unknown pytorchvideo model '{name}' (supported: {', '.join(X3D_PRESETS)}; x3d_l is "
                            "not: pytorchvideo's hub publishes no evaluation recipe for it)")
        self.check_weights_args(f"pytorchvideo:{name}", args, "checkpoint")
        self.name, self.preset = name, X3D_PRESETS[name]
        self.path = Path(args.weights)
        state = read_state_dict(self.path)
        proj = state.get("blocks.5.proj.weight")
        num_classes = int(proj.shape[0]) if isinstance(proj, Tensor) and proj.dim() == 2 else 400
        self.clip_len = args.clip_len or self.preset.num_frames
        net = build_x3d(num_classes, se_window=self.clip_len, head_window=self.clip_len).eval()
        try:
            from_pytorchvideo_state(net, state)
        except ValueError as err:
            raise UserError(f"weights '{self.path}' do not fit pytorchvideo:{name} (X3D in pytorchvideo's "
                            f"layout): {err}") from None
        categories = kinetics_preset("r3d_18").categories
        self.class_names = list(categories) if num_classes == len(categories) else []
        self.spec = FrameSpec(size=(self.preset.crop, self.preset.crop), mean=self.preset.mean, std=self.preset.std)
        self.make_step(convert(net))
        self.delay_frames = int(self.stream.delay)  # type: ignore[union-attr]
        print(f"note: pytorchvideo:{name} streams approximately: its squeeze-excite averages the whole clip, "
              f"the stream's the last {self.clip_len} frames; predictions are {self.delay_frames} frames late "
              "(docs/streaming_demo.md)", flush=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": str(self.path), "arch": f"pytorchvideo:{self.name}",
                "clip_len": self.clip_len, "exact": False}

    def lines(self, stream_summary: dict[str, Any]) -> list[str]:
        return [f"prediction = fc(mean of the last {self.clip_len} frames' features), SE over the last "
                f"{self.clip_len} frames (approximates pytorchvideo's clip-wide SE), {self.delay_frames} frames late"]
