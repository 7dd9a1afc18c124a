"""The event-flow demo (``python -m clplat.stream --model EVFLOW --source ...``) headless on every
event file format, on ``sim:VIDEO`` and on a scene file with ground truth; the chained per-bin
ground truth against the exact displacement; one-line errors."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from clplat.events.scenes import SceneConfig, make_scene, write_scene_h5
from clplat.stream import main as stream_main
from clplat.streaming.event_source import compose_flows
from clplat.streaming.evflow.weights import FORMAT, save_event_flow
from clplat.streaming.models.evflow_common import EventFlowConfig, build_evflow
from tests.events.formats import random_events
from tests.events.test_readers import CASES

W, H = 40, 30
FORMAT_CASES = ["dsec", "dsec_h5py", "aedat4", "es", "evt2_bytes", "evt3_bytes", "dat_bytes", "npz", "text",
                "evt2_expelliarmus"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """A tiny (untrained) spiking flow net in the shipped format."""
    torch.manual_seed(0)
    cfg = EventFlowConfig.model_validate({"arch": "evflow_snn", "width": 2})
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    meta = {"format": FORMAT, "name": "tiny", "model": cfg.model_dump(mode="json"),
            "input": {"bin_us": 10_000}, "target_bins": 3}
    save_event_flow(path, build_evflow(cfg), meta)
    return str(path)


def _play(model: str, source: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / "flow.mp4"
    rc = stream_main(["--model", model, "--source", source, "--out", str(out), "--no-window", *extra])
    assert rc == 0
    assert out.is_file() and out.stat().st_size > 0
    return json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_demo_on_every_format(case, model_file, tmp_path):
    """Every event reaches a bin, one step per 10 ms from the first event to the last."""
    writer, name, fmt, _, offset, _ = CASES[case]
    ev = random_events(1500, W, H, seed=3, t0=offset, max_gap=60)
    path = tmp_path / name
    writer(path, ev)
    s = _play(model_file, str(path), tmp_path)
    assert s["events"] == len(ev)
    assert s["frames"] == (int(ev.t[-1]) - int(ev.t[0])) // 10_000 + 1
    assert s["arch"] == "evflow_snn" and s["step_latency"]["frames"] >= 1
    assert "flow_scores" not in s  # no ground truth in a plain recording


def test_demo_on_a_scene_file_scores_epe(model_file, tmp_path):
    scene = make_scene(SceneConfig(height=32, width=32, duration_ms=80, n_objects=1), seed=5, keep_frames=False)
    path = tmp_path / "scene.h5"
    write_scene_h5(path, scene)
    s = _play(model_file, str(path), tmp_path)
    assert s["frames"] == 8
    scores = s["flow_scores"]
    assert scores["bins"] == 6 and scores["valid_pixels"] > 0 and math.isfinite(scores["epe"])


def test_demo_on_a_simulated_video(model_file, tmp_path):
    """``sim:VIDEO``: a bright bar moving over 12 frames at 100 fps gives events and 11 bins."""
    video = tmp_path / "bar.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 100, (48, 32))
    for k in range(12):
        img = np.full((32, 48, 3), 40, dtype=np.uint8)
        img[:, 4 + 3 * k : 10 + 3 * k] = 220
        writer.write(img)
    writer.release()
    s = _play(model_file, f"sim:{video}", tmp_path)
    assert s["events"] > 100 and 10 <= s["frames"] <= 12


def test_demo_on_the_synthetic_scene(model_file, tmp_path, monkeypatch):
    import clplat.streaming.event_source as es

    monkeypatch.setattr(es, "SYNTHETIC_SIZE", (32, 48))
    monkeypatch.setattr(es, "SYNTHETIC_MS", 60)
    s = _play(model_file, "synthetic", tmp_path)
    assert s["frames"] == 6 and s["flow_scores"]["bins"] == 4


def test_chained_ground_truth_matches_the_exact_displacement():
    """Ten 10 ms flows of a rotating/zooming/translating scene chained by bilinear sampling give
    the exact 100 ms displacement to a small fraction of a pixel where valid."""
    scene = make_scene(SceneConfig(height=48, width=48, duration_ms=100, n_objects=2), seed=7, keep_frames=False)
    disp, ok = compose_flows(torch.from_numpy(scene.flow), torch.from_numpy(scene.valid))
    exact, valid = scene.displacement(0, 100_000)
    exact = torch.from_numpy(exact)
    both = ok & torch.from_numpy(valid)
    assert both.float().mean() > 0.5
    err = (disp - exact).norm(dim=0)[both]
    assert exact.norm(dim=0)[both].mean() > 1.0  # the motion is not trivial
    assert float(err.median()) < 0.05 and float(err.mean()) < 0.2


def test_one_translation_chains_to_n_times_the_flow():
    flows = torch.zeros(4, 2, 9, 9)
    flows[:, 0] = 1.0  # 1 px right per bin
    disp, ok = compose_flows(flows, torch.ones(4, 9, 9, dtype=torch.bool))
    assert torch.all(disp[0][ok] == 4.0) and torch.all(disp[1] == 0.0)
    assert ok[:, :5].all() and not ok[:, 5:].any()  # points that leave the image are invalid


def test_demo_errors(model_file, tmp_path, capsys):
    assert stream_main(["--model", model_file, "--source", str(tmp_path / "none.h5"), "--no-window"]) == 2
    assert "event file not found" in capsys.readouterr().err
    assert stream_main(["--model", model_file, "--source", "sim:" + str(tmp_path / "none.mp4"), "--no-window"]) == 2
    assert "video file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("0.1 1 2 1\n0.05 1 2 0\n")  # decreasing time
    out = str(tmp_path / "x.mp4")
    assert stream_main(["--model", model_file, "--source", str(bad), "--out", out, "--sensor-size", "8x8"]) == 2
    assert "bad.txt" in capsys.readouterr().err
    assert stream_main(["--model", model_file, "--source", str(bad), "--sensor-size", "8by8", "--out", out]) == 2
    assert "--sensor-size" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_demo_equals_eager_on_the_shipped_lstm(tmp_path):
    """``--compile`` (Inductor on CPU) streams the trained LSTM net to the same EPE as eager steps
    (with Inductor's freezing it would not: ``compile_step`` turns freezing off for a step with a
    transposed conv, which this net's decoder has)."""
    scene = make_scene(SceneConfig(height=40, width=56, duration_ms=130, n_objects=2), seed=11, keep_frames=False)
    path = tmp_path / "scene.h5"
    write_scene_h5(path, scene)
    eager = _play("evflow_lstm", str(path), tmp_path)
    compiled = _play("evflow_lstm", str(path), tmp_path, "--compile")
    assert compiled["compiled"]["phases"] == 1
    assert compiled["flow_scores"]["epe"] == pytest.approx(eager["flow_scores"]["epe"], abs=1e-3)
