"""Sources (video files, image folders, webcam, generator) and sinks (video, JSON, window probe).

Every video here is written by the test itself with ``cv2.VideoWriter`` into ``tmp_path``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from clplat.data.moving_digits import MovingDigits, MovingDigitsSpec
from clplat.errors import UserError
from clplat.streaming.sinks import LatencyStats, VideoFileSink, annotate, display_available, write_json
from clplat.streaming.sources import FrameSpec, ImageFolderSource, SyntheticSource, open_source


def write_video(path: Path, frames: int = 7, size: tuple[int, int] = (48, 64), fourcc: str = "mp4v") -> Path:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 2] = (30 * i) % 256  # red channel (BGR order on disk) grows with the frame index
        writer.write(img)
    writer.release()
    return path


@pytest.mark.parametrize("suffix,fourcc", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_file_yields_every_frame_in_rgb(tmp_path: Path, suffix: str, fourcc: str) -> None:
    path = write_video(tmp_path / f"clip{suffix}", fourcc=fourcc)
    with open_source(str(path)) as src:
        frames = list(src)
    assert len(frames) == 7 and src.fps == pytest.approx(10.0)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert frames[5].image[..., 0].mean() > frames[5].image[..., 2].mean() + 100  # red arrived as R
    assert [f.index for f in frames] == list(range(7)) and frames[0].label is None
    assert "end of video after 7 frames" in src.end_reason


def test_missing_and_corrupt_videos_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="source not found"):
        open_source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(UserError, match="cannot read video") as err:
        open_source(str(bad))
    assert "\n" not in str(err.value)


def test_truncated_video_reports_where_decoding_stopped(tmp_path: Path) -> None:
    path = write_video(tmp_path / "long.avi", frames=30, fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut mid-stream
    try:
        src = open_source(str(path))
    except UserError:
        return  # also acceptable: refused up front with a clear message
    frames = list(src)
    assert 0 < len(frames) < 30
    assert src.end_reason  # says why it ended (end of video / decoding stopped)


def test_missing_webcam_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no camera found at index 97"):
        open_source("webcam:97")
    with pytest.raises(UserError, match="integer"):
        open_source("webcam:front")


def test_image_folder_skips_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((20, 30, 3), 40 * i, np.uint8))
    (tmp_path / "f1b.png").write_bytes(b"broken")
    src = open_source(str(tmp_path))
    assert isinstance(src, ImageFolderSource)
    frames = list(src)
    assert len(frames) == 3 and src.skipped == 1
    assert "f1b.png" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        open_source(str(empty))


def test_synthetic_source_is_labelled_and_deterministic() -> None:
    spec = MovingDigitsSpec(canvas=32)
    a = [(f.image, f.label) for f in itertools.islice(SyntheticSource(spec, seed=3), 20)]
    b = [(f.image, f.label) for f in itertools.islice(open_source("synthetic", synthetic=spec, seed=3), 20)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert all(lab is not None and 0 <= lab < 10 for _, lab in a)


def test_frame_spec_crops_to_aspect_then_resizes() -> None:
    spec = FrameSpec(size=(32, 32))
    wide = np.zeros((60, 120, 3), np.uint8)
    wide[:, 30:90] = 255  # the centre square
    out = spec.fit(wide)
    assert out.shape == (32, 32, 3) and out.min() == 255  # the side bands were cropped away
    x = spec.to_tensor(wide)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.45) / 0.225))


def test_live_frames_and_training_clips_share_one_preprocessing() -> None:
    spec = FrameSpec(size=(32, 32))
    video, _ = MovingDigits("test", 1, MovingDigitsSpec(frames=5))[0]
    clip = spec.clip_tensor(video[None])  # training path: (1, 3, T, H, W)
    for t in range(5):
        assert torch.equal(spec.to_tensor(video[t].numpy()), clip[:, :, t])
    assert FrameSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_latency_stats() -> None:
    stats = LatencyStats()
    for ms in range(1, 101):
        stats.add(ms / 1e3)
    s = stats.summary()
    assert s["frames"] == 100 and s["mean_ms"] == pytest.approx(50.5)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01) and s["fps"] == pytest.approx(1e3 / 50.5, rel=1e-3)
    assert LatencyStats().summary() == {"frames": 0}


def test_video_sink_writes_a_readable_file_atomically(tmp_path: Path) -> None:
    sink = VideoFileSink(tmp_path / "out" / "annotated.mp4", fps=12)
    for i in range(5):
        sink.write(annotate(np.full((32, 32, 3), 20 * i, np.uint8), [f"pred {i}", "step 1.0 ms"]))
    assert not (tmp_path / "out" / "annotated.mp4").exists()  # only the .partial exists until close
    path = sink.close()
    assert path == tmp_path / "out" / "annotated.mp4" and path.is_file()
    assert not list((tmp_path / "out").glob("*partial*"))
    with open_source(str(path)) as src:
        frames = list(src)
    assert len(frames) == 5 and frames[0].image.shape == (256, 256, 3)


def test_aborted_video_sink_leaves_nothing(tmp_path: Path) -> None:
    sink = VideoFileSink(tmp_path / "a.avi")
    sink.write(np.zeros((16, 16, 3), np.uint8))
    assert sink.close(keep=False) is None
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="--out must end"):
        VideoFileSink(tmp_path / "a.gif")


def test_json_and_display_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_json(tmp_path / "s" / "stats.json", {"frames": 3})
    assert json.loads(path.read_text()) == {"frames": 3}
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert display_available() is False
    monkeypatch.setenv("DISPLAY", ":99")  # set, but this OpenCV build has no highgui (or no server)
    assert display_available() in (False, True)
