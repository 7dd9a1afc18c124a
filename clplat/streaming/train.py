"""Train an offline clip model (X3DS or LRCN) on moving digits, then score its streaming form.

``python -m clplat.stream train experiments/stream_x3d_moving_digits.yaml [key=value ...]``

The model is trained offline on clips with a per-frame loss on ``forward_frames`` (one logit
vector per frame position, causal), which is exactly what its streaming form emits one frame at
a time. To make training look like a long stream, clips can be windows of a segmented stream
(``data.segment_frames``: cuts to a new digit anywhere in the clip) and the first
``train.warmup`` positions of a clip, whose receptive field still reaches the zero padding
before the clip (a stream only has that at its very start), get ``train.warmup_weight`` in the
loss. Long clips give few distinct digits per step, so ``train.pretrain_epochs`` first trains on
many short clips (``train.pretrain_frames``, cut by ``data.switch_prob``) to learn the digits.

After training, the held-out evaluation converts the model with
``clplat.streaming.convert`` and runs it frame by frame over a held-out synthetic stream (unseen
digit images, cuts between videos), scoring every emitted prediction against the label of the
frame it belongs to. Weights go to a safetensors file with the model config in its metadata,
and a JSON beside it holds the config, metrics and the command that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from clplat.config import apply_overrides, format_validation_errors, load_yaml
from clplat.data.moving_digits import MovingDigits, MovingDigitsSpec
from clplat.errors import UserError
from clplat.io import atomic_path
from clplat.streaming.sinks import write_json
from clplat.streaming.sources import FrameSpec, SyntheticSource

FORMAT = "clplat.stream_model/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class X3DSection(_Strict):
    """``clplat.streaming.models.X3DS`` arguments (``num_classes`` comes from the data)."""

    arch: Literal["x3d"] = "x3d"
    width: int = Field(16, ge=1)
    depths: tuple[int, ...] = (1, 2, 2, 1)
    expansion: float = Field(2.25, gt=0)
    fc_width: int = Field(128, ge=1)
    se_ratio: float = Field(0.0625, ge=0)
    se_window: int = Field(1, ge=1)
    head_window: int | None = Field(8, ge=1)
    causal: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)


class LRCNSection(_Strict):
    """``clplat.streaming.models.LRCN`` arguments (``num_classes`` comes from the data)."""

    arch: Literal["lrcn"] = "lrcn"
    feature_dim: int = Field(64, ge=1)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class DataSection(_Strict):
    canvas: int = Field(32, ge=8)
    digit_size: int = Field(16, ge=8)
    frames: int = Field(16, ge=1, description="clip length for training")
    label: Literal["digit", "direction"] = "digit"
    speed: tuple[float, float] = (0.7, 2.0)
    noise: float = Field(12.0, ge=0)
    train_videos: int = Field(3200, ge=1)
    val_videos: int = Field(400, ge=1)
    switch_prob: float = Field(0.3, ge=0, le=1, description="share of training clips with a cut")
    segment_frames: tuple[int, int] | None = Field(
        None, description="clips are windows of a stream of videos this long (cuts anywhere); "
                          "None: single videos, cut by switch_prob")

    def spec(self) -> MovingDigitsSpec:
        try:
            return MovingDigitsSpec(canvas=self.canvas, digit_size=self.digit_size, frames=self.frames,
                                    label=self.label, speed=self.speed, noise=self.noise)
        except ValueError as err:
            raise UserError(f"config: data: {err}") from None


class TrainSection(_Strict):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    pretrain_epochs: int = Field(0, ge=0, description="epochs on short single-video clips first")
    pretrain_frames: int = Field(8, ge=1, description="clip length of the pretraining epochs")
    pretrain_batch_size: int = Field(32, ge=1)
    warmup: int = Field(0, ge=0, description="first clip positions (zero padding in view) get warmup_weight")
    warmup_weight: float = Field(0.0, ge=0, le=1)
    progress: bool = True


class EvalSection(_Strict):
    stream_frames: int = Field(2000, ge=1, description="held-out frames stepped by the streaming model")
    segment_frames: tuple[int, int] = (32, 64)
    seed: int = 1


class OutputSection(_Strict):
    weights: str | None = Field(None, description="safetensors path; default runs/<name>/model.safetensors")
    runs_dir: str = "runs"


ModelSection = Annotated[X3DSection | LRCNSection, Field(discriminator="arch")]


class TrainConfig(_Strict):
    name: str = "stream_x3d_moving_digits"
    seed: int = 0
    model: ModelSection = Field(default_factory=X3DSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML (``yaml.safe_load``) + ``key.sub=value`` overrides -> a validated config, or UserError."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_errors(err, union_tags=("x3d", "lrcn"))) from None


# ---------------------------------------------------------------- models, weights on disk


def build_model(arch: str, kwargs: dict[str, Any], num_classes: int) -> nn.Module:
    """The offline network by architecture name; kwargs are the constructor's own names."""
    from clplat.streaming.models import LRCN, X3DS

    if arch == "x3d":
        return X3DS(num_classes, **kwargs)
    if arch == "lrcn":
        return LRCN(num_classes, **kwargs)
    raise UserError(f"unknown model architecture '{arch}' (known: x3d, lrcn)")


def model_kwargs(section: X3DSection | LRCNSection) -> dict[str, Any]:
    kw = section.model_dump(exclude={"arch"})
    if "depths" in kw:
        kw["depths"] = tuple(kw["depths"])
    return kw


def save_trained(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Weights to ``path`` (safetensors, ``meta`` in its header) and ``meta`` to ``path.json``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata={"clplat": json.dumps(meta, sort_keys=True)})
    return p, write_json(p.with_suffix(".json"), meta)


def load_trained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_trained` (no pickle: safetensors + JSON header only)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get("clplat")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged header
        raise UserError(f"cannot read model '{p}': not a valid safetensors file ({err})") from None
    if meta_raw is None:
        raise UserError(f"model '{p}' has no clplat metadata (was it saved by clplat.streaming.train?)")
    meta = json.loads(meta_raw)
    if meta.get("format") != FORMAT:
        raise UserError(f"model '{p}' has format {meta.get('format')!r}, expected {FORMAT!r}")
    model = build_model(meta["arch"], meta["model"], meta["num_classes"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"model '{p}': weights do not match its config ({first})") from None
    return model.eval(), meta


# ---------------------------------------------------------------- training


class FrameClassifier(L.LightningModule):
    """Thin Lightning adapter: per-frame cross-entropy on ``model.forward_frames``.

    Positions ``t < warmup`` of a clip count ``warmup_weight`` in the loss (the others 1): their
    receptive field still holds the zero padding before the clip, which a stream never sees
    after its first frames. ``*_ctx`` metrics score only positions ``t >= warmup``.
    """

    def __init__(self, model: nn.Module, spec: FrameSpec, lr: float, weight_decay: float,
                 warmup: int = 0, warmup_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.warmup_weight = warmup_weight

    def _logits(self, video: Tensor) -> Tensor:
        return self.model.forward_frames(self.spec.clip_tensor(video))  # (B, K, T)

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Position-weighted mean cross-entropy over ``(B, T)``."""
        w = torch.ones(labels.shape[1], dtype=logits.dtype, device=logits.device)
        w[: self.warmup] = self.warmup_weight
        ce = F.cross_entropy(logits, labels, reduction="none")  # (B, T)
        return (ce * w).sum() / (w.sum() * labels.shape[0])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        video, labels = batch
        logits = self._logits(video)
        loss = self._loss(logits, labels)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        hit = (logits.argmax(1) == labels).float()
        self.log("train_acc_ctx", hit[:, self.warmup:].mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        video, labels = batch
        logits = self._logits(video)
        hit = (logits.argmax(1) == labels).float()
        self.log("val_loss", self._loss(logits, labels), prog_bar=True)
        self.log("val_frame_acc", hit.mean(), prog_bar=True)
        self.log("val_frame_acc_ctx", hit[:, self.warmup:].mean(), prog_bar=True)
        self.log("val_last_frame_acc", hit[:, -1].mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(total, 1),
                                                    pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _materialise(ds: MovingDigits) -> TensorDataset:
    """Render every clip once (a few seconds), so epochs cost only the model's compute."""
    videos, labels = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(videos), torch.stack(labels))


# ---------------------------------------------------------------- streaming evaluation


def logits_of(output: Tensor) -> Tensor:
    """A streaming output for one frame position -> ``(B, num_classes)``."""
    return output.reshape(output.shape[0], -1)


@torch.inference_mode()
def check_stream_equivalence(model: nn.Module, stream: nn.Module, clip: Tensor) -> float:
    """Max |stepped - offline| over the per-frame logits of ``clip`` (fresh state)."""
    offline = model.forward_frames(clip)  # (B, K, T)
    outs, state = [], None
    for t in range(clip.shape[2]):
        y, state = stream.step(clip[:, :, t], state)
        if y is not None:
            outs.append(logits_of(y))
    stepped = torch.stack(outs, dim=2)
    n = stepped.shape[2]
    return float((stepped - offline[..., :n]).abs().max())


@torch.inference_mode()
def stream_accuracy(stream: nn.Module, spec: FrameSpec, source: SyntheticSource, frames: int,
                    settle: int = 0) -> dict[str, float | int]:
    """Step ``stream`` over ``frames`` labelled frames; score each emitted prediction.

    A prediction emitted ``delay`` steps after its frame is scored against that frame's label.
    ``settled_acc`` leaves out the first ``settle`` frames after each cut between videos.
    """
    delay = int(getattr(stream, "delay", 0))
    pending: deque[tuple[int, int]] = deque()  # (label, frames since cut) awaiting their output
    state, since_cut, seen = None, 0, 0
    hits = scored = settled_hits = settled = 0
    for frame in source:
        if seen >= frames:
            break
        seen += 1
        since_cut = 0 if frame.segment_start else since_cut + 1
        pending.append((int(frame.label), since_cut))  # type: ignore[arg-type]
        y, state = stream.step(spec.to_tensor(frame.image), state)
        if y is None:
            continue
        label, age = pending.popleft()  # outputs come in frame order, ``delay`` frames late
        ok = int(logits_of(y).argmax(1)[0]) == label
        hits, scored = hits + ok, scored + 1
        if age >= settle:
            settled_hits, settled = settled_hits + ok, settled + 1
    return {"frames": seen, "scored": scored, "frame_acc": round(hits / max(scored, 1), 4),
            "settled_acc": round(settled_hits / max(settled, 1), 4), "settle_frames": settle,
            "delay": delay}


def run_training(cfg: TrainConfig, command: str | None = None) -> dict[str, Any]:
    """Train, save the weights and the JSON, and return the metrics; deterministic for one seed."""
    from clplat.streaming import convert

    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep the console to our lines
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = cfg.data.spec()
    frame_spec = FrameSpec(size=(spec.canvas, spec.canvas))
    if cfg.train.warmup >= spec.frames and cfg.train.warmup_weight == 0:
        raise UserError(f"config: train.warmup ({cfg.train.warmup}) must be < data.frames ({spec.frames}) "
                        "when train.warmup_weight is 0")
    segments = cfg.data.segment_frames
    if segments is not None and not 1 <= segments[0] <= segments[1]:
        raise UserError(f"config: data.segment_frames: must be 1 <= low <= high (got {list(segments)})")
    train = _materialise(MovingDigits("train", cfg.data.train_videos, spec, seed=cfg.seed,
                                      switch_prob=cfg.data.switch_prob, segment_frames=segments))
    val = _materialise(MovingDigits("test", cfg.data.val_videos, spec, seed=cfg.seed, segment_frames=segments))
    kwargs = model_kwargs(cfg.model)
    model = build_model(cfg.model.arch, kwargs, spec.num_classes)
    module = FrameClassifier(model, frame_spec, cfg.train.lr, cfg.train.weight_decay,
                             cfg.train.warmup, cfg.train.warmup_weight)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True, generator=gen)
    val_loader = DataLoader(val, batch_size=max(cfg.train.batch_size, 64))
    run_dir = Path(cfg.output.runs_dir) / cfg.name

    def make_trainer(epochs: int) -> L.Trainer:
        return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=cfg.train.progress,
                         enable_model_summary=False, deterministic=True, num_sanity_val_steps=0,
                         default_root_dir=str(run_dir), log_every_n_steps=10)

    if cfg.train.pretrain_epochs:
        short = dataclasses.replace(spec, frames=cfg.train.pretrain_frames)
        pre = _materialise(MovingDigits("train", cfg.data.train_videos, short, seed=cfg.seed + 1,
                                        switch_prob=cfg.data.switch_prob))
        pre_module = FrameClassifier(model, frame_spec, cfg.train.lr, cfg.train.weight_decay)
        pre_loader = DataLoader(pre, batch_size=cfg.train.pretrain_batch_size, shuffle=True, generator=gen)
        with warnings.catch_warnings():  # no validation during pretraining, on purpose
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
            make_trainer(cfg.train.pretrain_epochs).fit(pre_module, pre_loader)
        del pre, pre_loader
    trainer = make_trainer(cfg.train.epochs)
    trainer.fit(module, train_loader, val_loader)
    train_seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                               if k.startswith("val_")}
    metrics["train_seconds"] = round(train_seconds, 1)

    model.eval()
    stream = convert(model).eval()
    clip = frame_spec.clip_tensor(val.tensors[0][:2])
    metrics["stream_max_abs_diff"] = check_stream_equivalence(model, stream, clip)
    settle = cfg.model.head_window if isinstance(cfg.model, X3DSection) and cfg.model.head_window else 8
    source = SyntheticSource(spec, seed=cfg.eval.seed, split="test", segment_frames=cfg.eval.segment_frames)
    metrics["stream"] = stream_accuracy(stream, frame_spec, source, cfg.eval.stream_frames, settle=settle)
    meta = {
        "format": FORMAT,
        "name": cfg.name,
        "arch": cfg.model.arch,
        "model": kwargs,
        "num_classes": spec.num_classes,
        "class_names": spec.class_names,
        "input": frame_spec.to_dict(),
        "data": cfg.data.model_dump(mode="json"),
        "config": cfg.model_dump(mode="json"),
        "metrics": metrics,
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": command or "",
        "torch": torch.__version__,
    }
    weights = Path(cfg.output.weights) if cfg.output.weights else run_dir / "model.safetensors"
    w, j = save_trained(weights, model, meta)
    write_json(run_dir / "results.json", meta)
    print(f"saved {w} ({w.stat().st_size / 1e6:.2f} MB) and {j}")
    s = metrics["stream"]
    val_acc = metrics.get("val_frame_acc", float("nan"))
    val_ctx = metrics.get("val_frame_acc_ctx", float("nan"))
    print(f"held-out: clip per-frame acc {val_acc:.4f} ({val_ctx:.4f} past warm-up); "
          f"streaming per-frame acc {s['frame_acc']:.4f} over {s['scored']} frames (settled {s['settled_acc']:.4f}); "
          f"stream vs offline max |diff| {metrics['stream_max_abs_diff']:.2e}; "
          f"{time.perf_counter() - t0:.0f} s total")
    return meta


def main(argv: list[str]) -> int:
    """``train CONFIG [key=value ...]`` (argv without the ``train`` word)."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m clplat.stream train CONFIG.yaml [key.sub=value ...]")
        return 0 if argv else 2
    cfg = load_train_config(argv[0], argv[1:])
    command = "python -m clplat.stream train " + " ".join(shlex.quote(a) for a in argv)
    run_training(cfg, command=command)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
