"""A W&B agent passes ``--key=value`` arguments after the config: they must land in the config."""

from __future__ import annotations

import yaml

from clplat.run import _parse
from tests.conftest import REPO


def test_agent_style_arguments_override() -> None:
    args, overrides = _parse(["experiments/si_blurry_er.yaml", "--optim.lr=0.0003", "--er.memory_size=100",
                              "--seed=3"])
    from clplat.config import load_config

    cfg = load_config(REPO / args.config, overrides)
    assert cfg.optim.lr == 0.0003 and cfg.strategy_config.memory_size == 100 and cfg.seed == 3


def test_sweep_file_names_real_keys() -> None:
    sweep = yaml.safe_load((REPO / "experiments/sweeps/si_blurry_er_lr.yaml").read_text())
    from clplat.config import load_config

    overrides = []
    for key, spec in sweep["parameters"].items():
        value = spec["values"][0] if "values" in spec else spec["min"]
        overrides.append(f"--{key}={value}")
    load_config(REPO / "experiments/si_blurry_er.yaml", overrides)  # raises on an unknown key
