"""torchvision Kinetics video models in the demo from a local weights file
(``--model torchvision:NAME --weights PATH``): torchvision's own preprocessing, streaming output
equal to the offline network over the clip, and one-line errors for files that do not fit."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.models import get_model_builder, get_model_weights

from clplat.stream import main, parse_args, play
from clplat.streaming.sources import EveryNth, ResizeCropSpec, SyntheticSource
from tests.streaming.test_stream_apps import write_video

SMALL = ResizeCropSpec(size=(32, 32), resize=(36, 48), mean=(0.43, 0.39, 0.37), std=(0.23, 0.22, 0.21))


def _save_random(path: Path, name: str, seed: int = 0) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(seed)
    model = get_model_builder(name)(weights=None).eval()
    with torch.no_grad():  # random BN statistics, so folding BN into the convs is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return model, path


def _decoded(video: Path) -> list[np.ndarray]:
    cap, frames = cv2.VideoCapture(str(video)), []
    while (got := cap.read())[0]:
        frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
    return frames


def _reference(model: torch.nn.Module, clip: torch.Tensor, window: int) -> torch.Tensor:
    """torchvision's own layers over the whole clip ``(1, 3, T, H, W)``, then its ``fc`` on the
    mean pooled features of each window of ``window`` positions ending at each position."""
    with torch.no_grad():
        x = model.stem(clip)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
        feats = x.mean(dim=(3, 4))[0].T  # (T', C)
        pooled = torch.stack([feats[max(0, j - window + 1): j + 1].mean(0) for j in range(len(feats))])
        return model.fc(pooled)  # (T', classes)


def _play_recorded(argv: list[str], spec: ResizeCropSpec | None = None) -> tuple[list, dict, object]:
    app_cls, ref, args = parse_args(argv)
    app = app_cls(ref, args)
    if spec is not None:
        app.spec = spec  # a smaller crop: the streaming arithmetic is the same at any size
    outputs: list = []
    make_track = app.track

    def track(source):
        t = make_track(source)
        update = t.update

        def recording(frame, y, step_s):
            outputs.append(None if y is None else y.clone())
            update(frame, y, step_s)

        t.update = recording
        return t

    app.track = track
    return outputs, play(args, app), app


@pytest.mark.parametrize("name,frames,small", [
    ("mc3_18", 24, True),
    pytest.param("mc3_18", 24, False, marks=pytest.mark.slow),
    pytest.param("r2plus1d_18", 80, True, marks=pytest.mark.slow),
])
def test_streamed_torchvision_model_equals_the_offline_clip(name: str, frames: int, small: bool,
                                                            tmp_path: Path) -> None:
    """Every emitted prediction equals torchvision's network run offline over the frames so far,
    pooled over the last full window (16 frames' positions), at the documented delay and stride.
    ``small``: a 32 px crop instead of torchvision's 112 px, to keep it cheap (the arithmetic of
    the stream is the same at any size); slow: mc3_18 at 112 px, r2plus1d_18 (delay 54, stride 8)."""
    model, weights = _save_random(tmp_path / f"{name}.pth", name)
    video = write_video(tmp_path / "in.mp4", frames, size=(80, 60))  # 15 frames/s: no thinning
    spec = SMALL if small else None
    outputs, summary, app = _play_recorded(["--model", f"torchvision:{name}", "--weights", str(weights),
                                            "--source", str(video), "--out", str(tmp_path / "o.mp4")], spec)
    delay, stride = {"mc3_18": (5, 1), "r2plus1d_18": (54, 8)}[name]
    assert (summary["delay"], summary["temporal_stride"], summary["window_positions"]) == (delay, stride, 16 // stride)
    assert summary["frames"] == frames and summary["arch"] == f"torchvision:{name}"
    clip = torch.stack([app.spec.to_tensor(f)[0] for f in _decoded(video)], 1)[None]  # (1, 3, T, H, W)
    ref = _reference(model, clip, 16 // stride)
    emitted = [(t, y) for t, y in enumerate(outputs) if y is not None]
    assert [t for t, _ in emitted] == [delay + stride * j for j in range(len(emitted))]
    assert len(emitted) >= 3  # past the first full window of positions
    for j, (_, y) in enumerate(emitted):
        torch.testing.assert_close(y.reshape(-1), ref[j], atol=2e-4, rtol=1e-4)
    assert ref[len(emitted) - 1].abs().max() > 1e-2


def test_preprocessing_is_torchvisions_preset() -> None:
    """Resize to 128x171 (enlarging a 60x80 frame), centre crop 112, Kinetics mean/std: the same
    numbers as ``R2Plus1D_18_Weights.KINETICS400_V1.transforms()`` up to uint8 rounding."""
    from clplat.streaming.models.torchvision_video import kinetics_preset

    p = kinetics_preset("r2plus1d_18")
    spec = ResizeCropSpec(size=p.crop, mean=p.mean, std=p.std, resize=p.resize)
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (5, 5), 0)
    ours = spec.to_tensor(image)[0]  # (3, 112, 112)
    preset = get_model_weights("r2plus1d_18").KINETICS400_V1.transforms()
    theirs = preset(torch.from_numpy(image).permute(2, 0, 1)[None])[:, 0]  # (C, T, H, W) -> (3, 112, 112)
    assert ours.shape == theirs.shape == (3, 112, 112)
    assert float((ours - theirs).abs().max()) < 2.5 / 255 / min(p.std)
    assert len(p.categories) == 400 and p.categories[0] == "abseiling" and (p.frame_rate, p.clip_len) == (15.0, 16)


def test_kinetics_class_names_in_the_demo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 30 frames/s video is thinned to 15; the drawn prediction is a Kinetics class name."""
    _, weights = _save_random(tmp_path / "mc3.pth", "mc3_18")
    video = tmp_path / "fast.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for i in range(16):
        writer.write(np.full((48, 64, 3), 8 * i, np.uint8))
    writer.release()
    outputs, summary, app = _play_recorded(["--model", "torchvision:mc3_18", "--weights", str(weights),
                                            "--source", str(video), "--out", str(tmp_path / "o.mp4")], SMALL)
    assert summary["frames"] == 8  # 16 frames at 30 frames/s, every 2nd stepped
    assert app.class_names[:2] == ["abseiling", "air drumming"]  # torchvision's metadata, no download
    y = next(o for o in outputs if o is not None)
    assert app.class_names[int(y.argmax())] in get_model_weights("mc3_18").KINETICS400_V1.meta["categories"]


def test_every_nth_frame() -> None:
    source = EveryNth(SyntheticSource(seed=0), 3)
    frames = list(itertools.islice(source, 4))
    direct = list(itertools.islice(SyntheticSource(seed=0), 10))
    assert [f.index for f in frames] == [0, 1, 2, 3] and source.fps == pytest.approx(25 / 3)
    for f, d in zip(frames, direct[::3]):
        assert (f.image == d.image).all() and f.label == d.label


def test_bad_weights_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, r3d = _save_random(tmp_path / "r3d.pth", "r3d_18")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    pickled = tmp_path / "pickled.pth"
    torch.save({"conv": argparse.Namespace(weight=1)}, pickled)  # weights_only refuses arbitrary objects
    not_tensors = tmp_path / "not_tensors.pth"
    torch.save({"epoch": 3}, not_tensors)
    cases = [
        (["--model", "torchvision:r2plus1d_18", "--weights", str(r3d)],
         f"weights '{r3d}' do not fit torchvision:r2plus1d_18"),
        (["--model", "torchvision:r2plus1d_18", "--weights", str(corrupt)], "cannot read weights"),
        (["--model", "torchvision:r3d_18", "--weights", str(pickled)], "weights_only=True"),
        (["--model", "torchvision:r3d_18", "--weights", str(not_tensors)], "hold no state dict"),
        (["--model", "torchvision:r3d_18", "--weights", str(tmp_path / "nope.pth")], "weights file not found"),
        (["--model", "torchvision:r3d_18"], "needs --weights PATH"),
        (["--model", "torchvision:s3d", "--weights", str(r3d)], "cannot be streamed exactly"),
        (["--model", "torchvision:mvit_v2_s", "--weights", str(r3d)], "attention mixes every frame"),
        (["--model", "torchvision:resnet50", "--weights", str(r3d)], "unknown torchvision video model 'resnet50'"),
    ]
    for argv, message in cases:
        assert main([*argv, "--max-frames", "2", "--out", str(tmp_path / "o.mp4")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (argv, err)
    assert not (tmp_path / "o.mp4").exists()
