"""pytorchvideo X3D checkpoints in the demo (``--model pytorchvideo:x3d_s --weights PATH``): the
key mapping and architecture against pytorchvideo's own model (offline, exact), the stream's
measured distance from the clip model (its squeeze-excite is causal), and one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from clplat.stream import main
from clplat.streaming.apps.torchvision_video import read_state_dict
from clplat.streaming.models.pytorchvideo_x3d import build_x3d, clip_model, from_pytorchvideo_state
from clplat.streaming.sources import FrameSpec
from tests.streaming.test_stream_torchvision import _decoded, _play_recorded

with warnings.catch_warnings():  # pytorchvideo 0.1.5 uses torch.jit.script at import
    warnings.simplefilter("ignore")
    from pytorchvideo.models.x3d import create_x3d

SMALL = FrameSpec(size=(64, 64), mean=(0.45,) * 3, std=(0.225,) * 3)


def _pv_model(clip_len: int, crop: int, classes: int = 400, seed: int = 0, **kwargs) -> torch.nn.Module:
    """pytorchvideo's X3D with random weights and BatchNorm statistics (so BN folding counts), its
    pool sized to a ``clip_len`` x ``crop`` clip, logits out (no softmax), eval mode."""
    torch.manual_seed(seed)
    model = create_x3d(input_clip_length=clip_len, input_crop_size=crop, model_num_class=classes,
                       head_activation=None, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.blocks[-1].proj.weight.mul_(50.0)  # logits of order 10, not 0.1
    return model


def _save(model: torch.nn.Module, path: Path) -> Path:
    """The hub checkpoint layout: ``{"model_state": state_dict, ...}``."""
    torch.save({"model_state": model.state_dict(), "epoch": 196}, path)
    return path


def test_offline_forward_equals_pytorchvideos_model(tmp_path: Path) -> None:
    """clplat's X3D with clip-wide SE, loaded from a pytorchvideo checkpoint (.pyth and the same
    tensors as .safetensors), computes pytorchvideo's forward: logits to 1e-5, and its softmax head."""
    from safetensors.torch import save_file

    pv = _pv_model(clip_len=5, crop=48, classes=12)
    state = read_state_dict(_save(pv, tmp_path / "x3d.pyth"))
    save_file({k: v.contiguous() for k, v in pv.state_dict().items()}, str(tmp_path / "x3d.safetensors"))
    clip = torch.randn(2, 3, 5, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = pv(clip)
        for weights in (state, read_state_dict(tmp_path / "x3d.safetensors")):
            got = clip_model(12, weights)(clip)
            assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())
        assert want.abs().max() > 1.0 and want.std() > 0.1  # not a degenerate comparison
        soft = create_x3d(input_clip_length=5, input_crop_size=48, model_num_class=12).eval()
        soft.load_state_dict(pv.state_dict())  # pytorchvideo's default head: softmax in eval
        torch.testing.assert_close(soft(clip), got.softmax(1), atol=1e-6, rtol=1e-5)


def _smooth_video(path: Path, frames: int, fps: float) -> Path:
    """Blurred noise that drifts: neighbouring frames alike, distant ones different."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (60, 80 + 3 * frames, 3), dtype=np.uint8), (9, 9), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (80, 60))
    for i in range(frames):
        writer.write(np.ascontiguousarray(base[:, 3 * i: 3 * i + 80]))
    writer.release()
    return path


# Measured (random weights, 64 px, x3d_s clip of 13, this test's video, 12 windows): max |stream -
# clip model| = 0.46% of the clip model's largest logit, top-1 always equal. The bound leaves 2x
# margin; swapping two mapped BatchNorms (norm_a <-> norm_b) gives 42%. Top-1 alone would not see
# that: a random X3D picks the same class for every clip.
GAP_TOL = 0.01


@pytest.mark.slow
def test_stream_is_exact_for_its_causal_se_and_close_to_the_clip_model(tmp_path: Path) -> None:
    """The demo's stream of ``pytorchvideo:x3d_s``: (1) every emitted prediction equals clplat's
    X3D with the stream's causal SE (window 13) run offline over the frames so far (the stream is
    exact for what it computes), 28 frames late, every frame; (2) its distance from pytorchvideo's
    clip model run on the 13 frames the prediction describes is bounded (the SE approximation and
    the window's zero padding), at the measured level."""
    frames = 52
    pv = _pv_model(clip_len=13, crop=64)
    weights = _save(pv, tmp_path / "x3d_s.pyth")
    video = _smooth_video(tmp_path / "in.mp4", frames, fps=5.0)  # x3d_s's rate: no thinning
    outputs, summary, app = _play_recorded(["--model", "pytorchvideo:x3d_s", "--weights", str(weights),
                                            "--source", str(video), "--out", str(tmp_path / "o.mp4")], SMALL)
    assert (summary["delay"], summary["clip_len"], summary["frames"]) == (28, 13, frames)
    clip = torch.stack([SMALL.to_tensor(f)[0] for f in _decoded(video)], 1)[None]
    net = from_pytorchvideo_state(build_x3d(400, se_window=13, head_window=13), pv.state_dict()).eval()
    with torch.no_grad():
        per_frame = net.forward_frames(clip)[0].T  # (T, classes)
    emitted = [(t, y.reshape(-1)) for t, y in enumerate(outputs) if y is not None]
    assert [t for t, _ in emitted] == list(range(28, frames))
    gaps, agree = [], []
    for t, y in emitted:
        p = t - 28  # the position this prediction describes
        torch.testing.assert_close(y, per_frame[p], atol=2e-4, rtol=1e-4)
        if p >= 12:
            with torch.no_grad():
                ref = pv(clip[:, :, p - 12: p + 1])[0]
            gaps.append(float((y - ref).abs().max() / ref.abs().max()))
            agree.append(int(y.argmax() == ref.argmax()))
    assert len(gaps) >= 10
    assert max(gaps) <= GAP_TOL, max(gaps)
    assert np.mean(agree) >= 0.9


def test_class_names_and_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Kinetics-400 names from torchvision's metadata (alphabetical, as pytorchvideo's labels), the
    hub recipe (182 px, mean 0.45 / std 0.225), a 15 frames/s file thinned to x3d_s's 5, and the
    one-time note that the stream is approximate."""
    weights = _save(_pv_model(clip_len=13, crop=160), tmp_path / "x3d_s.pyth")
    video = _smooth_video(tmp_path / "in.mp4", 9, fps=15.0)
    outputs, summary, app = _play_recorded(["--model", "pytorchvideo:x3d_s", "--weights", str(weights),
                                            "--source", str(video), "--out", str(tmp_path / "o.mp4")], SMALL)
    assert summary["frames"] == 3 and summary["exact"] is False  # every 3rd frame
    names = app.class_names
    assert len(names) == 400 and names == sorted(names) and names[:2] == ["abseiling", "air drumming"]
    assert app.preset.crop == 182 and app.preset.mean == (0.45,) * 3 and app.preset.std == (0.225,) * 3
    assert capsys.readouterr().out.count("streams approximately") == 1


def test_bad_weights_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torchvision.models.video import r3d_18

    x3d_l = _save(create_x3d(input_clip_length=16, input_crop_size=312, depth_factor=5.0), tmp_path / "l.pyth")
    narrow = _save(create_x3d(input_clip_length=13, input_crop_size=160, width_factor=1.0), tmp_path / "n.pyth")
    r3d = tmp_path / "r3d.pth"
    torch.save(r3d_18(weights=None).state_dict(), r3d)
    corrupt = tmp_path / "corrupt.pyth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    fit = "do not fit pytorchvideo:x3d_s (X3D in pytorchvideo's layout)"
    cases = [
        (["--weights", str(x3d_l)], [fit, "unexpected keys: blocks.1.res_blocks.3."]),
        (["--weights", str(narrow)], [fit, "shape mismatch: blocks.0.conv.conv_t.weight [16, 3, 1, 3, 3] in file"]),
        (["--weights", str(r3d)], [fit, "missing keys: blocks.0.conv.conv_t.weight", "unexpected keys: stem.0"]),
        (["--weights", str(corrupt)], ["cannot read weights"]),
        (["--weights", str(tmp_path / "nope.pyth")], ["weights file not found"]),
        ([], ["pytorchvideo:x3d_s needs --weights PATH"]),
    ]
    for extra, messages in cases:
        argv = ["--model", "pytorchvideo:x3d_s", *extra, "--max-frames", "2", "--out", str(tmp_path / "o.mp4")]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and all(m in err for m in messages), (argv, err)
    assert main(["--model", "pytorchvideo:x3d_l", "--weights", str(x3d_l), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown pytorchvideo model 'x3d_l'" in err and "no evaluation recipe" in err and "\n" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_clip_wide_squeeze_excite_is_refused_by_conversion() -> None:
    """The offline model (SE over the whole clip) must not be streamed silently as if exact."""
    from clplat.streaming import convert
    from clplat.streaming.models.pytorchvideo_x3d import build_x3d

    with pytest.raises(NotImplementedError, match="whole clip has no causal step"):
        convert(build_x3d(10, se_window=None).eval())
