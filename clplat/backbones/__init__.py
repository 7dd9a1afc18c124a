"""Feature extractors by name: small built-ins (``mlp``, ``small_cnn``) or any timm model name.

Every backbone returned by :func:`build_backbone` is an ``nn.Module`` mapping ``(B, C, H, W)`` to
``(B, num_features)`` and carries an integer ``num_features``.
"""

from __future__ import annotations

from clplat.backbones.build import BACKBONES, build_backbone, load_pretrained_file

__all__ = ["BACKBONES", "build_backbone", "load_pretrained_file"]
