"""The typed config of ``python -m clplat.streaming.evflow train``: strict sections, one error line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clplat.config import load_model_config
from clplat.errors import UserError
from clplat.streaming.models.evflow_common import EventFlowConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Strict):
    """Synthetic scenes (``clplat.events.scenes.SceneConfig``): textured planes, exact flow."""

    height: int = Field(64, ge=16)
    width: int = Field(64, ge=16)
    bin_ms: int = Field(10, ge=1, description="one network step per bin")
    target_bins: int = Field(10, ge=1, description="targets are displacements over this many bins (100 ms)")
    train_scenes: int = Field(120, ge=1)
    train_scene_ms: int = Field(300, ge=1)
    test_scenes: int = Field(12, ge=1, description="held-out scenes (other seeds), streamed bin by bin")
    test_scene_ms: int = Field(400, ge=1)
    n_objects: int = Field(3, ge=0)
    max_speed: float = Field(150.0, ge=0, description="object speed bound, px/s")
    background_speed: float = Field(60.0, ge=0, description="background speed bound, px/s")
    cache_dir: str | None = Field("runs/evflow_cache", description="reuse rendered scenes (None: never)")


class TrainSection(_Strict):
    """Sequential learning (spec §4): ``warmup_bins`` under no_grad, then ``grad_bins`` with
    gradient; the loss is on the last ``loss_bins`` outputs (the paper: 1)."""

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_bins: int = Field(10, ge=0)
    grad_bins: int = Field(10, ge=1)
    loss_bins: int = Field(1, ge=1)
    offset_stride: int = Field(1, ge=1, description="bins between the start offsets of training windows")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    progress: bool = True


class OutputSection(_Strict):
    weights: str | None = Field(None, description="safetensors path; default runs/<name>/model.safetensors")
    runs_dir: str = "runs"


class EventFlowTrainConfig(_Strict):
    task: Literal["event_flow"] = "event_flow"
    name: str = "evflow_lstm"
    seed: int = 0
    model: EventFlowConfig = Field(default_factory=lambda: EventFlowConfig.model_validate({}))
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)


def load_evflow_config(path: str | Path | None, overrides: list[str] | None = None) -> EventFlowTrainConfig:
    """YAML (``yaml.safe_load``) + ``key.sub=value`` overrides -> a validated config, or UserError."""
    cfg = load_model_config(EventFlowTrainConfig, path, overrides)
    t, d = cfg.train, cfg.data
    if t.loss_bins > t.grad_bins:
        raise UserError(f"config: train.loss_bins ({t.loss_bins}) must be <= train.grad_bins ({t.grad_bins})")
    window_ms = (t.warmup_bins + t.grad_bins) * d.bin_ms
    if window_ms > d.train_scene_ms:
        raise UserError(f"config: data.train_scene_ms ({d.train_scene_ms}) is shorter than a training window "
                        f"(train.warmup_bins + train.grad_bins = {window_ms} ms)")
    if d.target_bins * d.bin_ms > d.test_scene_ms:
        raise UserError(f"config: data.test_scene_ms ({d.test_scene_ms}) is shorter than one target "
                        f"(data.target_bins x data.bin_ms)")
    return cfg
