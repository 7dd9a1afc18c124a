"""Every shipped experiment YAML validates against the schema (a typo in a config is a bug)."""

from __future__ import annotations

import pytest

from clplat.config import load_config
from tests.conftest import REPO

PREDICTION = sorted((REPO / "experiments").glob("conv*_moving_digits.yaml"))  # clplat.streaming.prediction
TRAINING = sorted(p for p in (REPO / "experiments").rglob("*.yaml")
                  if "sweeps" not in p.parts and not p.name.startswith("stream_") and p not in PREDICTION)
STREAMING = sorted((REPO / "experiments").glob("stream_*.yaml"))


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(REPO)))
def test_training_configs_validate(path) -> None:
    cfg = load_config(path)
    assert cfg.name and cfg.strategy


@pytest.mark.parametrize("path", STREAMING, ids=lambda p: p.name)
def test_streaming_configs_validate(path) -> None:
    from clplat.streaming.training.config import load_train_config

    assert load_train_config(path).name


@pytest.mark.parametrize("path", PREDICTION, ids=lambda p: p.name)
def test_prediction_configs_validate(path) -> None:
    from clplat.streaming.prediction.config import load_predict_config

    assert load_predict_config(path).name


def test_there_are_configs() -> None:
    assert len(TRAINING) >= 9 and len(STREAMING) >= 1
