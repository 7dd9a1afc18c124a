"""Bad files end in one line naming the file and the problem, exit code 2; a kill during a
checkpoint write leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clplat.config import BackboneConfig
from clplat.engine.checkpoint import atomic_save, load_checkpoint
from clplat.io import atomic_path
from tests.conftest import REPO, run_cli

ER = REPO / "experiments" / "si_blurry_er.yaml"


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_weights_with_right_keys_and_wrong_shapes(tmp_path: Path, small_overrides: list[str]) -> None:
    from safetensors.torch import save_file

    from clplat.backbones import build_backbone

    narrow = build_backbone(BackboneConfig(name="mlp", kwargs={"hidden": [32]}), (1, 8, 8))
    weights = tmp_path / "narrow.safetensors"
    save_file(narrow.state_dict(), str(weights))
    res = run_cli(["clplat.run", str(ER), *small_overrides, f"backbone.pretrained_file={weights}"])
    line = _one_error_line(res)  # the run builds an MLP with hidden [64]: same keys, other shapes
    assert str(weights) in line and "shape mismatch" in line and "[32, 64] in file vs [64, 64] in model" in line
    assert list((tmp_path / "runs").iterdir()) == []  # the failed run left no empty directory


@pytest.mark.parametrize("regime", ["online", "sessions"])
def test_missing_dataset_leaves_no_run_directory(tmp_path: Path, small_overrides: list[str], regime: str) -> None:
    missing = tmp_path / "no_such_folder"
    res = run_cli(["clplat.run", str(ER), *small_overrides, "data.dataset=imagefolder", f"data.root={missing}",
                   f"regime={regime}"])
    assert str(missing) in _one_error_line(res)
    assert list((tmp_path / "runs").iterdir()) == []


def _short_run(tmp_path: Path, small_overrides: list[str], name: str) -> Path:
    res = run_cli(["clplat.run", str(ER), *small_overrides, "online.online_iter=1", f"name={name}"])
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "runs" / name
    ckpt = run_dir / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["cursor"]["finished"] = False  # as if killed mid-stream: --resume would continue it
    atomic_save(state, ckpt)
    return run_dir


def _edit_config(run_dir: Path, **sections) -> None:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in sections.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.slow  # one short run and three resumes: four processes
def test_checkpoint_that_does_not_match_config(tmp_path: Path, small_overrides: list[str]) -> None:
    run_dir = _short_run(tmp_path, small_overrides, "changed")
    ckpt = run_dir / "checkpoints" / "last.pt"
    _edit_config(run_dir, backbone__kwargs={"hidden": [32]})  # another width than the checkpoint's
    line = _one_error_line(run_cli(["clplat.run", "--resume", str(run_dir)]))
    assert str(ckpt) in line and "does not match" in line and "config.yaml" in line
    assert "shape mismatch" in line and "in file vs" in line

    _edit_config(run_dir, backbone__kwargs={"width": 8}, backbone__name="small_cnn")  # another architecture
    line = _one_error_line(run_cli(["clplat.run", "--resume", str(run_dir)]))
    assert str(ckpt) in line and "does not match" in line and "missing keys" in line
    _edit_config(run_dir, backbone__kwargs={"hidden": [64]}, backbone__name="mlp", online__stream_batch=10)
    line = _one_error_line(run_cli(["clplat.run", "--resume", str(run_dir)]))  # same model, other stream
    assert str(ckpt) in line and "does not match the stream planned" in line and "stream_batch" in line
    assert load_checkpoint(ckpt)["cursor"]["finished"] is False  # the checkpoint was left untouched


def test_writer_dying_before_the_rename_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ck" / "last.pt"
    atomic_save({"v": torch.zeros(3)}, path)

    def die(*_):
        raise KeyboardInterrupt  # the process is stopped between the temporary write and the rename

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.ones(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["v"], torch.zeros(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("disk full")
    assert torch.equal(load_checkpoint(path)["v"], torch.zeros(3))


WRITER = """
import sys, torch
from clplat.engine.checkpoint import atomic_save
path = sys.argv[1]
big = [torch.full((1_000_000,), float(i)) for i in range(2)]
i = 0
while True:
    atomic_save({"i": i, "x": big[i % 2]}, __import__("pathlib").Path(path))
    i += 1
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """A process rewriting a 4 MB checkpoint in a loop is SIGKILLed at several moments; every time,
    what is on disk loads and is one complete version (its tensor matches its counter)."""
    path = tmp_path / "last.pt"
    for delay in (0.05, 0.13, 0.31):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout is not None
        for _ in range(3):  # wait until a few checkpoints were written, then kill mid-loop
            p.stdout.readline()
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        state = load_checkpoint(path)
        assert torch.equal(state["x"], torch.full((1_000_000,), float(state["i"] % 2)))
