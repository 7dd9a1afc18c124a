"""Stream apps (``clplat.streaming.apps``): ``--model`` picks the app, an app is one registered
class, and the next-frame app plays a predictor headless like ``clplat.streaming.prediction demo``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clplat.errors import UserError
from clplat.stream import main
from clplat.streaming.apps import STREAM_APPS, StreamApp, StreamTrack, find_app
from clplat.streaming.apps.classify import ClassifierApp
from clplat.streaming.apps.next_frame import NextFrameApp
from clplat.streaming.models.convs5_predictor import FramePredictor
from clplat.streaming.prediction.run import FORMAT as PREDICTOR_FORMAT
from clplat.streaming.prediction.run import load_predictor, save_predictor

TINY_PREDICTOR = dict(widths=(4, 8), latent=8, layers=1, state_channels=4)


@pytest.fixture
def tiny_predictor(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = FramePredictor(**TINY_PREDICTOR).eval()
    meta = {"format": PREDICTOR_FORMAT, "name": "tiny", "parameters": 0,
            "model": {"core": "convs5", **TINY_PREDICTOR, "kernel_size": 3, "dropout": 0.0},
            "data": {"canvas": 16, "digit_size": 8, "digits": 2, "speed": [2.0, 4.0]}}
    return save_predictor(tmp_path / "tiny_predictor.safetensors", model, meta)


def write_video(path: Path, frames: int, size: tuple[int, int] = (80, 60), seed: int = 0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, size)
    rng = np.random.default_rng(seed)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_model_names_and_weight_files_pick_their_app(tiny_predictor: Path, tmp_path: Path) -> None:
    assert find_app("stream_x3d_moving_digits")[0] is ClassifierApp
    assert find_app("stream_lrcn_moving_digits")[0] is ClassifierApp
    assert find_app("convs5_moving_digits")[0] is NextFrameApp
    app, ref = find_app(str(tiny_predictor))  # by the format in the safetensors header
    assert app is NextFrameApp and ref.path == tiny_predictor and ref.meta["format"] == PREDICTOR_FORMAT
    # a file without a clplat header: the JSON beside it says what it is
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(1)}, str(bare))
    bare.with_suffix(".json").write_text(json.dumps({"format": PREDICTOR_FORMAT}))
    assert find_app(str(bare))[0] is NextFrameApp
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign), metadata={"clplat": json.dumps({"format": "other/9"})})
    with pytest.raises(UserError, match=r"format 'other/9', which no stream app plays \(known: .*clplat"):
        find_app(str(foreign))


def test_an_app_is_one_registered_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A kind of model the CLI has never heard of: registering its app class is all it takes for
    ``--model`` (its file's format), its own flag, its source and its summary to work."""

    class Doubler(torch.nn.Module):
        delay = 0

        def step(self, x: torch.Tensor, state: object) -> tuple[torch.Tensor, int]:
            return 2 * x, (0 if state is None else state) + 1

    class Track(StreamTrack):
        def __init__(self) -> None:
            self.outputs: list[float] = []

        def input(self, frame) -> torch.Tensor:
            return torch.tensor([[float(frame.image[0, 0, 0])]])

        def update(self, frame, y, step_s) -> None:
            self.outputs.append(float(y))

        def draw(self, frame) -> np.ndarray:
            return np.zeros((8, 8, 3), np.uint8)

        def summary(self) -> dict:
            return {"doubled": self.outputs}

    class DoublerApp(StreamApp):
        formats = ("test.doubler/1",)

        @classmethod
        def add_arguments(cls, parser) -> None:
            parser.add_argument("--offset", type=int, default=0)

        def __init__(self, ref, args) -> None:
            super().__init__(ref, args)
            self.make_step(Doubler())

        def open_source(self, spec, seed):
            from clplat.streaming.sources import ImageFolderSource

            return ImageFolderSource(spec)

        def track(self, source) -> StreamTrack:
            return Track()

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((4, 4, 3), 10 * (i + 1), np.uint8))
    weights = tmp_path / "d.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights), metadata={"clplat": json.dumps({"format": "test.doubler/1"})})
    STREAM_APPS.register("test_doubler")(DoublerApp)
    try:
        stats = tmp_path / "s.json"
        rc = main(["--model", str(weights), "--source", str(folder), "--offset", "3", "--stats", str(stats),
                   "--out", str(tmp_path / "d.mp4")])
        assert rc == 0, capsys.readouterr().err
        assert json.loads(stats.read_text())["doubled"] == [20.0, 40.0, 60.0]
    finally:
        STREAM_APPS._items.pop("test_doubler")
    assert main(["--model", str(weights)]) == 2  # unregistered again: nobody plays its format
    assert "test.doubler/1" in _one_line(capsys)


def test_predictor_app_equals_the_prediction_demo(tiny_predictor: Path, tmp_path: Path) -> None:
    """Context then imagination through the generic runner: the same per-frame errors as the
    separate demo loop (``play_prediction``) on the same held-out video."""
    from clplat.streaming.prediction.demo import play_prediction

    ref = play_prediction(str(tiny_predictor), str(tmp_path / "demo.mp4"), context=3, horizon=4, seed=5)
    out = tmp_path / "predict.mp4"
    assert main(["--model", str(tiny_predictor), "--source", "synthetic", "--out", str(out),
                 "--context", "3", "--horizon", "4", "--seed", "5"]) == 0
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["frames"] == 7 and stats["step_latency"]["frames"] == 7 and stats["core"] == "convs5"
    assert stats["mse_per_frame"] == ref["mse_per_frame"]
    assert stats["mse_imagined_mean"] == ref["mse_imagined_mean"]
    n = 0
    cap = cv2.VideoCapture(str(out))
    while cap.read()[0]:
        n += 1
    assert n == 7


def test_predictor_app_on_a_user_video_runs_in_episodes(tiny_predictor: Path, tmp_path: Path) -> None:
    """A 10-frame colour video: episodes of 3 + 2 frames, each starting from a fresh state; every
    frame scored but the first of each episode."""
    video = write_video(tmp_path / "in.mp4", 10)
    out = tmp_path / "p.mp4"
    assert main(["--model", str(tiny_predictor), "--source", str(video), "--out", str(out),
                 "--context", "3", "--horizon", "2"]) == 0
    s = json.loads(out.with_suffix(".json").read_text())
    assert s["frames"] == 10 and s["episodes"] == 2 and len(s["mse_per_frame"]) == 4
    # by hand: one episode stepped alone gives the same errors as each of the two
    model = load_predictor(tiny_predictor)[0]
    cap, frames = cv2.VideoCapture(str(video)), []
    while (got := cap.read())[0]:
        grey = cv2.cvtColor(cv2.resize(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB)[:, 10:70], (16, 16),
                                       interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        frames.append(torch.from_numpy(grey).float()[None, None] / 255)
    errors = np.zeros(5)
    with torch.no_grad():
        for start in (0, 5):
            state, pred = None, None
            for k in range(5):
                truth = frames[start + k]
                if pred is not None:
                    errors[k] += float(((pred - truth) ** 2).mean())
                logits, state = model.step(truth if k < 3 else pred, state)
                pred = torch.sigmoid(logits)
    assert s["mse_per_frame"] == pytest.approx(list(errors[1:] / 2), abs=1e-5)


def test_shipped_predictor_readme_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README line, headless: 8 context + 40 imagined frames; the imagined frames beat
    copying the last context frame (the shipped model's recorded evaluation says so too)."""
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "convs5_moving_digits", "--source", "synthetic", "--out", "predict.mp4"]) == 0
    s = json.loads((tmp_path / "predict.json").read_text())
    assert s["frames"] == 48 and len(s["mse_per_frame"]) == 47
    assert s["mse_imagined_mean"] < s["copy_last_mse_imagined_mean"]
    assert (tmp_path / "predict.mp4").stat().st_size > 0


@pytest.mark.parametrize("args,message", [
    (["--context", "0"], "--context and --horizon must be >= 1"),
    (["--cuda-graph"], "--cuda-graph needs --device cuda"),  # --compile works (test_predictor_compiled.py)
])
def test_predictor_app_user_errors(args: list[str], message: str, tiny_predictor: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", str(tiny_predictor), *args]) == 2
    assert message in _one_line(capsys)


def test_cuda_requests_without_cuda_are_one_line(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    for args, message in ((["--device", "cuda"], "CUDA is not available"),
                          (["--device", "cuda", "--cuda-graph"], "CUDA is not available"),
                          (["--cuda-graph"], "--cuda-graph needs --device cuda"),
                          (["--bf16"], "--bf16 needs --cuda-graph")):
        assert main(["--max-frames", "2", *args]) == 2
        assert message in _one_line(capsys)


def test_ssm_step_is_public_and_is_a_complex_multiply_add() -> None:
    """``clplat.kernels.ssm_step`` (the dispatcher ConvS5 steps with) against complex arithmetic."""
    from clplat.kernels import ssm_step

    g = torch.Generator().manual_seed(0)
    x, bu = torch.randn(2, 6, 3, 5, generator=g), torch.randn(2, 6, 3, 5, generator=g)
    a = torch.complex(torch.rand(3, generator=g), torch.randn(3, generator=g))
    got = ssm_step(x, bu, a.real.contiguous(), a.imag.contiguous())
    z = torch.complex(x[:, :3], x[:, 3:]) * a.view(1, 3, 1, 1) + torch.complex(bu[:, :3], bu[:, 3:])
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=1))
