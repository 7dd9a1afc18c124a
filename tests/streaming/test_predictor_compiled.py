"""The next-frame app's step has no host read (frames are validated by its track), so
``--compile`` and ``--cuda-graph`` work for predictors: compiled and graph steps give the eager
outputs; non-finite values are still one clear error line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from clplat.errors import UserError
from clplat.stream import main, parse_args
from clplat.streaming.models.convs5_predictor import FramePredictor
from clplat.streaming.sources import Frame
from tests.streaming.test_stream_apps import TINY_PREDICTOR, tiny_predictor, write_video  # noqa: F401
from tests.streaming.test_stream_multi import _assert_same, _EmulatedGraphStep, _recorded_run, _recorded_run_app

ARGS = ["--context", "3", "--horizon", "3"]


def _no_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every tensor -> Python value conversion (a device sync on a GPU) raise."""

    def refuse(self, *args, **kwargs):
        raise RuntimeError("host read of a tensor")

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@torch.no_grad()
def test_the_apps_predictor_step_reads_nothing_on_the_host(tiny_predictor: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    app_cls, ref, args = parse_args(["--model", str(tiny_predictor), *ARGS])
    stream = app_cls(ref, args).stream
    checking = FramePredictor(**TINY_PREDICTOR).eval()  # the default, for training and offline use
    frames = torch.rand(3, 1, 1, 16, 16)
    _no_host_reads(monkeypatch)
    state = None
    for f in frames:
        y, state = stream.step(f, state)
    assert y.shape == (1, 1, 16, 16)
    with pytest.raises(RuntimeError, match="host read"):
        checking.step(frames[0])


def test_graph_step_for_the_predictor_through_the_runner(tiny_predictor: Path, tmp_path: Path) -> None:  # noqa: F811
    """The CUDA-graph step emulated on the CPU (static buffers, one captured phase): two streams,
    the second joining at frame 2, several episodes: the eager outputs, one graph."""
    videos = [write_video(tmp_path / f"v{i}.mp4", n, size=(32, 32), seed=i) for i, n in enumerate((14, 9))]
    argv = ["--model", str(tiny_predictor), "--source", ",".join(map(str, videos)), "--join-at", "0,2",
            "--out", str(tmp_path / "g.mp4"), *ARGS]
    eager, _ = _recorded_run(argv)
    app_cls, ref, args = parse_args(argv)
    app = app_cls(ref, args)
    app.step_fn = _EmulatedGraphStep(app.stream)
    graphed, summary = _recorded_run_app(app, args)
    for b, a in zip(graphed, eager):
        _assert_same(b, a)
    assert summary["cuda_graph"]["graphs"] == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor's CPU backend needs a C++ compiler")
def test_compiled_predictor_step_equals_eager(tiny_predictor: Path, tmp_path: Path) -> None:  # noqa: F811
    """``--compile`` on a predictor (Inductor, CPU): one phase compiled, every output within 1e-4
    of the eager step's over three episodes (context frames and fed-back predictions)."""
    video = write_video(tmp_path / "v.mp4", 18, size=(32, 32))
    argv = ["--model", str(tiny_predictor), "--source", str(video), "--out", str(tmp_path / "o.mp4"), *ARGS]
    eager, _ = _recorded_run(argv)
    compiled, summary = _recorded_run([*argv, "--compile"])
    assert summary["compiled"]["phases"] == 1 and len(compiled[0]) == 18
    for c, e in zip(compiled[0], eager[0]):
        torch.testing.assert_close(c, e, atol=1e-4, rtol=0)


def test_non_finite_values_are_one_line(tiny_predictor: Path, tmp_path: Path,  # noqa: F811
                                        capsys: pytest.CaptureFixture) -> None:
    """A float frame with nan from a source is refused by the track; a model whose predictions
    are nan (they would be fed back) stops the run with one line, exit 2."""
    app_cls, ref, args = parse_args(["--model", str(tiny_predictor), *ARGS])
    track = app_cls(ref, args).track(None)
    image = np.zeros((16, 16, 3), dtype=np.float32)
    image[3, 4, 1] = np.nan
    with pytest.raises(UserError, match="frame 7 of the source has non-finite values"):
        track.input(Frame(image=image, index=7))
    tensors = load_file(str(tiny_predictor))
    name = next(k for k in tensors if k.startswith("decoder") and k.endswith("bias"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    from safetensors import safe_open

    with safe_open(str(tiny_predictor), framework="pt") as f:
        meta = f.metadata()
    broken = tmp_path / "nan.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    video = write_video(tmp_path / "v.mp4", 4, size=(32, 32))
    assert main(["--model", str(broken), "--source", str(video), "--out", str(tmp_path / "n.mp4"), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the model predicted non-finite values (nan/inf) at frame 1") and "\n" not in err
