"""Finetune: plain cross-entropy on the stream, no memory (the lower bound)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext


class FinetuneConfig(StrategyConfig):
    pass


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    config_model = FinetuneConfig

    def __init__(self, cfg: StrategyConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.num_features), num_classes)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        return F.cross_entropy(ctx.mask_logits(self.logits(x)), y)

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        return self.logits(x)
