"""Finetune: plain cross-entropy on the stream, no memory (the lower bound). With
``augment.cutmix_prob > 0`` the update batch is CutMixed, as the release trains its baselines."""

from __future__ import annotations

from torch import Tensor, nn

from clplat.engine.augment import mix_batch, mixed_cross_entropy
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.heads import linear_head


class FinetuneConfig(StrategyConfig):
    pass


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    config_model = FinetuneConfig

    def __init__(self, cfg: StrategyConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = backbone
        self.head = linear_head(backbone.num_features, num_classes)

    def head_features(self, x: Tensor, ctx: StreamContext | None = None) -> Tensor:
        """What the linear head reads (benchmarks/run_results.py probes it with class means)."""
        return self.backbone(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.head_features(x))

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        x, target = mix_batch(ctx.augment, x, y)
        return mixed_cross_entropy(ctx.mask_logits(self.logits(x)), target)

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        return self.logits(x)
