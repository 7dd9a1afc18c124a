"""Shared fixtures. Tests never touch the network: W&B is disabled and nothing is downloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_overrides(tmp_path: Path) -> list[str]:
    """A fast Si-Blurry digits run (MLP, 8x8): a few seconds on 2 cores."""
    return [
        "data.dataset=digits", "data.image_size=8", "backbone.name=mlp", "backbone.kwargs={hidden: [64]}",
        "online.stream_batch=16", "online.online_iter=2", "online.eval_period=200", "optim.lr=0.005",
        "logging.wandb=disabled", "logging.progress=false", f"logging.runs_dir={tmp_path / 'runs'}",
    ]


def run_cli(args: list[str], cwd: Path = REPO, timeout: float = 300, env: dict | None = None):
    import subprocess

    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
