"""The typed config of ``python -m clplat.stream train``: YAML in, a validated ``TrainConfig`` out.

Sections are strict (an unknown key is an error naming it); the model section is a
discriminated union on ``arch``, so each architecture validates only its own arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from clplat.config import load_model_config
from clplat.data.moving_digits import MovingDigitsSpec
from clplat.errors import UserError

ARCH_TAGS = ("x3d", "lrcn")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class X3DSection(_Strict):
    """``clplat.streaming.models.X3DS`` arguments (``num_classes`` comes from the data)."""

    arch: Literal["x3d"] = "x3d"
    width: int = Field(16, ge=1)
    depths: tuple[int, ...] = (1, 2, 2, 1)
    expansion: float = Field(2.25, gt=0)
    fc_width: int = Field(128, ge=1)
    se_ratio: float = Field(0.0625, ge=0)
    se_window: int = Field(1, ge=1)
    head_window: int | None = Field(8, ge=1)
    causal: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)


class LRCNSection(_Strict):
    """``clplat.streaming.models.LRCN`` arguments (``num_classes`` comes from the data)."""

    arch: Literal["lrcn"] = "lrcn"
    feature_dim: int = Field(64, ge=1)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


ModelSection = Annotated[X3DSection | LRCNSection, Field(discriminator="arch")]


class DataSection(_Strict):
    canvas: int = Field(32, ge=8)
    digit_size: int = Field(16, ge=8)
    frames: int = Field(16, ge=1, description="clip length for training")
    label: Literal["digit", "direction"] = "digit"
    speed: tuple[float, float] = (0.7, 2.0)
    noise: float = Field(12.0, ge=0)
    train_videos: int = Field(3200, ge=1)
    val_videos: int = Field(400, ge=1)
    switch_prob: float = Field(0.3, ge=0, le=1, description="share of training clips with a cut")
    segment_frames: tuple[int, int] | None = Field(
        None, description="clips are windows of a stream of videos this long (cuts anywhere); "
                          "None: single videos, cut by switch_prob")

    def spec(self) -> MovingDigitsSpec:
        try:
            return MovingDigitsSpec(canvas=self.canvas, digit_size=self.digit_size, frames=self.frames,
                                    label=self.label, speed=self.speed, noise=self.noise)
        except ValueError as err:
            raise UserError(f"config: data: {err}") from None


class TrainSection(_Strict):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    pretrain_epochs: int = Field(0, ge=0, description="epochs on short single-video clips first")
    pretrain_frames: int = Field(8, ge=1, description="clip length of the pretraining epochs")
    pretrain_batch_size: int = Field(32, ge=1)
    warmup: int = Field(0, ge=0, description="first clip positions (zero padding in view) get warmup_weight")
    warmup_weight: float = Field(0.0, ge=0, le=1)
    init_weights: str | None = Field(None, description="start from a model saved by train "
                                                       "(same architecture and sizes), e.g. to fine-tune")
    progress: bool = True


class EvalSection(_Strict):
    stream_frames: int = Field(2000, ge=1, description="held-out frames stepped by the streaming model")
    segment_frames: tuple[int, int] = (32, 64)
    seed: int = 1


class OutputSection(_Strict):
    weights: str | None = Field(None, description="safetensors path; default runs/<name>/model.safetensors")
    runs_dir: str = "runs"


class TrainConfig(_Strict):
    name: str = "stream_x3d_moving_digits"
    seed: int = 0
    model: ModelSection = Field(default_factory=X3DSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)


def check_consistency(cfg: TrainConfig) -> None:
    """Constraints between sections (pydantic checks each field alone)."""
    frames = cfg.data.frames
    if cfg.train.warmup >= frames and cfg.train.warmup_weight == 0:
        raise UserError(f"config: train.warmup ({cfg.train.warmup}) must be < data.frames ({frames}) "
                        "when train.warmup_weight is 0")
    segments = cfg.data.segment_frames
    if segments is not None and not 1 <= segments[0] <= segments[1]:
        raise UserError(f"config: data.segment_frames: must be 1 <= low <= high (got {list(segments)})")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML (``yaml.safe_load``) + ``key.sub=value`` overrides -> a validated config, or UserError."""
    cfg = load_model_config(TrainConfig, path, overrides, union_tags=ARCH_TAGS)
    check_consistency(cfg)
    return cfg
