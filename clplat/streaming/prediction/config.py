"""The typed config of ``python -m clplat.streaming.prediction train``: strict sections, one error line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clplat.config import load_model_config
from clplat.data.bouncing_digits import BouncingDigitsSpec
from clplat.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    """``FramePredictor`` arguments; ``state_channels`` is ConvS5's P (ignored by ConvLSTM)."""

    core: Literal["convs5", "convlstm"] = "convs5"
    widths: tuple[int, int] = (16, 32)
    latent: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)
    state_channels: int = Field(32, ge=2, multiple_of=2)
    kernel_size: int = Field(3, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class DataSection(_Strict):
    canvas: int = Field(64, ge=8, multiple_of=4)
    digit_size: int = Field(28, ge=8)
    digits: int = Field(2, ge=1)
    speed: tuple[float, float] = (2.0, 4.0)
    frames: int = Field(12, ge=2, description="training clip length (the model sees frames-1 inputs)")
    train_videos: int = Field(1600, ge=1)

    def spec(self, frames: int | None = None) -> BouncingDigitsSpec:
        try:
            return BouncingDigitsSpec(canvas=self.canvas, digit_size=self.digit_size, digits=self.digits,
                                      frames=frames or self.frames, speed=self.speed)
        except ValueError as err:
            raise UserError(f"config: data: {err}") from None


class TrainSection(_Strict):
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    progress: bool = True


class EvalSection(_Strict):
    videos: int = Field(32, ge=1, description="held-out videos")
    context: int = Field(8, ge=1, description="frames observed (parallel scan) before imagining")
    horizon: int = Field(40, ge=1, description="frames imagined one step at a time")
    batch_size: int = Field(16, ge=1)


class OutputSection(_Strict):
    weights: str | None = Field(None, description="safetensors path; default runs/<name>/model.safetensors")
    runs_dir: str = "runs"


class PredictConfig(_Strict):
    task: Literal["next_frame"] = "next_frame"  # tells ``python -m clplat.stream train`` to come here
    name: str = "convs5_moving_digits"
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)


def load_predict_config(path: str | Path | None, overrides: list[str] | None = None) -> PredictConfig:
    """YAML (``yaml.safe_load``) + ``key.sub=value`` overrides -> a validated config, or UserError."""
    cfg = load_model_config(PredictConfig, path, overrides)
    if cfg.model.kernel_size % 2 == 0:
        raise UserError(f"config: model.kernel_size: must be odd (got {cfg.model.kernel_size})")
    cfg.data.spec()  # validates the data section as a whole
    return cfg
