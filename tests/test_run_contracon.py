"""benchmarks/run_contracon.py: each method's config, the parameter check against spec B.2.1, and
the docs block (its own markers; the rest of the file untouched)."""

from __future__ import annotations

import importlib.util

import pytest

from clplat.config import build_config
from tests.conftest import REPO


@pytest.fixture(scope="module")
def rc():
    spec = importlib.util.spec_from_file_location("run_contracon", REPO / "benchmarks" / "run_contracon.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_method_configs_differ_only_where_the_method_says(rc):
    base = rc.method_config("digits", "contracon", 3)
    cfgs = {m: rc.method_config("digits", m, 3) for m in rc.METHODS}
    for raw in cfgs.values():
        build_config(raw)  # valid
        assert raw["seed"] == 3 and raw["threads"] == 1 and raw["data"] == base["data"]
        assert raw["scenario"] == base["scenario"] and raw["backbone"] == base["backbone"]
    assert cfgs["finetune"]["strategy"] == "finetune"
    assert cfgs["finetune"]["sessions"]["incremental"]["optim"]["lr"] == base["sessions"]["base"]["optim"]["lr"]
    assert cfgs["probe"]["contracon"]["adapt"] == "probe" and cfgs["probe"]["sessions"] == base["sessions"]
    ind = cfgs["independent"]
    assert ind["strategy"] == "independent_per_task"
    assert ind["sessions"]["incremental"] == base["sessions"]["base"]
    assert rc.method_config("digits", "contracon", 3, ["sessions.base.epochs=1"])["sessions"]["base"]["epochs"] == 1


def test_spec_parameter_table_is_all_equal(rc):
    table = rc.spec_parameter_table()
    rows = table.splitlines()[2:]
    assert len(rows) == 7 and all(r.endswith("| yes |") for r in rows)
    assert "| k = 15, per task, C_t = 10 | 25,315 | 25,315 | yes |" in rows


def test_write_block_replaces_only_its_own_block(rc, tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nother section\n")
    monkeypatch.setattr(rc, "DOC", doc)
    rc.write_block("digits", "first")
    rc.write_block("glyphs", "g")
    rc.write_block("digits", "second")
    body = doc.read_text()
    assert body.startswith("# Results\n\nother section\n") and "first" not in body
    assert body.count("second") == 1 and body.count("<!-- /results:contracon_glyphs -->") == 1
