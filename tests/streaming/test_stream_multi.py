"""Many streams in one batch (``--source a.mp4,b.mp4``): each stream's outputs equal the same
source played alone, a source that ends drops out without disturbing the others, and every
stream gets its own video and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch

from clplat.stream import main, parse_args, play, print_summary
from clplat.streaming import X3DS
from clplat.streaming.cuda_graph import CudaGraphStep
from clplat.streaming.sources import FrameSpec
from clplat.streaming.training.weights import FORMAT, save_trained
from tests.streaming.test_stream_apps import tiny_predictor, write_video  # noqa: F401  (fixture)

TINY = dict(width=4, depths=(1, 1), fc_width=8, expansion=1.0, head_window=4, causal=True)


@pytest.fixture
def tiny_x3d(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    meta = {"format": FORMAT, "name": "tiny", "arch": "x3d", "model": TINY, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "input": FrameSpec(size=(32, 32)).to_dict(),
            "data": {"canvas": 32, "digit_size": 16, "label": "digit"}}
    return save_trained(tmp_path / "tiny.safetensors", X3DS(10, **TINY).eval(), meta)[0]


def _recorded_run(argv: list[str]) -> tuple[list[list[torch.Tensor | None]], dict]:
    """Play ``argv`` and record every output row each stream's track receives."""
    app_cls, ref, args = parse_args(argv)
    return _recorded_run_app(app_cls(ref, args), args)


def _recorded_run_app(app, args) -> tuple[list[list[torch.Tensor | None]], dict]:
    records: list[list[torch.Tensor | None]] = []
    make_track = app.track

    def track(source):
        t, rec = make_track(source), []
        records.append(rec)
        update = t.update

        def recording_update(frame, y, step_s):
            rec.append(None if y is None else y.clone())
            update(frame, y, step_s)

        t.update = recording_update
        return t

    app.track = track
    return records, play(args, app)


def _assert_same(batched: list[torch.Tensor | None], alone: list[torch.Tensor | None]) -> None:
    assert len(batched) == len(alone)
    for b, a in zip(batched, alone):
        assert (b is None) == (a is None)
        if a is not None:
            assert b.shape == a.shape and a.shape[0] == 1
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["x3d", "predictor"])
def test_batched_streams_equal_each_stream_alone(kind: str, tiny_x3d: Path, tiny_predictor: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    """Three sources of 12, 5 and 9 frames (different sizes): the 5-frame one ends first and the
    9-frame one next; the others keep stepping exactly as they do alone."""
    model = str(tiny_x3d if kind == "x3d" else tiny_predictor)
    extra = ["--context", "3", "--horizon", "3"] if kind == "predictor" else []
    videos = [write_video(tmp_path / f"v{i}.mp4", n, size, seed=i)
              for i, (n, size) in enumerate([(12, (80, 60)), (5, (64, 64)), (9, (48, 72))])]
    records, summary = _recorded_run(["--model", model, "--source", ",".join(map(str, videos)),
                                      "--out", str(tmp_path / "b.mp4"), *extra])
    assert [s["frames"] for s in summary["streams"]] == [12, 5, 9] and summary["batch"] == 3
    for i, video in enumerate(videos):
        alone, _ = _recorded_run(["--model", model, "--source", str(video), "--out", str(tmp_path / f"a{i}.mp4"),
                                  *extra])
        _assert_same(records[i], alone[0])
    assert any(r is not None for r in records[0])


def test_multi_stream_cli_writes_per_stream_videos_and_stats(tiny_x3d: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    a, b = write_video(tmp_path / "a.mp4", 7), write_video(tmp_path / "b.mp4", 4, seed=1)
    out = tmp_path / "out.mp4"
    assert main(["--model", str(tiny_x3d), "--source", f"{a},{b}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 streams in one batch: 11 frames" in printed and "[1] " in printed
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["batch"] == 2 and stats["frames"] == 11 and stats["step_latency"]["frames"] == 7
    for i, n in enumerate((7, 4)):
        s = stats["streams"][i]
        assert s["frames"] == n and s["frame_latency"]["frames"] == n and "end of video" in s["end"]
        cap, count = cv2.VideoCapture(s["annotated_video"]), 0
        while cap.read()[0]:
            count += 1
        assert s["annotated_video"] == str(tmp_path / f"out_{i}.mp4") and count == n
    assert not out.exists()


def test_max_frames_applies_per_stream_and_synthetic_streams_differ(tiny_x3d: Path, tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    assert main(["--model", str(tiny_x3d), "--source", "synthetic,synthetic", "--max-frames", "6",
                 "--out", str(tmp_path / "o.mp4"), "--stats", str(stats)]) == 0
    s = json.loads(stats.read_text())
    assert [st["frames"] for st in s["streams"]] == [6, 6]
    first = [cv2.VideoCapture(str(tmp_path / f"o_{i}.mp4")).read()[1] for i in range(2)]
    assert not (first[0] == first[1]).all()  # stream i plays seed + i


def test_a_bad_source_in_the_list_is_one_line(tiny_x3d: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_video(tmp_path / "a.mp4", 3)
    assert main(["--model", str(tiny_x3d), "--source", f"{a},missing.mp4", "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: source not found: 'missing.mp4'") and "\n" not in err
    assert not list(tmp_path.glob("o*.mp4"))  # nothing half-written
    assert main(["--model", str(tiny_x3d), "--source", f"{a},,{a}"]) == 2
    assert "empty entry" in capsys.readouterr().err


class _EmulatedGraphStep(CudaGraphStep):
    """``CudaGraphStep``'s bookkeeping (static state buffers written back in place, one "graph"
    per phase, eager warm-up) on the CPU: "capture" keeps the function, "replay" runs it again."""

    def _pick_device(self, module: torch.nn.Module) -> torch.device:
        return torch.device("cpu")

    def _warm(self, fn):
        with torch.inference_mode():
            out, data, key = fn()
        return (None if out is None else out.clone()), [d.clone() for d in data], key

    def _record(self, fn):
        return fn


def test_graph_step_through_the_runner(tiny_x3d: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The runner with a CUDA-graph step (emulated on the CPU): three streams, one ending early,
    give the eager outputs; capture steps are reported apart from the latencies."""
    videos = [write_video(tmp_path / f"v{i}.mp4", n, seed=i) for i, n in enumerate((10, 4, 7))]
    argv = ["--model", str(tiny_x3d), "--source", ",".join(map(str, videos)), "--out", str(tmp_path / "g.mp4")]
    eager, _ = _recorded_run(argv)
    app_cls, ref, args = parse_args(argv)
    app = app_cls(ref, args)
    app.step_fn = _EmulatedGraphStep(app.stream)
    graphed, summary = _recorded_run_app(app, args)
    for b, a in zip(graphed, eager):
        _assert_same(b, a)
    g = summary["cuda_graph"]
    assert g["graphs"] >= 1 and summary["step_latency"]["frames"] == 10 - g["graphs"]
    print_summary(summary, app)
    assert "graph(s) captured" in capsys.readouterr().out
