"""SimpleCIL (Zhou et al., "Revisiting class-incremental learning with pre-trained models", 2023):
a frozen pretrained backbone and one class-mean prototype per class, nothing trained.

At the start of every session the new classes' prototypes are the mean feature of their training
samples (un-augmented, one pass over the session's loader). Prediction is **cosine** similarity
to the prototypes: few-shot prototypes of different classes have different norms, and a dot
product would favour classes whose mean happens to be long (a class-independent scale does not
change the argmax, so no temperature is needed). ``classifier: dot`` gives the plain dot product
CoACT's "prototype tuning" baseline uses.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.fscil_common import class_means, write_prototypes


class SimpleCILConfig(StrategyConfig):
    classifier: Literal["cosine", "dot"] = "cosine"


@STRATEGIES.register("simplecil")
class SimpleCIL(Strategy):
    config_model = SimpleCILConfig

    def __init__(self, cfg: SimpleCILConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = backbone.requires_grad_(False).eval()
        self.register_buffer("prototypes", torch.zeros(num_classes, int(backbone.num_features)))
        self.register_buffer("prototype_session", torch.tensor(-1))

    def train(self, mode: bool = True) -> SimpleCIL:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, fixed statistics
        return self

    def on_session_start(self, session: int, loader, ctx: StreamContext) -> None:
        if int(self.prototype_session) >= session:  # already written (a resumed session)
            return
        means, counts = class_means(self.backbone, loader, ctx, self.num_classes,
                                    self.prototypes.shape[1], self.prototypes.device)
        write_prototypes(self.prototypes, means, counts)
        self.prototype_session.fill_(session)

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        return []

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        raise UserError("simplecil trains nothing: set sessions.base.epochs and "
                        "sessions.incremental.epochs to 0")

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        f = self.backbone(x)
        if self.cfg.classifier == "dot":
            return f @ self.prototypes.T
        return F.normalize(f, dim=-1) @ F.normalize(self.prototypes, dim=-1).T
