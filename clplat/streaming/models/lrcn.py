"""LRCN video classifier (Donahue et al., CVPR 2015), offline form.

A per-frame 2D CNN turns each frame into a feature vector, an LSTM runs over the frames and a
linear layer gives one prediction per frame; the clip label is the mean of the per-frame logits.

Constructor (stable; other code builds it by these names)::

    LRCN(num_classes, in_channels=3, backbone="small", feature_dim=128, hidden_size=128,
         num_layers=1, dropout=0.0)

- ``backbone="small"``: a three-conv CNN (32-64-``feature_dim`` channels, BN, ReLU, global
  average pool) that trains on 2 CPU cores at 32-64 px. Any other string is a timm model name,
  built with ``pretrained=False`` (no downloads) and its classifier removed; ``feature_dim`` is
  then the model's ``num_features``.
- ``hidden_size``, ``num_layers``: the LSTM.

Outputs: ``forward_frames(clip)`` -> ``(B, num_classes, T)`` per-frame logits (what a stream emits,
with zero delay); ``forward(clip)`` -> ``(B, num_classes)`` = their mean over T.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from clplat.streaming.containers import StreamSequential
from clplat.streaming.convert import ConvertOptions, convert_module, register_converter
from clplat.streaming.module import FrameLocal, StreamModule

__all__ = ["LRCN", "small_frame_cnn"]


def small_frame_cnn(in_channels: int = 3, feature_dim: int = 128) -> nn.Sequential:
    """``(N, C, H, W) -> (N, feature_dim)``; three 3x3 conv blocks and a global average pool."""

    def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
        layers.append(nn.ReLU())
        if pool:
            layers.append(nn.MaxPool2d(2))
        return layers

    return nn.Sequential(
        *block(in_channels, 32, True),
        *block(32, 64, True),
        *block(64, feature_dim, False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
    )


class LRCN(nn.Module):
    """Per-frame CNN -> LSTM -> per-frame logits; see the module docstring."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "small",
        feature_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        if backbone == "small":
            self.cnn: nn.Module = small_frame_cnn(in_channels, feature_dim)
        else:
            import timm

            self.cnn = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_channels)
            feature_dim = int(self.cnn.num_features)
        self.feature_dim = feature_dim
        self.lstm = nn.LSTM(feature_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, num_classes)

    def frame_features(self, clip: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, T, feature_dim)``; frames go through the CNN as one batch."""
        b, c, t, h, w = clip.shape
        frames = clip.transpose(1, 2).reshape(b * t, c, h, w)
        return self.cnn(frames).reshape(b, t, -1)

    def forward_frames(self, clip: Tensor) -> Tensor:
        """Per-frame logits ``(B, num_classes, T)``; logit ``t`` sees frames ``0 .. t`` only."""
        h, _ = self.lstm(self.frame_features(clip))
        return self.fc(self.dropout(h)).transpose(1, 2)

    def forward(self, clip: Tensor) -> Tensor:
        """Clip logits ``(B, num_classes)``: the mean of the per-frame logits."""
        return self.forward_frames(clip).mean(dim=-1)


@register_converter(LRCN)
def _convert_lrcn(m: LRCN, opts: ConvertOptions) -> StreamModule:
    """Stream emits ``forward_frames`` positions with delay 0: CNN per frame, one LSTM step, linear."""
    return StreamSequential(
        OrderedDict(
            cnn=FrameLocal(m.cnn, fold=True),
            lstm=convert_module(m.lstm, opts),
            dropout=FrameLocal(m.dropout, fold=False),
            fc=FrameLocal(m.fc, fold=True),
        )
    )
