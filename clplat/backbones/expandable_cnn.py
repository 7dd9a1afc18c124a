"""A CNN that can grow wider and deeper without changing what it computes (SENN / SECNN, issue 10).

The network is stages of conv blocks, 2x2 max-pooling between stages, then global average pooling
and a fixed-width linear projection (so ``num_features``, and any head on it, never changes).
Its whole shape is a plain description (``describe()``), which a checkpoint stores and
``arch`` / ``arch_file`` rebuild::

    {"in_channels": 3, "num_features": 64, "activation": "relu",
     "stages": [[{"width": 16, "kind": "base"}], [{"width": 32, "kind": "base"}, ...], ...]}

Two block kinds:

* ``base``: 3x3 conv (no bias) -> BatchNorm -> activation (``clplat.nn``);
* ``identity``: a block inserted by depth growth: 3x3 conv (no bias) initialised to the centred
  delta kernel (W[i, i, 1, 1] = 1) -> per-channel PReLU with slope 1. It starts as the exact
  identity in train and eval mode (no BatchNorm, whose batch statistics would change the function);
  training bends the PReLU slopes away from 1 and the kernel away from the delta.

Width growth of block (s, b) by k channels: k new conv rows (the given fan-in, by default
He-normal), BatchNorm extended with gamma=1, beta=0, mean=0, var=1 (old entries copied), PReLU
slopes 0.25 for new channels; the consumer (next block's conv, or the projection after the last
stage) gets k zero input columns, so the output is unchanged. Every change returns the replaced
parameters (``Replacement``) so the optimizer state can follow (``clplat.strategies.senn_growth``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clplat.backbones.build import BACKBONES
from clplat.errors import UserError
from clplat.nn import check_activation, make_activation

KINDS = ("base", "identity")


@dataclass(frozen=True)
class Replacement:
    """``old`` was replaced by the larger ``new``; ``old`` equals ``new`` narrowed to ``old.shape``
    along ``dim`` (the leading slice)."""

    old: nn.Parameter
    new: nn.Parameter
    dim: int


def normalise_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """A checked, canonical copy of an architecture description (ValueError naming the problem)."""
    if not isinstance(arch, dict):
        raise ValueError("architecture must be a mapping")
    unknown = set(arch) - {"in_channels", "num_features", "activation", "stages"}
    if unknown:
        raise ValueError(f"architecture: unknown key(s) {sorted(unknown)}")
    stages = arch.get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, list) and s for s in stages):
        raise ValueError("architecture: stages must be a non-empty list of non-empty block lists")
    out_stages = []
    for s, stage in enumerate(stages):
        blocks = []
        for b, blk in enumerate(stage):
            blk = {"width": blk, "kind": "base"} if isinstance(blk, int) else blk
            if not isinstance(blk, dict) or set(blk) - {"width", "kind"}:
                raise ValueError(f"architecture: block {s}.{b} must be a width or {{width, kind}}")
            width, kind = blk.get("width"), blk.get("kind", "base")
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise ValueError(f"architecture: block {s}.{b} width must be a positive integer")
            if kind not in KINDS:
                raise ValueError(f"architecture: block {s}.{b} kind must be one of {KINDS}")
            blocks.append({"width": width, "kind": kind})
        out_stages.append(blocks)
    activation = check_activation(arch.get("activation", "relu"))
    in_ch, feats = arch.get("in_channels"), arch.get("num_features", 64)
    for key, v in (("in_channels", in_ch), ("num_features", feats)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"architecture: {key} must be a positive integer")
    return {"in_channels": in_ch, "num_features": feats, "activation": activation, "stages": out_stages}


def he_normal(shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
    """He-normal weights (std sqrt(2 / fan_in)), drawn from ``generator`` (reproducible growth)."""
    return torch.randn(shape, generator=generator).to(device) * math.sqrt(2.0 / fan_in)


class ConvBlock(nn.Module):
    """conv -> BN -> activation (``base``) or conv(delta) -> PReLU(1) (``identity``)."""

    def __init__(self, cin: int, cout: int, kind: str, activation: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        if kind == "base":
            self.bn: nn.Module = nn.BatchNorm2d(cout)
            self.act: nn.Module = make_activation(activation)
        else:
            with torch.no_grad():  # (a rebuilt, since widened, identity block may have cin != cout)
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] = torch.eye(cout, cin)
            self.bn = nn.Identity()
            self.act = nn.PReLU(cout, init=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def _grown(p: nn.Parameter, extra: Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(torch.cat([p.detach(), extra.to(p.device, p.dtype)], dim=dim), requires_grad=p.requires_grad)


class ExpandableCNN(nn.Module):
    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        arch = normalise_arch(arch)
        self.activation = arch["activation"]
        self.in_channels = arch["in_channels"]
        self.num_features = arch["num_features"]
        self.stages = nn.ModuleList()
        cin = self.in_channels
        for stage in arch["stages"]:
            blocks = nn.ModuleList()
            for blk in stage:
                blocks.append(ConvBlock(cin, blk["width"], blk["kind"], self.activation))
                cin = blk["width"]
            self.stages.append(blocks)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.proj = nn.Linear(cin, self.num_features)
        self.proj_act = make_activation(self.activation)

    # --- description ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "num_features": self.num_features, "activation": self.activation,
                "stages": [[{"width": blk.conv.out_channels, "kind": blk.kind} for blk in st] for st in self.stages]}

    def summary(self) -> str:
        """e.g. ``16 | 32,id32 | 48`` (stages separated by |, inserted identity blocks as id<w>)."""
        return " | ".join(",".join(("id" if blk.kind == "identity" else "") + str(blk.conv.out_channels)
                                   for blk in st) for st in self.stages)

    def blocks(self) -> list[tuple[int, int, ConvBlock]]:
        return [(s, b, blk) for s, st in enumerate(self.stages) for b, blk in enumerate(st)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- forward ----------------------------------------------------------------------------------
    def stage_output(self, s: int, x: Tensor) -> Tensor:
        """What leaves stage ``s`` towards the next consumer (pooled, or globally averaged)."""
        return self.pool(x) if s < len(self.stages) - 1 else x.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        for s, stage in enumerate(self.stages):
            for blk in stage:
                x = blk(x)
            x = self.stage_output(s, x)
        return self.proj_act(self.proj(x))

    # --- growth -----------------------------------------------------------------------------------
    def consumer(self, s: int, b: int) -> nn.Module:
        """The layer that reads block (s, b)'s output: the next conv, or the projection."""
        if b + 1 < len(self.stages[s]):
            return self.stages[s][b + 1].conv
        if s + 1 < len(self.stages):
            return self.stages[s + 1][0].conv
        return self.proj

    @torch.no_grad()
    def grow_width(self, s: int, b: int, k: int, fan_in: Tensor | None = None,
                   generator: torch.Generator | None = None) -> list[Replacement]:
        """Add ``k`` output channels to block (s, b); the function is unchanged."""
        blk = self.stages[s][b]
        conv, dev = blk.conv, blk.conv.weight.device
        if fan_in is None:
            fan_in = he_normal((k, conv.in_channels, 3, 3), conv.in_channels * 9, generator, dev)
        if tuple(fan_in.shape) != (k, conv.in_channels, 3, 3):
            raise ValueError(f"fan-in weights of shape {tuple(fan_in.shape)} for {k} channels")
        reps = [Replacement(conv.weight, _grown(conv.weight, fan_in, 0), 0)]
        conv.weight, conv.out_channels = reps[-1].new, conv.out_channels + k
        if isinstance(blk.bn, nn.BatchNorm2d):
            bn = blk.bn
            for name, fill in (("weight", 1.0), ("bias", 0.0)):
                old = getattr(bn, name)
                reps.append(Replacement(old, _grown(old, torch.full((k,), fill), 0), 0))
                setattr(bn, name, reps[-1].new)
            bn.running_mean = torch.cat([bn.running_mean, torch.zeros(k, device=dev)])
            bn.running_var = torch.cat([bn.running_var, torch.ones(k, device=dev)])
            bn.num_features += k
        else:
            act = blk.act
            reps.append(Replacement(act.weight, _grown(act.weight, torch.full((k,), 0.25), 0), 0))
            act.weight, act.num_parameters = reps[-1].new, act.num_parameters + k
        nxt = self.consumer(s, b)
        if isinstance(nxt, nn.Conv2d):
            zeros = torch.zeros(nxt.out_channels, k, 3, 3)
            reps.append(Replacement(nxt.weight, _grown(nxt.weight, zeros, 1), 1))
            nxt.weight, nxt.in_channels = reps[-1].new, nxt.in_channels + k
        else:
            reps.append(Replacement(nxt.weight, _grown(nxt.weight, torch.zeros(nxt.out_features, k), 1), 1))
            nxt.weight, nxt.in_features = reps[-1].new, nxt.in_features + k
        return reps

    @torch.no_grad()
    def insert_identity(self, s: int, b: int) -> list[nn.Parameter]:
        """Insert an identity block right after block (s, b); returns its (new) parameters."""
        width = self.stages[s][b].conv.out_channels
        ref = self.stages[s][b].conv.weight
        blk = ConvBlock(width, width, "identity", self.activation).to(ref.device, ref.dtype)
        self.stages[s].insert(b + 1, blk)
        return list(blk.parameters())


def load_arch_file(path: str | Path) -> dict[str, Any]:
    """An architecture description saved by a SENN run (``architecture.json``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"backbone.kwargs.arch_file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{p}: not a JSON architecture description ({type(err).__name__})") from None
    return data.get("architecture", data) if isinstance(data, dict) else data


@BACKBONES.register("expandable_cnn")
def _expandable_cnn(input_shape: tuple[int, ...], stages: list[list[int]] | None = None, num_features: int = 64,
                    activation: str = "relu", arch: dict[str, Any] | None = None,
                    arch_file: str | None = None) -> ExpandableCNN:
    """``stages``: widths per stage (default [[16], [32], [32]]); or a whole description (``arch``,
    ``arch_file``: e.g. a SENN run's final ``architecture.json``, the fixed-large baseline)."""
    if arch_file is not None:
        arch = load_arch_file(arch_file)
    if arch is None:
        arch = {"stages": stages if stages is not None else [[16], [32], [32]], "num_features": num_features,
                "activation": activation}
    arch = {**arch, "in_channels": arch.get("in_channels", int(input_shape[0]))}
    try:
        arch = normalise_arch(arch)
    except ValueError as err:
        raise UserError(f"backbone expandable_cnn: {err}") from None
    if arch["in_channels"] != int(input_shape[0]):
        raise UserError(f"backbone expandable_cnn: architecture has {arch['in_channels']} input channels, "
                        f"the data {input_shape[0]}")
    return ExpandableCNN(arch)
