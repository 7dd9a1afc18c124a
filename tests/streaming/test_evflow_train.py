"""Event-flow training pieces: EPE/nPE by hand, the masked loss, 100 ms targets against the scene's
per-bin flow, training windows, config and weights errors, and a tiny train -> save -> load run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clplat.errors import UserError
from clplat.events.scenes import SceneConfig, make_scene
from clplat.streaming.evflow.config import load_evflow_config
from clplat.streaming.evflow.data import WindowDataset, scene_targets
from clplat.streaming.evflow.metrics import FlowScores, masked_mse
from clplat.streaming.evflow.weights import load_event_flow


def test_epe_and_npe_by_hand():
    """Errors 0, 1.5, 3, 6 on valid pixels (one invalid pixel with error 100 is ignored)."""
    target = torch.zeros(2, 1, 5)
    pred = torch.zeros(2, 1, 5)
    pred[0, 0] = torch.tensor([0.0, 1.5, 0.0, 6.0, 100.0])
    pred[1, 0, 2] = 3.0  # a (0, 3) error: 3 px
    valid = torch.tensor([[True, True, True, True, False]])
    events = torch.tensor([[False, True, False, True, True]])
    s = FlowScores()
    epe = s.add(pred, target, valid, events)
    assert epe.flatten().tolist() == [0.0, 1.5, 3.0, 6.0, 100.0]
    out = s.summary()
    assert out["epe"] == pytest.approx(10.5 / 4)
    assert [out[f"{n}pe"] for n in (1, 2, 3, 4, 5)] == [75.0, 50.0, 25.0, 25.0, 25.0]
    assert out["epe_event_pixels"] == pytest.approx(7.5 / 2)
    s.add(pred, target, valid, events)  # sums, not means of means
    assert s.summary()["epe"] == pytest.approx(10.5 / 4) and s.summary()["valid_pixels"] == 8


def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 5.0]], [[2.0, 5.0]]]).view(1, 2, 1, 2)  # (B, 2, 1, 2): pixels (1,2), (5,5)
    target = torch.zeros(1, 2, 1, 2)
    assert masked_mse(pred, target, torch.tensor([[[True, False]]])).item() == pytest.approx(5.0)
    assert masked_mse(pred, target, torch.tensor([[[True, True]]])).item() == pytest.approx((5.0 + 50.0) / 2)
    assert masked_mse(pred, target, torch.zeros(1, 1, 2, dtype=torch.bool)).item() == 0.0


def test_targets_are_100ms_displacements():
    """A translating background alone: the 10-bin target is 10x the scene's per-bin flow."""
    cfg = SceneConfig(height=24, width=32, duration_ms=60, n_objects=0, background_speed=120.0)
    scene = make_scene(cfg, seed=3, keep_frames=False)
    flow, valid = scene_targets(scene, 6, 10_000, target_bins=10)
    assert flow.shape == (6, 2, 24, 32) and valid.shape == (6, 24, 32)
    per_bin = torch.from_numpy(scene.flow)
    assert per_bin.abs().max() > 0.1
    torch.testing.assert_close(flow, 10 * per_bin, rtol=1e-4, atol=1e-4)
    flow1, _ = scene_targets(scene, 6, 10_000, target_bins=1)
    torch.testing.assert_close(flow1, per_bin, rtol=1e-4, atol=1e-5)
    assert valid.any() and not valid.all()  # points leaving the image are invalid


def test_windows_cover_every_offset_and_take_the_last_targets():
    n, t = 2, 9
    scenes = {"bins": torch.arange(n * t).view(n, t, 1, 1, 1).expand(n, t, 2, 3, 3).half(),
              "flow": torch.arange(n * t).view(n, t, 1, 1, 1).expand(n, t, 2, 3, 3).half(),
              "valid": torch.ones(n, t, 3, 3, dtype=torch.bool)}
    ds = WindowDataset(scenes, warmup=3, grad=2, loss_bins=2, stride=2)
    assert ds.windows == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 2), (1, 4)]
    bins, flow, valid = ds[4]  # scene 1, offset 2: bins 11..15, targets of bins 14, 15
    assert bins[:, 0, 0, 0].tolist() == [11, 12, 13, 14, 15]
    assert flow[:, 0, 0, 0].tolist() == [14, 15] and valid.shape == (2, 3, 3)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: event_flow\ntrain:\n  epochz: 3\n")
    with pytest.raises(UserError, match="train.epochz"):
        load_evflow_config(bad)
    with pytest.raises(UserError, match="loss_bins"):
        load_evflow_config(None, ["train.loss_bins=11"])
    with pytest.raises(UserError, match="unknown event-flow model 'gru'"):
        load_evflow_config(None, ["model.arch=gru"])
    with pytest.raises(UserError, match="res_blocks"):  # the spiking net has no residual blocks
        load_evflow_config(None, ["model.arch=evflow_snn", "model.res_blocks=2"])
    cfg = load_evflow_config(None, ["model.arch=evflow_snn", "model.width=6"])
    assert type(cfg.model).__name__ == "SpikeFlowConfig" and cfg.model.width == 6


def test_weights_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_event_flow(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_event_flow(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign), metadata={"clplat": json.dumps({"format": "other/1"})})
    with pytest.raises(UserError, match="format 'other/1'"):
        load_event_flow(foreign)
    meta = {"format": "clplat.event_flow/1", "model": {"arch": "evflow_snn", "width": 4}}
    wrong = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(1)}, str(wrong), metadata={"clplat": json.dumps(meta)})
    with pytest.raises(UserError, match="weights do not fit"):
        load_event_flow(wrong)


@pytest.mark.slow
def test_tiny_training_run_saves_a_loadable_model(tmp_path):
    """Two scenes, one epoch: the saved model loads, streams like the trained one, and the JSON
    holds the held-out EPE of the net and of zero flow."""
    from clplat.streaming.evflow.run import run_training

    cfg = load_evflow_config(None, [
        "name=tiny", "model.arch=evflow_snn", "model.width=2", "data.height=32", "data.width=32", "data.train_scenes=2",
        "data.test_scenes=1", "data.train_scene_ms=200", "data.test_scene_ms=120", "train.epochs=1",
        "train.batch_size=2", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}",
        f"output.runs_dir={tmp_path / 'runs'}"])
    meta = run_training(cfg)
    path = tmp_path / "runs" / "tiny" / "model.safetensors"
    model, loaded = load_event_flow(path)
    assert loaded["metrics"] == json.loads(json.dumps(meta["metrics"]))
    held = meta["metrics"]["held_out"]
    assert held["model"]["bins"] == 3 and np.isfinite(held["model"]["epe"]) and held["zero_flow"]["epe"] > 0
    assert held["stream_vs_sequence_max_abs"] <= 1e-5
    assert list((tmp_path / "cache").glob("scenes_*.pt"))  # rendered scenes are reused next time


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evflow_lstm", "evflow_snn"])
def test_shipped_model_beats_zero_flow_on_fresh_scenes(name):
    """The shipped weights load (<= 10 MB, their own architecture) and, streamed bin by bin over two
    held-out scenes never scored at training (other seeds), predict better than zero flow."""
    from pathlib import Path

    from clplat.streaming.evflow.config import DataSection
    from clplat.streaming.evflow.data import render_scenes
    from clplat.streaming.evflow.run import evaluate_stream

    path = Path(__file__).resolve().parents[2] / "clplat" / "weights" / f"{name}.safetensors"
    assert path.stat().st_size <= 10e6
    model, meta = load_event_flow(path)
    assert meta["model"]["arch"] == name and meta["command"].startswith("python -m clplat.streaming.evflow train")
    data = DataSection.model_validate({**meta["data"], "test_scenes": 2, "test_scene_ms": 200, "cache_dir": None})
    torch.set_num_threads(1)
    scores = evaluate_stream(model, render_scenes(data, "test", seed=99, log=lambda _: None), meta["target_bins"])
    assert scores["model"]["epe"] < 0.95 * scores["zero_flow"]["epe"], scores
