"""A W&B agent passes ``--key=value`` arguments after the config: they must land in the resolved
config, at the right key and with the right type (a learning rate that arrives as the string
``"1e-04"`` or a memory size as ``500.0`` would train something else than the sweep reports)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from clplat.config import load_config
from clplat.run import _parse
from clplat.run import main as run_main
from tests.conftest import REPO

SWEEP = REPO / "experiments/sweeps/si_blurry_er_lr.yaml"


def _at(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _agent_argv(sweep: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The argv ``wandb agent`` builds from the sweep's ``command`` (``${args}`` -> ``--key=value``)."""
    argv: list[str] = []
    for item in sweep["command"]:
        if item == "${args}":
            argv += [f"--{k}={v}" for k, v in values.items()]
        elif not item.startswith("${") and item not in ("-m", sweep["program"]):
            argv.append(item)
    return argv


@pytest.mark.parametrize("lr_text,lr", [("0.0003", 0.0003), ("1e-04", 1e-4), ("0.00731", 0.00731)])
def test_agent_arguments_land_typed_in_the_resolved_config(lr_text: str, lr: float) -> None:
    sweep = yaml.safe_load(SWEEP.read_text())
    argv = _agent_argv(sweep, {"optim.lr": lr_text, "er.memory_size": 300, "seed": 3})
    args, overrides = _parse(argv)
    resolved = load_config(REPO / args.config, overrides).to_dict()
    assert _at(resolved, "optim.lr") == lr and type(_at(resolved, "optim.lr")) is float
    assert _at(resolved, "er.memory_size") == 300 and type(_at(resolved, "er.memory_size")) is int
    assert resolved["seed"] == 3 and type(resolved["seed"]) is int
    assert _at(resolved, "logging.project") == "clplat-sweeps"  # the sweep command's fixed override


def test_print_config_shows_the_agent_values(capsys: pytest.CaptureFixture) -> None:
    """What a user inspects (``--print-config``) is the same resolved config, values typed in YAML."""
    assert run_main(["experiments/si_blurry_er.yaml", "--optim.lr=1e-04", "--er.memory_size=200",
                     "--seed=2", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["optim"]["lr"], printed["er"]["memory_size"], printed["seed"]) == (1e-4, 200, 2)
    assert type(printed["optim"]["lr"]) is float and type(printed["er"]["memory_size"]) is int


def test_every_sweep_parameter_is_a_config_key_with_its_declared_values() -> None:
    """Each parameter of the sweep file, at its extreme values, lands where its name says."""
    sweep = yaml.safe_load(SWEEP.read_text())
    for key, spec in sweep["parameters"].items():
        for value in spec.get("values") or [spec["min"], spec["max"]]:
            args, overrides = _parse(_agent_argv(sweep, {key: value}))
            got = _at(load_config(REPO / args.config, overrides).to_dict(), key)
            assert got == value and type(got) is type(value), (key, value, got)


def test_a_misspelt_sweep_key_is_rejected() -> None:
    from clplat.errors import UserError

    with pytest.raises(UserError, match="optim.lrr"):
        load_config(REPO / "experiments/si_blurry_er.yaml", ["--optim.lrr=0.1"])
