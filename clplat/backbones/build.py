"""Backbone builders: built-in small networks and any timm model, with local pretrained files.

Nothing here downloads: timm models are always created with ``pretrained=False`` and weights come
only from ``backbone.pretrained_file`` on local disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from clplat.errors import UserError
from clplat.nn import make_activation, state_mismatch
from clplat.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone", "clplat.backbones")


class MLP(nn.Module):
    """Flatten -> hidden layers -> features; the per-step-overhead-bound reference model."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256,), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation("relu", inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv blocks with BatchNorm and global pooling; fine on 8-32 px images."""

    def __init__(self, in_channels: int, width: int = 32, num_features: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 make_activation("relu", inplace=True))

        self.features = nn.Sequential(
            block(in_channels, width), block(width, width), nn.MaxPool2d(2, ceil_mode=True),
            block(width, 2 * width), nn.MaxPool2d(2, ceil_mode=True), block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(4 * width, num_features), make_activation("relu", inplace=True))
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))


@BACKBONES.register("mlp")
def _mlp(input_shape: tuple[int, ...], hidden: list[int] | int = 256, dropout: float = 0.0) -> nn.Module:
    hidden_t = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    return MLP(math.prod(input_shape), hidden_t, dropout)


@BACKBONES.register("small_cnn")
def _small_cnn(input_shape: tuple[int, ...], width: int = 32, num_features: int = 128) -> nn.Module:
    return SmallCNN(input_shape[0], width, num_features)


def _timm_backbone(name: str, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise UserError(f"unknown backbone '{name}' (not built in: {', '.join(BACKBONES.names())}; "
                        "and not a timm model name)")
    kwargs.setdefault("in_chans", input_shape[0])
    if "vit" in name or "deit" in name:
        kwargs.setdefault("img_size", input_shape[-1])
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:
        raise UserError(f"backbone.kwargs not accepted by timm model '{name}': {err}") from None
    return model


def resolve_weights_path(path: str | Path) -> Path:
    """A relative path is tried from the working directory, then from the installed package's
    parent, so the shipped ``clplat/weights/...`` files are found from any working directory."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute():
        packaged = Path(__file__).resolve().parents[2] / p
        if packaged.is_file():
            return packaged
    raise UserError(f"backbone.pretrained_file not found: {p}")


def load_pretrained_file(model: nn.Module, path: str | Path) -> nn.Module:
    """Load timm-compatible weights from a local ``.safetensors``, ``.pth``/``.pt`` or ``.npz`` file.

    Classifier-head weights are dropped (the backbone is built with ``num_classes=0``); any other
    missing or unexpected key is an error, so a wrong file never loads silently.
    """
    p = resolve_weights_path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npz":
            if not hasattr(model, "load_pretrained"):
                raise UserError(f"{p}: .npz weights need a timm VisionTransformer backbone")
            model.load_pretrained(str(p))  # timm's own converter for the Google ViT checkpoints
            return model
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        elif suffix in {".pth", ".pt", ".bin", ".ckpt"}:
            state = torch.load(p, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "module"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
        else:
            raise UserError(f"{p}: unsupported weights format '{suffix}' (.safetensors, .pth, .npz)")
    except UserError:
        raise
    except Exception as err:  # corrupt or foreign file
        raise UserError(f"{p}: cannot read weights ({type(err).__name__}: {err})") from None
    head_prefixes = ("head.", "fc.", "classifier.", "head.fc.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    own_head = {k: v for k, v in model.state_dict().items() if k.startswith(head_prefixes)}
    mismatch = state_mismatch(model, {**own_head, **state})  # keys and shapes, before any copy
    if mismatch:
        raise UserError(f"{p}: weights do not match backbone '{type(model).__name__}' ({mismatch})")
    model.load_state_dict(state, strict=False)
    return model


def build_backbone(cfg, input_shape: tuple[int, ...]) -> nn.Module:  # cfg: clplat.config.BackboneConfig
    """Feature extractor ``(B, C, H, W) -> (B, num_features)`` named by ``cfg.name``."""
    kwargs = dict(cfg.kwargs)
    if cfg.name in BACKBONES:
        try:
            model = BACKBONES.get(cfg.name)(tuple(input_shape), **kwargs)
        except TypeError as err:
            raise UserError(f"backbone.kwargs not accepted by '{cfg.name}': {err}") from None
    else:
        model = _timm_backbone(cfg.name, tuple(input_shape), **kwargs)
    if cfg.pretrained_file:
        load_pretrained_file(model, cfg.pretrained_file)
    if cfg.freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    if not hasattr(model, "num_features"):
        raise UserError(f"backbone '{cfg.name}' has no num_features")
    return model
