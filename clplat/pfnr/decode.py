"""Rebuild a run's video model from ``config.yaml`` + ``checkpoints/last.pt`` and write decodes.

Formats by the ``--out`` suffix: ``.mp4``/``.avi``/``.mkv``/``.mov`` (PyAV, 8-bit, lossy codec),
``.npy`` (the exact float32 decode ``(T, 3, H, W)``), or a folder name without suffix (PNG frames,
8-bit). Every file is written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from clplat.backbones import build_backbone
from clplat.config import build_config
from clplat.engine.checkpoint import CHECKPOINT, load_checkpoint
from clplat.errors import UserError
from clplat.io import atomic_path
from clplat.strategies import STRATEGIES

VIDEO_FORMATS = {".mp4": "mp4", ".avi": "avi", ".mkv": "matroska", ".mov": "mov"}


def load_run_strategy(run_dir: str | Path):
    """The trained strategy of ``run_dir`` (a fresh module with the checkpoint's state)."""
    rd = Path(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{rd} is not a run directory (no config.yaml)")
    cfg = build_config(yaml.safe_load(cfg_path.read_text()))
    if not hasattr(STRATEGIES.get(cfg.strategy), "session_experiment"):
        raise UserError(f"{rd} is a '{cfg.strategy}' run, not a video representation run")
    if cfg.threads:  # CPU kernels sum in a thread-count-dependent order: decode as the run did
        torch.set_num_threads(cfg.threads)
    shape = (3, *cfg.data.size)
    state = load_checkpoint(rd / CHECKPOINT)
    backbone = build_backbone(cfg.backbone, shape)
    strategy = STRATEGIES.get(cfg.strategy)(cfg.strategy_config, backbone, 0, shape)
    try:
        strategy.load_state_dict(state["strategy"])
    except (RuntimeError, KeyError) as err:
        raise UserError(f"checkpoint {rd / CHECKPOINT} does not match {cfg_path} ({type(err).__name__})") from None
    strategy.eval()
    return strategy


def decode_session(run_dir: str | Path, session: int) -> Tensor:
    strategy = load_run_strategy(run_dir)
    done = int(strategy.sessions_done)
    if not 0 <= session < done:
        raise UserError(f"session {session} is not decodable from {run_dir}: sessions 0..{done - 1} are trained")
    return strategy.decode(session)


def to_uint8(video: Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [0, 1] -> ``uint8 (T, H, W, 3)``."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_video(frames: np.ndarray, out: Path, fps: float = 25.0) -> None:
    import av

    fmt = VIDEO_FORMATS[out.suffix.lower()]
    t, h, w, _ = frames.shape
    codec = "libx264" if fmt != "avi" and "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(out) as tmp:
        with av.open(str(tmp), mode="w", format=fmt) as container:
            stream = container.add_stream(codec, rate=round(fps))
            stream.width, stream.height = w + w % 2, h + h % 2  # yuv420p needs even sizes
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "12"}
            for f in frames:
                if w % 2 or h % 2:
                    f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def write_decode(video: Tensor, out: str | Path, fps: float = 25.0) -> Path:
    """Write a decode in the format ``out``'s suffix names (see the module doc)."""
    import cv2

    path = Path(out)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, video.float().contiguous().numpy())
    elif suffix in VIDEO_FORMATS:
        write_video(to_uint8(video), path, fps)
    elif suffix == "":
        path.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(to_uint8(video)):
            with atomic_path(path / f"{i:05d}.png") as tmp:
                ok, buf = cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
                tmp.write_bytes(buf.tobytes())
    else:
        raise UserError(f"--out {out}: unknown format '{suffix}' (use .mp4, .avi, .mkv, .mov, .npy or a folder)")
    return path
