"""Pretrain a backbone on a chosen dataset and write timm-compatible ``.safetensors`` weights.

    python -m clplat.pretrain CONFIG [key=value ...]

Why: prompt methods need a pretrained frozen backbone, and clplat never downloads one. The
shipped default (``clplat/weights/vit_glyphs32.safetensors``) comes from this script trained on
procedurally generated glyphs, which share no class with the built-in digits stream. After
training, a linear probe on ``probe.dataset`` compares the features with a random-init backbone
of the same architecture, and everything (resolved config, accuracies, wall time, sha256) is
written to a JSON file beside the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from clplat.config import BackboneConfig, DataConfig, load_model_config
from clplat.errors import UserError, main_guard
from clplat.io import atomic_path, atomic_write_text


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainTrainConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    random_crop_pad: int = Field(2, ge=0)
    log_every: int = Field(100, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; 1 is fastest on a busy machine")


class ProbeConfig(_Section):
    dataset: str = "digits"
    max_iter: int = Field(3000, ge=1)


class PretrainConfig(_Section):
    name: str = "pretrain"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)
    probe: ProbeConfig | None = Field(default_factory=ProbeConfig)
    output: str = Field(..., description="path of the .safetensors file to write")


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    return load_model_config(PretrainConfig, path, overrides)


@torch.no_grad()
def extract_features(backbone: nn.Module, x: Tensor, batch: int = 512) -> np.ndarray:
    """Pooled backbone features of a whole split, in eval mode."""
    backbone.eval()
    return torch.cat([backbone(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def linear_probe(backbone: nn.Module, data, max_iter: int = 3000) -> float:  # data: ClassificationData
    """Test accuracy of a logistic-regression probe (``max_iter`` solver iterations) on frozen,
    standardized features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    f_tr = extract_features(backbone, data.train.x)
    f_te = extract_features(backbone, data.test.x)
    scaler = StandardScaler().fit(f_tr)
    clf = LogisticRegression(max_iter=max_iter, C=1.0).fit(scaler.transform(f_tr), data.train_targets)
    return float(clf.score(scaler.transform(f_te), data.test_targets))


def _lr_at(step: int, total: int, cfg: PretrainTrainConfig) -> float:
    warm = max(1, int(cfg.warmup_frac * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 512) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Train backbone + linear head with AdamW (warmup + cosine); write weights and a JSON report."""
    from safetensors.torch import save_file

    from clplat.backbones import build_backbone
    from clplat.data import build_dataset
    from clplat.engine.augment import random_crop

    out = Path(cfg.output)
    if out.suffix != ".safetensors":
        raise UserError(f"output must end in .safetensors, got {out}")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    data = build_dataset(cfg.data, cfg.seed)
    log(f"data: {data.name}, {len(data.train)} train / {len(data.test)} test, {data.num_classes} classes, "
        f"shape {data.input_shape} ({time.time() - t0:.0f}s)")
    backbone = build_backbone(cfg.backbone, data.input_shape)
    head = nn.Linear(backbone.num_features, data.num_classes)
    model = nn.Sequential(backbone, head)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr)
    x_tr, y_tr = data.train.x, data.train.y
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(x_tr) // cfg.train.batch_size
    total = steps_per_epoch * cfg.train.epochs
    step, t_train = 0, time.time()
    for epoch in range(cfg.train.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.train.batch_size:(b + 1) * cfg.train.batch_size]
            x = random_crop(x_tr[idx], cfg.train.random_crop_pad, g)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg.train)
            loss = F.cross_entropy(model(x), y_tr[idx], label_smoothing=cfg.train.label_smoothing)
            if not torch.isfinite(loss):
                raise UserError(f"pretraining diverged at step {step} (loss {float(loss)}); lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % cfg.train.log_every == 0 or step == total:
                log(f"epoch {epoch} step {step}/{total} loss {loss.item():.3f} "
                    f"({time.time() - t_train:.0f}s)")
    train_seconds = time.time() - t_train
    test_acc = _accuracy(model, data.test.x, data.test.y)
    log(f"pretrain test accuracy on {data.name}: {test_acc:.4f} (train {train_seconds:.0f}s)")

    with atomic_path(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in backbone.state_dict().items()}, str(tmp),
                  metadata={"format": "pt", "clplat": "pretrain"})
    report = {
        "weights": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "size_bytes": out.stat().st_size,
        "backbone": cfg.backbone.model_dump(mode="json", exclude={"pretrained_file"}),
        "input_shape": list(data.input_shape),
        "pretrain_config": cfg.model_dump(mode="json"),
        "command": "python -m clplat.pretrain " + " ".join(sys.argv[1:]) if sys.argv[1:] else None,
        "pretrain_test_accuracy": test_acc,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
    }
    if cfg.probe is not None:
        report["linear_probe"] = probe_report(cfg, data.input_shape, backbone, log)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} ({report['size_bytes'] / 1e6:.1f} MB) and {out.with_suffix('.json')}")
    return report


def probe_report(cfg: PretrainConfig, input_shape: tuple[int, ...], backbone: nn.Module, log=print) -> dict:
    """Linear-probe accuracy of the trained features versus a random-init twin on ``probe.dataset``."""
    from clplat.backbones import build_backbone
    from clplat.data import build_dataset

    assert cfg.probe is not None
    probe_data_cfg = DataConfig(dataset=cfg.probe.dataset, image_size=input_shape[-1],
                                channels=input_shape[0])
    probe_data = build_dataset(probe_data_cfg, cfg.seed)
    torch.manual_seed(cfg.seed)
    random_twin = build_backbone(cfg.backbone.model_copy(update={"pretrained_file": None}), input_shape)
    acc_pre = linear_probe(backbone, probe_data, cfg.probe.max_iter)
    acc_rand = linear_probe(random_twin, probe_data, cfg.probe.max_iter)
    log(f"linear probe on {cfg.probe.dataset}: pretrained {acc_pre:.4f} vs random init {acc_rand:.4f}")
    return {"dataset": cfg.probe.dataset, "pretrained": acc_pre, "random_init": acc_rand}


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if args else 2
    pretrain(load_pretrain_config(args[0], args[1:]), log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
