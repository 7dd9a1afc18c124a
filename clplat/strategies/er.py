"""Experience replay: reservoir memory over the stream; each update trains on the incoming batch
plus a random memory batch (the i-Blurry / Si-Blurry baseline). CutMix, when configured, mixes
the whole assembled batch (stream + replay), as the release's ER does."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from clplat.strategies import STRATEGIES
from clplat.strategies.base import StrategyConfig, StreamContext
from clplat.strategies.finetune import Finetune
from clplat.strategies.memory import ReservoirMemory


class ERConfig(StrategyConfig):
    memory_size: int = Field(500, ge=0)
    memory_batch: int = Field(16, ge=0, description="replay samples added to each update")


@STRATEGIES.register("er")
class ExperienceReplay(Finetune):
    config_model = ERConfig

    def __init__(self, cfg: ERConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.memory = ReservoirMemory(cfg.memory_size, tuple(input_shape))

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        if len(self.memory) and self.cfg.memory_batch:
            xm, ym = self.memory.sample(self.cfg.memory_batch, ctx.generator)
            x = torch.cat([x, ctx.augment(xm)])
            y = torch.cat([y, ctx.to_index(ym)])
        return super().training_loss(x, y, ctx)

    def on_stream_batch(self, x: Tensor, y_orig: Tensor, ctx: StreamContext) -> None:
        self.memory.add(x, y_orig, ctx.generator)
