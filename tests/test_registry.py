"""Registries find their providers by themselves, and tagged config sections pick the provider's
own schema: adding a dataset/scenario/strategy is one new file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from clplat.errors import UserError

PKG_INIT = """
from typing import Any
from clplat.registry import Registry, TaggedConfig

class WidgetConfig(TaggedConfig):
    tag_field = "kind"
    kind: str = "gizmo"
    size: int = 1

    @classmethod
    def registry(cls) -> Registry[Any]:
        return WIDGETS

WIDGETS = Registry("widget", __name__, default_config=WidgetConfig)
"""


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """A throw-away package ``name`` on sys.path with three provider modules."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PKG_INIT)
    (pkg / "gizmo.py").write_text(textwrap.dedent(f"""
        from {name} import WIDGETS, WidgetConfig

        class GizmoConfig(WidgetConfig):
            teeth: int = 3

        @WIDGETS.register("gizmo", config=GizmoConfig)
        def gizmo(cfg):
            return ("gizmo", cfg.teeth)
        """))
    (pkg / "parts.py").write_text(textwrap.dedent(f"""
        from {name} import WIDGETS

        @WIDGETS.register("sprocket")
        def sprocket(cfg):
            return ("sprocket", cfg.size)
        """))
    (pkg / "fancy.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module(name)


def test_modules_dropped_into_a_package_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _package(tmp_path, monkeypatch, "reg_pkg_a")
    reg = mod.WIDGETS
    assert "reg_pkg_a.gizmo" not in sys.modules  # nothing imported before a lookup
    assert reg.get("gizmo")(reg.config_model("gizmo")(teeth=5)) == ("gizmo", 5)
    assert "reg_pkg_a.parts" not in sys.modules  # the module named like the name came first
    assert reg.get("sprocket")(mod.WidgetConfig(kind="sprocket", size=4)) == ("sprocket", 4)
    assert reg.names() == ["gizmo", "sprocket"]
    with pytest.raises(UserError, match=r"unknown widget 'nope' \(known: gizmo, sprocket\).*fancy \(needs"):
        reg.get("nope")


def test_tagged_section_selects_the_provider_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _package(tmp_path, monkeypatch, "reg_pkg_b")
    base = mod.WidgetConfig
    g = base.model_validate({"kind": "gizmo", "teeth": 7})
    assert type(g).__name__ == "GizmoConfig" and g.teeth == 7 and g.model_dump()["teeth"] == 7
    s = base.model_validate({"kind": "sprocket", "size": 2})
    assert type(s) is base and s.size == 2  # registered without a model: the default config
    assert type(base(kind="gizmo", teeth=1)).__name__ == "GizmoConfig"  # constructor dispatches too
    with pytest.raises(ValidationError) as err:
        base.model_validate({"kind": "sprocket", "teeth": 2})  # gizmo's key on a sprocket
    assert err.value.errors()[0]["loc"] == ("teeth",) and err.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError) as err:
        base.model_validate({"kind": "nope"})
    assert err.value.errors()[0]["loc"] == ("kind",) and "unknown widget 'nope'" in err.value.errors()[0]["msg"]


def test_builtin_registries_list_their_files() -> None:
    from clplat.data import DATASETS
    from clplat.scenarios import SCENARIOS
    from clplat.strategies import STRATEGIES

    assert {"digits", "synthetic", "glyphs", "cifar10", "cifar100", "imagefolder"} <= set(DATASETS.names())
    assert {"si_blurry", "class_incremental"} <= set(SCENARIOS.names())
    assert {"finetune", "er", "l2p", "dualprompt", "mvp"} <= set(STRATEGIES.names())


def test_loading_a_config_imports_only_what_it_names() -> None:
    code = ("import sys; from clplat.config import load_config; "
            "c = load_config('experiments/si_blurry_er.yaml'); "
            "print(type(c.data).__name__, type(c.scenario).__name__, "
            "'clplat.strategies.prompts' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.stdout.split() == ["DigitsConfig", "SiBlurryConfig", "False", "False"], out.stderr
