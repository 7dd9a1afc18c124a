"""torchvision's video ResNets (``r3d_18``, ``mc3_18``, ``r2plus1d_18``) and their streaming form.

The builders return the offline torchvision model with ``weights=None`` (no downloads); pass a
``state_dict`` to load your own weights. Conversion maps the stem and blocks layer by layer; the
global ``AdaptiveAvgPool3d`` becomes a causal ``WindowAvgPool`` (``convert(...,
temporal_window=...)``), so the stream emits one prediction per output position:
``forward(clip)`` of the streaming model is ``(B, num_classes, T')`` where position ``j`` is
``fc(mean of the pooled features of positions max(0, j-window+1) .. j)``.

Timing (input frames): r3d_18 and r2plus1d_18 stride time by 8 and mc3_18 by 1; every 3x3x3
conv pads one frame each side, so the stream lags the clip by the sum of the look-aheads.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.video import mc3_18 as _mc3_18
from torchvision.models.video import r2plus1d_18 as _r2plus1d_18
from torchvision.models.video import r3d_18 as _r3d_18
from torchvision.models.video.resnet import BasicBlock, Bottleneck, VideoResNet

from clplat.streaming.containers import Residual, StreamSequential
from clplat.streaming.convert import ConvertOptions, convert_chain, convert_module, register_converter
from clplat.streaming.module import StreamModule

__all__ = ["KineticsPreset", "build_video_model", "kinetics_preset", "mc3_18", "r2plus1d_18", "r3d_18",
           "video_model_names"]

# torchvision video models whose clip computation has no exact per-frame step, and why
NOT_STREAMABLE = {
    "s3d": "no streaming converter for its SepInceptionBlock3D branches yet",
    "mvit_v1_b": "its attention mixes every frame of the clip (pooled attention over all T), which has no causal step",
    "mvit_v2_s": "its attention mixes every frame of the clip (pooled attention over all T), which has no causal step",
    "swin3d_t": "its shifted-window attention spans frames on both sides, which has no causal step",
    "swin3d_s": "its shifted-window attention spans frames on both sides, which has no causal step",
    "swin3d_b": "its shifted-window attention spans frames on both sides, which has no causal step",
}


@dataclass(frozen=True)
class KineticsPreset:
    """What torchvision's Kinetics-400 weights metadata says about a model (no download): class
    names, the ``VideoClassification`` preprocessing, and the clip sampling it was evaluated with."""

    categories: tuple[str, ...]
    resize: tuple[int, int]
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frame_rate: float
    clip_len: int


def video_model_names() -> list[str]:
    """Every video classifier torchvision builds (``torchvision.models.video``)."""
    import torchvision.models.video as video
    from torchvision.models import list_models

    return sorted(list_models(module=video))


def kinetics_preset(name: str) -> KineticsPreset:
    """The Kinetics-400 preset of torchvision video model ``name`` (its first weights entry)."""
    from torchvision.models import get_model_weights

    weights = next(iter(get_model_weights(name)))
    meta, tf = weights.meta, weights.transforms()
    docs = meta.get("_docs", "")
    rate = re.search(r"frame_rate=(\d+)", docs)
    clip = re.search(r"clip_len=(\d+)", docs)
    return KineticsPreset(
        categories=tuple(meta["categories"]), resize=tuple(tf.resize_size), crop=tuple(tf.crop_size),  # type: ignore[arg-type]
        mean=tuple(tf.mean), std=tuple(tf.std),  # type: ignore[arg-type]
        frame_rate=float(rate.group(1)) if rate else 15.0, clip_len=int(clip.group(1)) if clip else 16)


def build_video_model(name: str, num_classes: int) -> nn.Module:
    """torchvision video model ``name`` with ``weights=None`` (nothing downloaded)."""
    from torchvision.models import get_model_builder

    return get_model_builder(name)(weights=None, num_classes=num_classes)


def _build(factory, num_classes: int, state_dict: dict[str, torch.Tensor] | None) -> VideoResNet:
    model = factory(weights=None, num_classes=num_classes)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def r3d_18(num_classes: int = 400, state_dict: dict[str, torch.Tensor] | None = None) -> VideoResNet:
    """ResNet3D-18 (all 3x3x3 convs)."""
    return _build(_r3d_18, num_classes, state_dict)


def mc3_18(num_classes: int = 400, state_dict: dict[str, torch.Tensor] | None = None) -> VideoResNet:
    """Mixed-convolution ResNet-18 (3D in the stem and layer1, 2D after)."""
    return _build(_mc3_18, num_classes, state_dict)


def r2plus1d_18(num_classes: int = 400, state_dict: dict[str, torch.Tensor] | None = None) -> VideoResNet:
    """R(2+1)D-18 (each 3D conv split into spatial (1,3,3) and temporal (3,1,1))."""
    return _build(_r2plus1d_18, num_classes, state_dict)


@register_converter(BasicBlock)
@register_converter(Bottleneck)
def _convert_block(m: BasicBlock | Bottleneck, opts: ConvertOptions) -> StreamModule:
    names = ["conv1", "conv2", "conv3"] if isinstance(m, Bottleneck) else ["conv1", "conv2"]
    main = convert_chain([(n, getattr(m, n)) for n in names], opts)
    shortcut = [] if m.downsample is None else [("downsample", convert_module(m.downsample, opts))]
    return Residual(main, shortcut, convert_chain([("relu", m.relu)], opts))


@register_converter(VideoResNet)
def _convert_video_resnet(m: VideoResNet, opts: ConvertOptions) -> StreamModule:
    chain = [(n, getattr(m, n)) for n in ("stem", "layer1", "layer2", "layer3", "layer4", "avgpool")]
    chain += [("flatten", nn.Flatten(1)), ("fc", m.fc)]
    return StreamSequential(OrderedDict(convert_chain(chain, opts)))
