"""PFNR: masks (top-c %, straight-through, bit-packing), the FSO layer against a direct DFT, the
loss/metrics through torchmetrics against hand-computed values, and whole runs: frozen weights,
bit-identical re-decoding, the decode command and resume mid-session."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clplat.backbones.nerv import SpectralUp
from clplat.config import load_config
from clplat.pfnr.quality import fusion_loss, msssim_betas, msssim_video, psnr_frames
from clplat.strategies.subnet import checksum, kept_count, pack_bits, topc_mask, unpack_bits

REPO = Path(__file__).resolve().parents[1]


# --- masks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0.5, 10.0, 30.0, 50.0, 100.0])
@pytest.mark.parametrize("use_abs", [True, False])
def test_topc_keeps_exactly_the_top_c_percent(c: float, use_abs: bool) -> None:
    s = torch.randn(37, 11, generator=torch.Generator().manual_seed(0))
    m = topc_mask(s, c, use_abs)
    k = kept_count(s.numel(), c)
    assert int(m.sum()) == k == max(1, round(s.numel() * c / 100))
    rank = (s.abs() if use_abs else s).flatten()
    kept, dropped = rank[m.flatten() == 1], rank[m.flatten() == 0]
    assert dropped.numel() == 0 or kept.min() > dropped.max()  # the largest scores, no others


def test_topc_gradient_is_straight_through() -> None:
    s = torch.randn(5, 7, requires_grad=True)
    g = torch.randn(5, 7)
    (topc_mask(s, 30.0) * g).sum().backward()
    assert torch.equal(s.grad, g)  # dL/ds := dL/dmask, also where the mask is 0


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4097])
def test_bit_packing_round_trips_and_is_8x_smaller(n: int) -> None:
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
    assert torch.equal(unpack_bits(packed, (n,)), mask)
    shaped = mask[: (n // 8) * 8]
    if shaped.numel():
        assert shaped.numel() * shaped.element_size() == 8 * pack_bits(shaped).numel()
    ref = np.packbits(mask.numpy())  # numpy's big-endian bit order is ours
    assert np.array_equal(packed.numpy(), ref)


def test_checksum_sees_a_one_ulp_change() -> None:
    w = torch.randn(300)
    w2 = w.clone()
    w2[123] = torch.nextafter(w2[123], torch.tensor(10.0))
    assert checksum(w) == checksum(w.clone()) != checksum(w2)


# --- FSO against a direct DFT -------------------------------------------------------------------------
def _direct_fso(x: np.ndarray, w_re: np.ndarray, w_im: np.ndarray, stride: int, modes: tuple[int, int],
                placement: str) -> np.ndarray:
    """The FSO written with explicit DFT sums (no FFT): spectrum, per-frequency mixing, synthesis."""
    b, cin, h, w = x.shape
    m1, m2 = modes
    hh, ww = h * stride, w * stride
    n1, n2 = np.arange(h), np.arange(w)
    rows = list(range(m1)) + list(range(h - m1, h))  # input row indices kept
    cols = list(range(m2))
    weight = w_re + 1j * w_im  # (2, cin, cout, m1, m2)
    y = np.zeros((b, weight.shape[2], hh, ww))
    o1, o2 = np.arange(hh), np.arange(ww)
    for r_i, k1 in enumerate(rows):
        corner, r = (0, r_i) if r_i < m1 else (1, r_i - m1)
        for k2 in cols:
            basis = np.exp(-2j * np.pi * (np.outer(n1, np.full(w, k1)) / h + np.outer(np.ones(h), n2 * k2) / w))
            xhat = (x * basis).sum(axis=(2, 3)) / (h * w)  # (b, cin)
            yhat = np.einsum("bi,io->bo", xhat, weight[corner, :, :, r, k2])
            if corner == 0:
                f1 = k1
            else:  # signed frequency k1 - h, or (official) the input row index taken as a positive frequency
                f1 = k1 - h if placement == "centred" else k1
            synth = np.exp(2j * np.pi * (np.outer(o1, np.full(ww, f1)) / hh + np.outer(np.ones(hh), o2 * k2) / ww))
            factor = 1.0 if k2 == 0 else 2.0  # the half spectrum stands for +k2 and -k2
            y += factor * np.real(yhat[:, :, None, None] * synth[None, None])
    return y


@pytest.mark.parametrize("placement", ["centred", "official"])
def test_fso_equals_a_direct_dft_computation(placement: str) -> None:
    torch.manual_seed(0)
    layer = SpectralUp(2, 3, stride=2, in_hw=(6, 8), modes=(2, 3), placement=placement).double()
    x = torch.randn(2, 2, 6, 8, dtype=torch.double)
    got = layer(x).detach().numpy()
    ref = _direct_fso(x.numpy(), layer.w_re.detach().numpy(), layer.w_im.detach().numpy(), 2, (2, 3), placement)
    assert got.shape == (2, 3, 12, 16)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_centred_placement_is_bandlimited_interpolation_and_official_is_not() -> None:
    """Identity mixing on a low-frequency wave: centred upsampling reproduces the same wave on the
    finer grid; the released code's placement turns its negative row frequency into a high one."""
    h = w = 8
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    fine_y, fine_x = np.meshgrid(np.arange(2 * h) / 2, np.arange(2 * w) / 2, indexing="ij")
    wave = lambda a, b: np.cos(2 * np.pi * (-a / h + 2 * b / w) + 0.3)  # noqa: E731  (row frequency -1)
    x = torch.tensor(wave(yy, xx), dtype=torch.double)[None, None]
    results = {}
    for placement in ("centred", "official"):
        layer = SpectralUp(1, 1, 2, (h, w), modes=(h // 2, w // 2), placement=placement).double()
        with torch.no_grad():
            layer.w_re.fill_(1.0)
            layer.w_im.zero_()
        results[placement] = layer(x)[0, 0].detach().numpy()
    np.testing.assert_allclose(results["centred"], wave(fine_y, fine_x), atol=1e-10)
    assert np.abs(results["official"] - wave(fine_y, fine_x)).max() > 0.5


# --- loss and metrics through torchmetrics ----------------------------------------------------------
def test_psnr_ssim_and_loss_match_hand_computed_values() -> None:
    target = torch.full((2, 3, 32, 32), 0.5)
    pred = target + 0.1
    assert torch.allclose(psnr_frames(pred, target), torch.tensor([20.0, 20.0]), atol=1e-4)  # MSE 0.01
    # constant images: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01)^2 (the contrast term is 1)
    c1 = 0.01**2
    ssim = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert float(fusion_loss(pred, target)) == pytest.approx(0.7 * 0.1 + 0.3 * (1 - ssim), abs=1e-5)
    img = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert float(fusion_loss(img, img)) == pytest.approx(0.0, abs=1e-6)
    assert msssim_video(img, img) == pytest.approx(1.0, abs=1e-5)
    assert len(msssim_betas(64, 64)) == 3 and len(msssim_betas(720, 1280)) == 5
    assert sum(msssim_betas(64, 64)) == pytest.approx(1.0)


# --- whole runs ---------------------------------------------------------------------------------------
def tiny_overrides(tmp_path: Path, **extra: str) -> list[str]:
    """3 built-in videos of 8 frames at 16x16, NeRV xs with FSO: a couple of seconds per run."""
    over = {"data.size": "[16,16]", "data.builtin_frames": "8", "sessions.base.epochs": "4",
            "sessions.incremental.epochs": "4", "sessions.base.batch_size": "4",
            "sessions.incremental.batch_size": "4", "logging.progress": "false",
            "logging.runs_dir": str(tmp_path / "runs"), "backbone.kwargs": "{size: xs, fso_block: 1}",
            "pfnr.c": "40", "name": "tiny"}
    over.update(extra)
    return [f"{k}={v}" for k, v in over.items()]


def run_tiny(tmp_path: Path, **extra: str) -> tuple[dict, Path]:
    from clplat.engine.experiment import run_experiment

    cfg = load_config(REPO / "experiments" / "pfnr_videos.yaml", tiny_overrides(tmp_path, **extra))
    res = run_experiment(cfg)
    return res, Path(res["run_dir"])


def test_frozen_weights_never_change_and_redecoding_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    from clplat.pfnr.experiment import VideoSessionExperiment

    sums: list[dict[str, int]] = []  # after each session: checksums of the weights its mask uses
    end = VideoSessionExperiment._end

    def spy(self, session, phase):
        end(self, session, phase)
        params = dict(self.strategy.body.named_parameters())
        sums.append({n: checksum(params[n][self.strategy.stored_mask(n, session)]) for n in self.strategy.masked})
        self.final_check = lambda: [{n: checksum(params[n][self.strategy.stored_mask(n, s)])
                                     for n in self.strategy.masked} for s in range(len(sums))]
        monkeypatch.setattr(VideoSessionExperiment, "_last", self, raising=False)

    monkeypatch.setattr(VideoSessionExperiment, "_end", spy)
    res, run_dir = run_tiny(tmp_path)
    assert VideoSessionExperiment._last.final_check() == sums  # weights of sessions 0, 1 untouched later
    assert res["redecode_identical"] == [True, True, True] and res["lossless"] and res["bwt"] == 0.0
    for j in range(3):  # the matrix columns are constant below the diagonal: measured, equal
        assert len({res["psnr_matrix"][i][j] for i in range(j, 3)}) == 1
    assert res["psnr_final"] == [res["psnr_matrix"][j][j] for j in range(3)]
    assert 0 < res["mask_bytes_packed"] * 8 <= res["mask_bytes_bool"] + 8 * 64
    for f in ("psnr_matrix.png", "psnr_sessions.png", "sessions.csv", "results.json"):
        assert (run_dir / f).is_file()
    assert len(list((run_dir / "side_by_side").glob("*.png"))) == 3


def test_finetuned_nerv_forgets_and_the_check_says_so(tmp_path: Path) -> None:
    res, _ = run_tiny(tmp_path, **{"pfnr.masks": "false", "backbone.kwargs": "{size: xs}"})
    assert res["redecode_identical"] == [False, False, True] and not res["lossless"]
    assert res["bwt"] != 0.0 and res["psnr_final"][0] == pytest.approx(res["psnr_matrix"][2][0])


def test_decode_command_equals_the_in_run_decode(tmp_path: Path) -> None:
    import av

    from clplat.pfnr.__main__ import main
    from clplat.pfnr.experiment import digest

    res, run_dir = run_tiny(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a new process's default; the command must decode with the run's threads=1
    try:
        for k in (0, 2):
            assert main(["decode", str(run_dir), "--session", str(k), "--out", str(tmp_path / f"v{k}.npy")]) == 0
    finally:
        torch.set_num_threads(threads)
    for k in (0, 2):
        assert digest(torch.from_numpy(np.load(tmp_path / f"v{k}.npy"))) == res["decode_sha256"][k]
    assert main(["decode", str(run_dir), "--session", "1", "--out", str(tmp_path / "v.mp4")]) == 0
    with av.open(str(tmp_path / "v.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (16, 16, 3)
    assert main(["decode", str(run_dir), "--session", "3", "--out", str(tmp_path / "x.npy")]) == 2
    assert not (tmp_path / "x.npy").exists()


def test_resume_mid_session_equals_uninterrupted(tmp_path: Path, monkeypatch) -> None:
    from clplat.engine.experiment import resume_experiment
    from clplat.pfnr.experiment import VideoSessionExperiment

    ref, ref_dir = run_tiny(tmp_path, name="ref")
    progress = VideoSessionExperiment.progress

    def stop_mid_session_1(self, n=0):  # stop 1 batch after session 1's second epoch
        progress(self, n)
        if self.cursor.session == 1 and self.cursor.epoch == 2 and self.cursor.started:
            self.stop_signal = 15

    monkeypatch.setattr(VideoSessionExperiment, "progress", stop_mid_session_1)
    cut, run_dir = run_tiny(tmp_path, name="cut")
    assert cut.get("interrupted") and not (run_dir / "results.json").exists()
    monkeypatch.setattr(VideoSessionExperiment, "progress", progress)
    res = resume_experiment(run_dir)
    assert res["process"]["resumed"] and (res["process"]["start_session"], res["process"]["start_epoch"]) == (1, 2)
    for k in ("psnr_matrix", "msssim_matrix", "decode_sha256", "model_bits", "updates"):
        assert res[k] == ref[k], k
    mine = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["strategy"]
    theirs = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=True)["strategy"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


# --- bad input --------------------------------------------------------------------------------------
def _write_mp4(path: Path, frames: int = 6, size: tuple[int, int] = (32, 48)) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_real_video_files_and_frame_folders_are_read_pooled_and_strided(tmp_path: Path) -> None:
    import cv2

    from clplat.data import build_dataset, data_config

    _write_mp4(tmp_path / "a.mp4", frames=7)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((32, 32, 3), 40 * i, dtype=np.uint8))
    data = build_dataset(data_config(dataset="videos", videos=[str(tmp_path / "a.mp4"), str(folder)],
                                     size=[16, 16], stride=2, max_frames=3), 0)
    assert data.offsets == [0, 3, 6] and data.names == ["a", "frames"] and data.input_shape == (3, 16, 16)
    assert torch.allclose(data.video(1)[1], torch.full((3, 16, 16), 80 / 255))  # folder frame 2 (stride 2)


BAD = [
    (["data.videos=[{missing}]"], "not found"),
    (["data.videos=[{corrupt}]"], "cannot read video"),
    (["data.videos=[{empty}]"], "has no frames"),
    (["data.videos=[{small}]"], "smaller than data.size"),
    (["data.size=[24,24]"], "cannot be reached by the NeRV strides"),
    (["pfnr.c=0"], "pfnr.c"),
    (["pfnr.c=120"], "pfnr.c"),
    (["pfnr.t_max=2"], "t_max"),
]


@pytest.mark.parametrize(("over", "says"), BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys, over, says) -> None:
    from clplat.run import main

    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 50)
    (tmp_path / "empty").mkdir()
    _write_mp4(tmp_path / "small.mp4", frames=2, size=(8, 8))
    paths = {"missing": tmp_path / "nope.mp4", "corrupt": tmp_path / "corrupt.mp4", "empty": tmp_path / "empty",
             "small": tmp_path / "small.mp4"}
    args = [o.format(**paths) for o in over]
    code = main([str(REPO / "experiments" / "pfnr_videos.yaml"), *tiny_overrides(tmp_path), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
