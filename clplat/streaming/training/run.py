"""``python -m clplat.stream train CONFIG [key=value ...]``: train an offline clip model (X3DS or
LRCN) on moving digits, then score its streaming form.

The model is trained offline on clips with a per-frame loss on ``forward_frames`` (one logit
vector per frame position, causal), which is exactly what its streaming form emits one frame at
a time. To make training look like a long stream, clips can be windows of a segmented stream
(``data.segment_frames``: cuts to a new digit anywhere in the clip) and the first
``train.warmup`` positions of a clip, whose receptive field still reaches the zero padding
before the clip (a stream only has that at its very start), get ``train.warmup_weight`` in the
loss. Long clips give few distinct digits per step, so ``train.pretrain_epochs`` first trains on
many short clips (``train.pretrain_frames``, cut by ``data.switch_prob``) to learn the digits.

After training, the held-out evaluation converts the model with ``clplat.streaming.convert``
and runs it frame by frame over a held-out synthetic stream (unseen digit images, cuts between
videos), scoring every emitted prediction against the label of the frame it belongs to.
Weights go to a safetensors file with the model config in its header, and a JSON beside it holds
the config, metrics and the command that produced it.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clplat.data.moving_digits import MovingDigits, MovingDigitsSpec
from clplat.streaming.sinks import write_json
from clplat.streaming.sources import FrameSpec, SyntheticSource
from clplat.streaming.training.config import TrainConfig, X3DSection, load_train_config
from clplat.streaming.training.evaluate import check_stream_equivalence, stream_accuracy
from clplat.streaming.training.factory import build_model, model_kwargs
from clplat.streaming.training.module import FrameClassifier
from clplat.streaming.training.weights import FORMAT, init_from, save_trained


def _materialise(ds: MovingDigits) -> TensorDataset:
    """Render every clip once (a few seconds), so epochs cost only the model's compute."""
    videos, labels = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(videos), torch.stack(labels))


def _trainer(cfg: TrainConfig, epochs: int, run_dir: Path) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=cfg.train.progress,
                     enable_model_summary=False, deterministic=True, num_sanity_val_steps=0,
                     default_root_dir=str(run_dir), log_every_n_steps=10)


def _fit(cfg: TrainConfig, model: nn.Module, spec: MovingDigitsSpec, frame_spec: FrameSpec,
         run_dir: Path) -> tuple[dict[str, Any], TensorDataset]:
    """Optional short-clip pretraining, then the main fit; returns the ``val_*`` metrics and the
    validation clips."""
    segments = cfg.data.segment_frames
    train = _materialise(MovingDigits("train", cfg.data.train_videos, spec, seed=cfg.seed,
                                      switch_prob=cfg.data.switch_prob, segment_frames=segments))
    val = _materialise(MovingDigits("test", cfg.data.val_videos, spec, seed=cfg.seed, segment_frames=segments))
    gen = torch.Generator().manual_seed(cfg.seed)
    t = cfg.train
    if t.pretrain_epochs:
        short = dataclasses.replace(spec, frames=t.pretrain_frames)
        pre = _materialise(MovingDigits("train", cfg.data.train_videos, short, seed=cfg.seed + 1,
                                        switch_prob=cfg.data.switch_prob))
        pre_module = FrameClassifier(model, frame_spec, t.lr, t.weight_decay)
        pre_loader = DataLoader(pre, batch_size=t.pretrain_batch_size, shuffle=True, generator=gen)
        with warnings.catch_warnings():  # no validation during pretraining, on purpose
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
            _trainer(cfg, t.pretrain_epochs, run_dir).fit(pre_module, pre_loader)
        del pre, pre_loader
    module = FrameClassifier(model, frame_spec, t.lr, t.weight_decay, t.warmup, t.warmup_weight)
    trainer = _trainer(cfg, t.epochs, run_dir)
    trainer.fit(module, DataLoader(train, batch_size=t.batch_size, shuffle=True, generator=gen),
                DataLoader(val, batch_size=max(t.batch_size, 64)))
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    return metrics, val


def _stream_metrics(cfg: TrainConfig, model: nn.Module, spec: MovingDigitsSpec, frame_spec: FrameSpec,
                    val: TensorDataset) -> dict[str, Any]:
    """Equivalence of the converted model on two held-out clips, and its held-out stream accuracy."""
    from clplat.streaming import convert

    model.eval()
    stream = convert(model).eval()
    clip = frame_spec.clip_tensor(val.tensors[0][:2])
    settle = cfg.model.head_window if isinstance(cfg.model, X3DSection) and cfg.model.head_window else 8
    source = SyntheticSource(spec, seed=cfg.eval.seed, split="test", segment_frames=cfg.eval.segment_frames)
    return {"stream_max_abs_diff": check_stream_equivalence(model, stream, clip),
            "stream": stream_accuracy(stream, frame_spec, source, cfg.eval.stream_frames, settle=settle)}


def run_training(cfg: TrainConfig, command: str | None = None) -> dict[str, Any]:
    """Train, save the weights and the JSON, and return the saved header; deterministic for one seed."""
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep the console to our lines
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = cfg.data.spec()
    frame_spec = FrameSpec(size=(spec.canvas, spec.canvas))
    kwargs = model_kwargs(cfg.model)
    model = build_model(cfg.model.arch, kwargs, spec.num_classes)
    if cfg.train.init_weights:
        init_from(model, cfg.model.arch, cfg.train.init_weights)
    run_dir = Path(cfg.output.runs_dir) / cfg.name
    metrics, val = _fit(cfg, model, spec, frame_spec, run_dir)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
    metrics.update(_stream_metrics(cfg, model, spec, frame_spec, val))
    meta = {
        "format": FORMAT, "name": cfg.name, "arch": cfg.model.arch, "model": kwargs,
        "num_classes": spec.num_classes, "class_names": spec.class_names, "input": frame_spec.to_dict(),
        "data": cfg.data.model_dump(mode="json"), "config": cfg.model_dump(mode="json"),
        "metrics": metrics, "parameters": sum(p.numel() for p in model.parameters()),
        "command": command or "", "torch": torch.__version__,
    }
    weights = Path(cfg.output.weights) if cfg.output.weights else run_dir / "model.safetensors"
    w, j = save_trained(weights, model, meta)
    write_json(run_dir / "results.json", meta)
    print(f"saved {w} ({w.stat().st_size / 1e6:.2f} MB) and {j}")
    _report(metrics, time.perf_counter() - t0)
    return meta


def _report(metrics: dict[str, Any], seconds: float) -> None:
    s = metrics["stream"]
    val_acc = metrics.get("val_frame_acc", float("nan"))
    val_ctx = metrics.get("val_frame_acc_ctx", float("nan"))
    print(f"held-out: clip per-frame acc {val_acc:.4f} ({val_ctx:.4f} past warm-up); "
          f"streaming per-frame acc {s['frame_acc']:.4f} over {s['scored']} frames (settled {s['settled_acc']:.4f}); "
          f"stream vs offline max |diff| {metrics['stream_max_abs_diff']:.2e}; {seconds:.0f} s total")


def main(argv: list[str]) -> int:
    """``train CONFIG [key=value ...]`` (argv without the ``train`` word); errors raise UserError."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m clplat.stream train CONFIG.yaml [key.sub=value ...]")
        return 0 if argv else 2
    from clplat.streaming.prediction.run import is_prediction_config
    from clplat.streaming.prediction.run import main as predict_main

    if is_prediction_config(argv[0]):  # task: next_frame (ConvS5 / ConvLSTM frame prediction)
        return predict_main(argv)
    cfg = load_train_config(argv[0], argv[1:])
    command = "python -m clplat.stream train " + " ".join(shlex.quote(a) for a in argv)
    run_training(cfg, command=command)
    return 0
