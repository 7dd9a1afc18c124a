"""The next-frame predictor (ConvS5 / ConvLSTM cores), its data, metrics and train command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clplat.data.bouncing_digits import BouncingDigits, BouncingDigitsSpec
from clplat.errors import UserError
from clplat.streaming.models.convs5_predictor import FramePredictor, count_parameters
from clplat.streaming.prediction.config import load_predict_config
from clplat.streaming.prediction.metrics import evaluate_horizon, frame_scores
from clplat.streaming.prediction.run import load_predictor, run_training


def _tiny(core: str, seed: int = 0) -> FramePredictor:
    torch.manual_seed(seed)
    return FramePredictor(widths=(4, 8), latent=8, layers=2, core=core, state_channels=8).eval()


@pytest.mark.parametrize("core", ["convs5", "convlstm"])
def test_parallel_pass_equals_stepping(core):
    model = _tiny(core)
    clip = torch.rand(2, 1, 7, 16, 12)
    with torch.no_grad():
        logits, state = model.observe(clip)
        stepped, state2 = model.forward_steps(clip)
    torch.testing.assert_close(logits, stepped, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(state2), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("core", ["convs5", "convlstm"])
def test_imagine_is_observe_then_closed_loop_steps(core):
    """``imagine`` (scan over the context, then steps) equals stepping everything one frame at a time."""
    model = _tiny(core, 1)
    context = torch.rand(1, 1, 5, 16, 16)
    got = model.imagine(context, 4)
    with torch.no_grad():
        state, frames = None, []
        for t in range(5):
            logits, state = model.step(context[:, :, t], state)
        for _ in range(4):
            frames.append(torch.sigmoid(logits))
            logits, state = model.step(frames[-1], state)
    torch.testing.assert_close(got, torch.stack(frames, 2), atol=1e-5, rtol=1e-5)
    assert got.shape == (1, 1, 4, 16, 16)


def test_experiment_models_have_matched_parameters():
    s5 = FramePredictor(latent=32, layers=2, core="convs5", state_channels=112)
    lstm = FramePredictor(latent=32, layers=2, core="convlstm")
    assert abs(count_parameters(s5) - count_parameters(lstm)) / count_parameters(lstm) < 0.01


def test_predictor_rejects_bad_frames():
    model = _tiny("convs5")
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(1, 1, 3, 10, 16))
    with pytest.raises(ValueError, match="C=1"):
        model.step(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="non-finite"):
        model.step(torch.full((1, 1, 16, 16), float("nan")))


# ---- data -------------------------------------------------------------------------------------
def test_bouncing_digits_are_deterministic_and_continue():
    ds = BouncingDigits("test", 3, BouncingDigitsSpec(frames=10), seed=4)
    a, b = ds[1], BouncingDigits("test", 3, BouncingDigitsSpec(frames=10), seed=4)[1]
    assert a.shape == (10, 64, 64) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert np.array_equal(ds.video(1, 30)[:10], a.numpy())  # a longer video continues the same one
    assert not torch.equal(ds[0], ds[1])
    moved = (a[1:].float() - a[:-1].float()).abs().sum(dim=(1, 2))
    assert (moved > 0).all()  # the digits move every frame (speed >= 2 px)


def test_digits_bounce_inside_the_canvas():
    spec = BouncingDigitsSpec(canvas=32, digit_size=16, digits=2, frames=200, speed=(3.0, 3.0))
    video = BouncingDigits("train", 1, spec, seed=0).video(0)
    assert video.shape == (200, 32, 32)
    assert (video.reshape(200, -1).max(1) > 100).all()  # never leaves the canvas
    with pytest.raises(ValueError, match="digit_size"):
        BouncingDigitsSpec(canvas=16, digit_size=28)


# ---- metrics ----------------------------------------------------------------------------------
def test_frame_scores_by_hand():
    target = torch.zeros(1, 1, 2, 16, 16)
    pred = target.clone()
    pred[:, :, 1] = 0.1  # MSE 0.01 -> PSNR 20 dB
    s = frame_scores(pred, target)
    assert s["mse"].shape == (1, 2)
    assert s["mse"][0, 0] == 0 and s["mse"][0, 1] == pytest.approx(0.01)
    assert s["psnr"][0, 1] == pytest.approx(20.0, abs=1e-4)
    assert s["ssim"][0, 0] == pytest.approx(1.0)
    assert s["ssim"][0, 1] < 1.0


def test_ssim_in_chunks_equals_one_frame_at_a_time():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 1, 11, 16, 16, generator=g), torch.rand(2, 1, 11, 16, 16, generator=g)
    got = frame_scores(pred, target)["ssim"]  # 22 frames: more than one chunk
    want = torch.tensor([[float(ssim(pred[i, :, t][None], target[i, :, t][None], data_range=1.0))
                          for t in range(11)] for i in range(2)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_evaluate_horizon_shapes_and_baseline():
    model = _tiny("convs5")
    videos = torch.stack([BouncingDigits("test", 2, BouncingDigitsSpec(canvas=16, digit_size=8, frames=7))[i]
                          for i in range(2)])
    out = evaluate_horizon(model, videos, context=3, horizon=4, batch_size=1)
    assert len(out["per_frame"]["model_mse"]) == 4 and len(out["per_frame"]["copy_last_ssim"]) == 4
    clip = videos.float() / 255.0  # the baseline by hand: last context frame vs each future frame
    want = [float(((clip[:, 2] - clip[:, 3 + k]) ** 2).mean()) for k in range(4)]
    assert out["per_frame"]["copy_last_mse"] == pytest.approx(want, abs=1e-5)
    assert out["copy_last_mse_mean"] == pytest.approx(sum(want) / 4, abs=1e-5)
    with pytest.raises(ValueError, match="context \\+ horizon"):
        evaluate_horizon(model, videos, context=2, horizon=4)


# ---- config and train command -----------------------------------------------------------------
def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  core: convs5\n  colour: red\n")
    with pytest.raises(UserError, match="model.colour: unknown key"):
        load_predict_config(bad)
    with pytest.raises(UserError, match="model.core"):
        load_predict_config(None, ["model.core=transformer"])
    with pytest.raises(UserError, match="kernel_size: must be odd"):
        load_predict_config(None, ["model.kernel_size=4"])
    with pytest.raises(UserError, match="digit_size"):
        load_predict_config(None, ["data.canvas=16"])


def test_experiment_yamls_validate():
    for name in ("convs5", "convlstm"):
        cfg = load_predict_config(f"experiments/{name}_moving_digits.yaml")
        assert cfg.model.core == name and cfg.eval.context + cfg.eval.horizon > cfg.data.frames


def test_stream_train_entry_hands_prediction_configs_over(tmp_path, capsys):
    """``python -m clplat.stream train`` routes ``task: next_frame`` YAMLs here (bad keys then
    fail in this schema, not in the clip-classifier one)."""
    from clplat.stream import main as stream_main

    cfg = tmp_path / "p.yaml"
    cfg.write_text("task: next_frame\nmodel:\n  core: convs5\n  wings: 2\n")
    assert stream_main(["train", str(cfg)]) == 2
    assert "model.wings: unknown key" in capsys.readouterr().err


def test_train_command_end_to_end(tmp_path):
    overrides = [
        "model.widths=[4,8]", "model.latent=8", "model.layers=1", "model.state_channels=4",
        "data.canvas=16", "data.digit_size=8", "data.frames=4", "data.train_videos=4",
        "train.batch_size=2", "train.threads=1", "train.progress=false",
        "eval.videos=2", "eval.context=2", "eval.horizon=5", f"output.runs_dir={tmp_path}",
    ]
    meta = run_training(load_predict_config(None, overrides), command="test")
    weights = tmp_path / "convs5_moving_digits" / "model.safetensors"
    assert weights.is_file() and (tmp_path / "convs5_moving_digits" / "results.json").is_file()
    assert len(meta["metrics"]["per_frame"]["model_ssim"]) == 5
    model, loaded_meta = load_predictor(weights)
    assert loaded_meta["parameters"] == count_parameters(model)
    clip = torch.rand(1, 1, 3, 16, 16)
    fresh = FramePredictor(widths=(4, 8), latent=8, layers=1, state_channels=4)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(clip), fresh.eval()(clip))
    # the demo, headless: context then imagination into an mp4, latency JSON beside it
    from clplat.streaming.prediction.demo import main as demo_main

    out = tmp_path / "predict.mp4"
    assert demo_main(["--model", str(weights), "--out", str(out), "--context", "3", "--horizon", "4"]) == 0
    stats = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 0 and stats["latency"]["frames"] == 7 and len(stats["mse_per_frame"]) == 6
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_predictor(broken)
    with pytest.raises(UserError, match="not found"):
        load_predictor(tmp_path / "missing.safetensors")


def test_shipped_model_runs_the_demo_headless(tmp_path):
    from clplat.streaming.prediction.demo import main as demo_main
    from clplat.streaming.prediction.demo import resolve_predictor

    model, meta = load_predictor(resolve_predictor("convs5_moving_digits"))
    assert meta["model"]["core"] == "convs5" and count_parameters(model) == meta["parameters"]
    out = tmp_path / "predict.mp4"
    assert demo_main(["--out", str(out), "--context", "4", "--horizon", "3"]) == 0  # the default model
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["core"] == "convs5" and stats["latency"]["frames"] == 7
    # the first imagined frame of a held-out video is close (random weights score ~0.14)
    assert stats["mse_per_frame"][3] < 0.05
    with pytest.raises(UserError, match="not found"):
        demo_main(["--model", str(tmp_path / "nope.safetensors"), "--out", str(out)])


def test_shipped_model_gives_the_same_outputs_with_either_scan():
    """The shipped weights mean the same under the chunked scan (default) and the associative
    scan it was trained with: observe outputs and states agree, and both agree with stepping."""
    from clplat.streaming import ConvS5
    from clplat.streaming.prediction.demo import resolve_predictor

    model, _ = load_predictor(resolve_predictor("convs5_moving_digits"))
    cores = [m for m in model.modules() if isinstance(m, ConvS5)]
    assert cores and all(c.scan == "chunked" for c in cores)
    clip = BouncingDigits("test", 1, BouncingDigitsSpec(frames=37), seed=3)[0][None, None].float() / 255
    with torch.no_grad():
        chunked, s_chunked = model.observe(clip)
        for c in cores:
            c.scan = "assoc"
        assoc, s_assoc = model.observe(clip)
        stepped, _ = model.forward_steps(clip[:, :, :9])
    torch.testing.assert_close(chunked, assoc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked[:, :, :9], stepped, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.utils._pytree.tree_leaves(s_chunked), torch.utils._pytree.tree_leaves(s_assoc), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
