"""LoRA-finetune: CoACT with every CoACT component off (the spec's "LoRA" baseline).

Session 0 trains peft LoRA adapters on q and v plus a bias-free linear head (rows started as
class means) with cross-entropy only; later sessions only add class-mean prototype rows for their
new classes on the then-frozen model. Same backbone, adapters and head as ``coact``, so the two
differ by exactly the contrastive teacher, controlled fine-tuning and incremental tuning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from clplat.backbones.lora import LoraSpec
from clplat.strategies import STRATEGIES
from clplat.strategies.base import StrategyConfig
from clplat.strategies.coact import Coact, CoactConfig


class LoraFinetuneConfig(StrategyConfig):
    lora: LoraSpec = Field(default_factory=LoraSpec)
    pooler_file: str | None = Field(None, description="as coact.pooler_file (HF's tanh pooler)")
    prototype_init: bool = Field(True, description="session-0 head rows start as class means")
    prototype_refresh: bool = Field(False, description="after session 0, base rows := class means")
    classifier: Literal["dot", "cosine"] = "dot"
    cosine_scale: float = Field(16.0, gt=0)

    def trains_after_session_0(self) -> bool:
        return False


@STRATEGIES.register("lora_finetune")
class LoraFinetune(Coact):
    config_model = LoraFinetuneConfig
    trains_in = "lora_finetune"

    def __init__(self, cfg: LoraFinetuneConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        coact = CoactConfig(lora=cfg.lora, pooler_file=cfg.pooler_file, prototype_init=cfg.prototype_init,
                            prototype_refresh=cfg.prototype_refresh, classifier=cfg.classifier,
                            cosine_scale=cfg.cosine_scale, use_contrastive=False,
                            use_ema_teacher=False, controlled_ft=False, incremental_tuning=False,
                            use_consistency=False)
        super().__init__(coact, backbone, num_classes, input_shape)
        self.user_cfg = cfg
