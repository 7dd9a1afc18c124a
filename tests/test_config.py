"""Config validation: every user mistake is one line naming the key path, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from clplat.config import apply_overrides, load_config, parse_override
from clplat.errors import UserError
from tests.conftest import run_cli


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\nstrategy: er\ner: {memory_size: 10}\n")
    cfg = load_config(p, ["scenario.n_tasks=3", "--online.online_iter=2", "er.memory_batch=4", "optim.lr=1e-4"])
    assert cfg.scenario.n_tasks == 3 and cfg.online.online_iter == 2
    assert cfg.strategy_config.memory_size == 10 and cfg.strategy_config.memory_batch == 4
    assert cfg.optim.lr == pytest.approx(1e-4)
    d = cfg.to_dict()
    assert d["er"] == {"memory_size": 10, "memory_batch": 4} and d["strategy"] == "er"


def test_override_parsing() -> None:
    assert parse_override("--a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=hello") == (["a"], "hello")
    with pytest.raises(UserError):
        parse_override("novalue")
    with pytest.raises(UserError, match="is a value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("scenario: {n_taks: 5}\n", [], "scenario.n_taks: unknown key"),
        ("scenario: {n_tasks: five}\n", [], "scenario.n_tasks"),
        ("scenario: {disjoint_pct: 120}\n", [], "scenario.disjoint_pct"),
        ("strategy: er\ner: {memory_sise: 3}\n", [], "er.memory_sise: unknown key"),
        ("strategy: er\nmvp: {use_mask: [1]}\n", [], "mvp.use_mask"),  # other sections are validated
        ("strategy: er\nmvpp: {use_mask: true}\n", [], "mvpp: unknown key"),  # names no strategy
        ("strategy: nope\n", [], "strategy: unknown strategy 'nope'"),
        ("data: {dataset: digits, first_class: 3}\n", [], "data.first_class: unknown key"),  # glyphs' key
        ("data: {dataset: glyphs, test_fraction: 0.3}\n", [], "data.test_fraction: unknown key"),
        ("data: {dataset: nope}\n", [], "data.dataset: unknown dataset 'nope' (known: "),
        ("scenario: {kind: class_incremental, blurry_pct: 5}\n", [], "scenario.blurry_pct: unknown key"),
        ("scenario: {kind: nope}\n", [], "scenario.kind: unknown scenario 'nope'"),
        ("scenario: {kind: fscil}\n", [], "regime: scenario kind 'fscil' runs only with regime sessions"),
        ("seed: 1\n", ["online.online_iter=0"], "online.online_iter"),
        ("a: [1, 2\n", [], "invalid YAML"),
        ("- 1\n- 2\n", [], "top level must be a mapping"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("'", "'")):
        load_config(p, overrides)


def test_cli_bad_config_exit_2_one_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "scenario: {n_tasks: -1}\n")
    res = run_cli(["clplat.run", str(p), f"logging.runs_dir={tmp_path / 'runs'}"])
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "scenario.n_tasks" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_cli_missing_file_and_unknown_override(tmp_path: Path) -> None:
    res = run_cli(["clplat.run", str(tmp_path / "missing.yaml")])
    assert res.returncode == 2 and "config file not found" in res.stderr
    res = run_cli(["clplat.run", "experiments/si_blurry_er.yaml", "--online.nope=1",
                   f"logging.runs_dir={tmp_path / 'runs'}"])
    assert res.returncode == 2 and "online.nope: unknown key" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_sections_of_other_strategies_are_validated_and_ignored(tmp_path: Path) -> None:
    """A sweep over strategies passes strategy=finetune to a YAML holding an er: section."""
    p = _write(tmp_path, "strategy: er\ner: {memory_size: 7}\nfinetune: {}\n")
    cfg = load_config(p, ["strategy=finetune"])
    assert cfg.strategy == "finetune" and type(cfg.strategy_config).__name__ == "FinetuneConfig"
    assert cfg.to_dict()["er"] == {"memory_size": 7, "memory_batch": 16}  # kept, with its defaults
    with pytest.raises(UserError, match=r"er\.memory_size: Input should be greater than or equal to 0"):
        load_config(p, ["strategy=finetune", "er.memory_size=-1"])  # still checked against its schema


def test_typed_sections_pick_the_model_of_the_chosen_kind(tmp_path: Path) -> None:
    p = _write(tmp_path, "data: {dataset: glyphs, num_classes: 5, first_class: 100}\n"
                         "scenario: {kind: class_incremental, n_tasks: 5}\n")
    cfg = load_config(p)
    assert type(cfg.data).__name__ == "GlyphsConfig" and cfg.data.first_class == 100
    assert type(cfg.scenario).__name__ == "ClassIncrementalConfig" and not hasattr(cfg.scenario, "blurry_pct")
    d = cfg.to_dict()
    assert d["data"]["first_class"] == 100 and "test_fraction" not in d["data"]
    with pytest.raises(UserError, match="data.test_fraction: unknown key"):
        load_config(p, ["data.test_fraction=0.5"])  # a digits key on glyphs
    with pytest.raises(UserError, match="data.first_class: unknown key"):
        load_config(p, ["data.dataset=digits"])  # switching the dataset leaves glyphs' keys behind
