"""``python -m clplat.stream train CONFIG [key=value ...]`` with a ``task: next_frame`` config (or
``python -m clplat.streaming.prediction train CONFIG ...``): train a next-frame
predictor (ConvS5 or ConvLSTM core) on bouncing digits, then score long-horizon imagination.

Training runs teacher-forced through the parallel form (the ConvS5 scan); evaluation observes
``eval.context`` held-out frames and imagines ``eval.horizon`` more one step at a time, well past
the training clip length. Weights go to a safetensors file whose header holds the model
arguments (no pickle), with a JSON beside it (config, metrics, parameters, command).
"""

from __future__ import annotations

import logging
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from clplat.config import load_yaml
from clplat.data.bouncing_digits import BouncingDigits
from clplat.errors import UserError
from clplat.streaming.model_file import read_model_file, save_model_file
from clplat.streaming.models.convs5_predictor import FramePredictor, count_parameters
from clplat.streaming.prediction.config import ModelSection, PredictConfig, load_predict_config
from clplat.streaming.prediction.metrics import evaluate_horizon
from clplat.streaming.prediction.module import NextFrameModule
from clplat.streaming.sinks import write_json

FORMAT = "clplat.frame_predictor/1"


def build_predictor(section: ModelSection) -> FramePredictor:
    return FramePredictor(in_channels=1, **section.model_dump())


def save_predictor(path: Path, model: FramePredictor, meta: dict[str, Any]) -> Path:
    """Weights (safetensors, ``meta`` in the header), written atomically, and ``meta`` beside them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model_file(path, model, meta)[0]


def load_predictor(path: str | Path) -> tuple[FramePredictor, dict[str, Any]]:
    """Rebuild a predictor saved by ``train`` (eval mode); any damage is one UserError line."""
    p = Path(path)
    tensors, meta = read_model_file(p, FORMAT, "python -m clplat.stream train")
    try:
        model = build_predictor(ModelSection.model_validate(meta.get("model")))
    except Exception as err:
        raise UserError(f"model '{p}': its header describes no valid predictor ({err})") from None
    result = model.load_state_dict(tensors, strict=False)
    bad = [k for k in tensors if k in model.state_dict() and tensors[k].shape != model.state_dict()[k].shape]
    if result.missing_keys or result.unexpected_keys or bad:
        raise UserError(f"model '{p}': weights do not fit the network its header describes "
                        f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval(), meta


def _videos(cfg: PredictConfig, split: str, n: int, frames: int, seed: int) -> torch.Tensor:
    ds = BouncingDigits(split, n, cfg.data.spec(frames), seed=seed)  # type: ignore[arg-type]
    return torch.stack([ds[i] for i in range(n)])


def run_training(cfg: PredictConfig, command: str = "") -> dict[str, Any]:
    """Train, evaluate, save; returns the saved metadata. Deterministic for one seed."""
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch pytree
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_predictor(cfg.model)
    train = TensorDataset(_videos(cfg, "train", cfg.data.train_videos, cfg.data.frames, cfg.seed))
    loader = DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed), drop_last=True)
    run_dir = Path(cfg.output.runs_dir) / cfg.name
    trainer = L.Trainer(max_epochs=cfg.train.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=cfg.train.progress,
                        enable_model_summary=False, deterministic=True, default_root_dir=str(run_dir),
                        log_every_n_steps=10)
    trainer.fit(NextFrameModule(model, cfg.train.lr, cfg.train.weight_decay), loader)
    train_seconds = time.perf_counter() - t0
    e = cfg.eval
    held_out = _videos(cfg, "test", e.videos, e.context + e.horizon, cfg.seed + 1)
    metrics = evaluate_horizon(model, held_out, e.context, e.horizon, e.batch_size)
    metrics["train_frames"] = cfg.data.frames
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["final_train_bce"] = round(float(trainer.callback_metrics.get("train_bce", float("nan"))), 5)
    meta = {"format": FORMAT, "name": cfg.name, "model": cfg.model.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"), "config": cfg.model_dump(mode="json"),
            "parameters": count_parameters(model), "metrics": metrics, "command": command,
            "torch": torch.__version__}
    weights = Path(cfg.output.weights) if cfg.output.weights else run_dir / "model.safetensors"
    save_predictor(weights, model, meta)
    write_json(run_dir / "results.json", meta)
    _report(cfg, meta, weights, time.perf_counter() - t0)
    return meta


def _report(cfg: PredictConfig, meta: dict[str, Any], weights: Path, seconds: float) -> None:
    m, pf = meta["metrics"], meta["metrics"]["per_frame"]
    beyond = max(cfg.data.frames - cfg.eval.context, 0)  # continuation frames past the training length
    print(f"saved {weights} ({weights.stat().st_size / 1e6:.2f} MB); {meta['parameters']} parameters; "
          f"{seconds:.0f} s total")
    for k in sorted({0, beyond, cfg.eval.horizon // 2, cfg.eval.horizon - 1}):
        if k < cfg.eval.horizon:
            print(f"frame {cfg.eval.context + k + 1:4d} (+{k + 1}): MSE {pf['model_mse'][k]:.4f} "
                  f"PSNR {pf['model_psnr'][k]:.2f} SSIM {pf['model_ssim'][k]:.3f} | copy-last MSE "
                  f"{pf['copy_last_mse'][k]:.4f} SSIM {pf['copy_last_ssim'][k]:.3f}")
    print(f"mean over {cfg.eval.horizon} imagined frames: MSE {m['model_mse_mean']:.4f} "
          f"PSNR {m['model_psnr_mean']:.2f} SSIM {m['model_ssim_mean']:.3f} "
          f"(copy-last: MSE {m['copy_last_mse_mean']:.4f} SSIM {m['copy_last_ssim_mean']:.3f})")


def is_prediction_config(path: str) -> bool:
    """Whether a YAML is a next-frame prediction config (``task: next_frame``), so that
    ``python -m clplat.stream train`` can hand it over; unreadable files answer False (the
    caller's own loader then reports them)."""
    try:
        raw = load_yaml(path)
    except UserError:
        return False
    return raw.get("task") == "next_frame"


def main(argv: list[str]) -> int:
    """``CONFIG [key=value ...]`` (argv without the ``train`` word); errors raise UserError."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m clplat.stream train CONFIG.yaml [key.sub=value ...]  (task: next_frame)")
        return 0 if argv else 2
    cfg = load_predict_config(argv[0], argv[1:])
    command = "python -m clplat.stream train " + " ".join(shlex.quote(a) for a in argv)
    run_training(cfg, command=command)
    return 0
