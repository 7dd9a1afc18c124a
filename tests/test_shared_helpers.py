"""The one-copy helpers both wings use: the CLI guard (clplat.errors), the atomic writer
(clplat.io), the activation vocabulary and the checked state loading (clplat.nn), and the probe's
``max_iter`` reaching the solver."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from clplat.errors import UserError, main_guard
from clplat.io import atomic_path, atomic_torch_save, atomic_write_text
from clplat.nn import activation_name, apply_activation, load_state_checked, make_activation, state_mismatch


def test_main_guard_one_line_exit_codes(capsys: pytest.CaptureFixture) -> None:
    @main_guard
    def bad(kind: str) -> int:
        if kind == "user":
            raise UserError("config x.yaml:\n  key 'a' is unknown")
        if kind == "ctrl-c":
            raise KeyboardInterrupt
        if kind == "bug":
            raise ValueError("a bug keeps its traceback")
        return 0

    assert bad("ok") == 0
    assert bad("user") == 2
    assert capsys.readouterr().err == "error: config x.yaml: key 'a' is unknown\n"
    assert bad("ctrl-c") == 130 and capsys.readouterr().err == "error: interrupted\n"
    with pytest.raises(ValueError):
        bad("bug")


def test_every_cli_uses_the_guard() -> None:
    """No CLI keeps a private copy of the "error: ..." formatting."""
    root = Path(__file__).resolve().parents[1] / "clplat"
    copies = [p for p in root.rglob("*.py") if p.name != "errors.py" and 'f"error: {' in p.read_text()]
    assert copies == []


def test_atomic_writers(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    assert target.read_text() == "one" and oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "one" and sorted(os.listdir(target.parent)) == ["a.txt"]
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))


def test_no_private_atomic_writer_copies() -> None:
    root = Path(__file__).resolve().parents[1] / "clplat"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "io.py" and ("mkstemp" in p.read_text() or ".partial\")" in p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name,module", [("identity", nn.Identity), ("relu", nn.ReLU), ("silu", nn.SiLU)])
def test_activation_forms_agree(name: str, module: type[nn.Module]) -> None:
    x = torch.randn(4, 5)
    ref = module()(x)
    assert isinstance(make_activation(name), module)
    torch.testing.assert_close(apply_activation(x, name), ref)
    y = x.clone()
    out = apply_activation(y, name, inplace=True)
    torch.testing.assert_close(out, ref)
    assert activation_name(module()) == (None if name == "identity" else name)
    with pytest.raises(ValueError):
        make_activation("gelu")


def test_state_mismatch_names_keys_and_shapes() -> None:
    a, b = nn.Linear(4, 3), nn.Linear(4, 5)
    assert state_mismatch(a, a.state_dict()) is None
    msg = state_mismatch(a, b.state_dict())
    assert msg == "shape mismatch: weight [5, 4] in file vs [3, 4] in model, bias [5] in file vs [3] in model"
    with pytest.raises(UserError, match=r"^w\.pt: shape mismatch: weight \[5, 4\]"):
        load_state_checked(a, b.state_dict(), "w.pt")
    assert "missing keys: bias" in state_mismatch(a, {"weight": a.weight.detach()})


def test_probe_uses_max_iter() -> None:
    """``probe.max_iter`` reaches the solver: 1 iteration does not converge, the default does."""
    from sklearn.exceptions import ConvergenceWarning

    from clplat.config import DataConfig
    from clplat.data import build_dataset
    from clplat.pretrain import linear_probe

    data = build_dataset(DataConfig(dataset="digits", image_size=8), seed=0)
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
    with pytest.warns(ConvergenceWarning):
        linear_probe(features, data, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert linear_probe(features, data, max_iter=3000) > 0.5


def test_probe_report_passes_probe_max_iter(monkeypatch: pytest.MonkeyPatch) -> None:
    import clplat.pretrain as pt

    seen: list[int] = []
    monkeypatch.setattr(pt, "linear_probe", lambda backbone, data, max_iter=3000: seen.append(max_iter) or 0.5)
    cfg = pt.PretrainConfig(backbone={"name": "mlp", "kwargs": {"hidden": [8]}},
                            probe={"dataset": "digits", "max_iter": 7}, output="unused.safetensors")
    pt.probe_report(cfg, (1, 8, 8), nn.Flatten(), log=lambda s: None)
    assert seen == [7, 7]  # the pretrained features and the random-init twin
