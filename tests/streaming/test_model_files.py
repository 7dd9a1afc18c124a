"""Saved streaming models: a file that does not fit (another architecture, right keys with wrong
shapes, a header describing no valid model) is one ``error:`` line naming the file and the
mismatch, exit 2, from the demo and from ``train`` (``train.init_weights``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clplat.errors import UserError
from clplat.stream import main
from clplat.streaming import LRCN, X3DS
from clplat.streaming.sources import FrameSpec
from clplat.streaming.training.weights import FORMAT, load_trained, save_trained
from tests.conftest import run_cli

TINY = dict(width=4, depths=(1, 1), fc_width=8, expansion=1.0, head_window=4, causal=True)
TINY_LRCN = dict(feature_dim=8, hidden_size=8, num_layers=1)
TRAIN_TINY = ["model.width=4", "model.depths=[1, 1]", "model.fc_width=8", "model.expansion=1.0",
              "model.head_window=4", "data.frames=4", "data.train_videos=16", "data.val_videos=8",
              "train.pretrain_epochs=0", "train.epochs=1", "train.batch_size=8", "train.warmup=2",
              "train.progress=false", "eval.stream_frames=10"]


def _meta(arch: str, model: dict) -> dict:
    return {"format": FORMAT, "name": "t", "arch": arch, "model": model, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "input": FrameSpec(size=(32, 32)).to_dict(),
            "data": {"canvas": 32, "digit_size": 16, "label": "digit"}}


def _save(path: Path, net: torch.nn.Module, arch: str, header_model: dict) -> Path:
    torch.manual_seed(0)
    return save_trained(path, net, _meta(arch, header_model))[0]


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_lrcn_weights_under_an_x3d_header(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _save(tmp_path / "lrcn_as_x3d.safetensors", LRCN(10, **TINY_LRCN), "x3d", TINY)
    assert main(["--model", str(path), "--max-frames", "3"]) == 2
    err = _one_error_line(capsys)
    assert str(path) in err and "missing keys" in err and "unexpected keys" in err


def test_right_keys_wrong_shapes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _save(tmp_path / "narrow.safetensors", X3DS(10, **TINY), "x3d", {**TINY, "width": 8})
    assert main(["--model", str(path), "--max-frames", "3"]) == 2
    err = _one_error_line(capsys)
    assert str(path) in err and "shape mismatch" in err and "in file vs" in err


def test_raw_safetensors_with_right_keys_wrong_shapes(tmp_path: Path) -> None:
    """The tensors of a correct file, each with one more output row, and its header unchanged."""
    good = _save(tmp_path / "good.safetensors", X3DS(10, **TINY), "x3d", TINY)
    model, meta = load_trained(good)
    bad = {k: torch.cat([v, v[:1]]) if v.ndim else v for k, v in model.state_dict().items()}
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata={"clplat": json.dumps(meta)})
    with pytest.raises(UserError, match=r"bad\.safetensors.*shape mismatch"):
        load_trained(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("header,message", [
    ({**TINY, "widht": 4}, "model.widht: unknown key"),
    ({**TINY, "width": 0}, "model.width:"),
])
def test_header_describing_no_valid_model(header: dict, message: str, tmp_path: Path) -> None:
    path = _save(tmp_path / "m.safetensors", X3DS(10, **TINY), "x3d", header)
    with pytest.raises(UserError, match="m.safetensors") as info:
        load_trained(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_demo_cli_exit_code_on_mismatch(tmp_path: Path) -> None:
    path = _save(tmp_path / "lrcn_as_x3d.safetensors", LRCN(10, **TINY_LRCN), "x3d", TINY)
    res = run_cli(["clplat.stream", "--model", str(path), "--max-frames", "3"], timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_train_init_weights_of_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lrcn = _save(tmp_path / "lrcn.safetensors", LRCN(10, **TINY_LRCN), "lrcn", TINY_LRCN)
    out = tmp_path / "out.safetensors"
    rc = main(["train", "experiments/stream_x3d_moving_digits.yaml", *TRAIN_TINY,
               f"train.init_weights={lrcn}", f"output.weights={out}", f"output.runs_dir={tmp_path}"])
    assert rc == 2
    err = _one_error_line(capsys)
    assert str(lrcn) in err and "lrcn model" in err and "trains x3d" in err
    assert not out.exists()


def test_train_init_weights_of_other_sizes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wide = _save(tmp_path / "wide.safetensors", X3DS(10, **{**TINY, "width": 8}), "x3d", {**TINY, "width": 8})
    rc = main(["train", "experiments/stream_x3d_moving_digits.yaml", *TRAIN_TINY,
               f"train.init_weights={wide}", f"output.runs_dir={tmp_path}"])
    assert rc == 2
    err = _one_error_line(capsys)
    assert str(wide) in err and "shape mismatch" in err


def test_train_init_weights_continues_from_the_file(tmp_path: Path) -> None:
    """A fitting file is loaded (not ignored): with lr ~0 the trained weights stay the file's."""
    torch.manual_seed(123)  # not the config's seed: a fresh init would differ from the file
    start = _save(tmp_path / "start.safetensors", X3DS(10, **TINY), "x3d", TINY)
    out = tmp_path / "out.safetensors"
    rc = main(["train", "experiments/stream_x3d_moving_digits.yaml", *TRAIN_TINY, "train.lr=1e-12",
               "train.weight_decay=0", f"train.init_weights={start}", f"output.weights={out}",
               f"output.runs_dir={tmp_path}"])
    assert rc == 0
    a, b = load_trained(start)[0].state_dict(), load_trained(out)[0].state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a if "running" not in k
               and "num_batches" not in k)


def test_nan_loss_stops_training_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nan.safetensors"
    rc = main(["train", "experiments/stream_x3d_moving_digits.yaml", *TRAIN_TINY, "train.lr=1e30",
               f"output.weights={out}", f"output.runs_dir={tmp_path / 'runs'}"])
    assert rc == 2
    err = _one_error_line(capsys)
    assert "training diverged: loss nan" in err and "train.lr" in err
    assert not out.exists() and not (tmp_path / "runs" / "stream_x3d_moving_digits" / "results.json").exists()


def test_streaming_wing_imports_neither_the_engine_nor_lightning_to_play() -> None:
    """The demo loads and converts a model without Lightning (fast start), and no part of the
    streaming wing, training included, imports the continual-learning engine."""
    code = ("import sys\n"
            "from clplat.stream import load_player\n"
            "load_player('stream_x3d_moving_digits', 'cpu', False)\n"
            "assert 'lightning' not in sys.modules, 'the demo imported lightning'\n"
            "import clplat.streaming.training.run\n"
            "bad = [m for m in sys.modules if m.startswith('clplat.engine')]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
