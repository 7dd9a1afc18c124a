"""The linear classifier every head-on-features strategy trains, initialised as timm initialises a
ViT's head (trunc-normal weights, std 0.02, zero bias): the Si-Blurry release builds its heads with
``timm.create_model(..., num_classes=C)``, so PyTorch's default (uniform, fan-in scaled) init
would start every method from a different, larger random logit scale than the release."""

from __future__ import annotations

from torch import nn


def linear_head(in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(int(in_features), int(num_classes))
    nn.init.trunc_normal_(head.weight, std=0.02)  # timm's trunc_normal_: cut at +-2 absolute, as torch's
    nn.init.zeros_(head.bias)
    return head
