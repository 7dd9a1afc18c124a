"""LoRA on a timm ViT's query and value projections, through peft.

Why a split: timm fuses the attention's q, k and v projections into one ``qkv`` Linear, so peft's
``target_modules=["qkv"]`` would also adapt the keys (CoACT adapts only q and v, spec A.4).
:func:`split_qkv` swaps every fused ``qkv`` for :class:`SplitQKV`, which holds three ``Linear``
layers ``q``, ``k``, ``v`` cut from the fused weight and concatenates their outputs, so the block
computes exactly what it computed before (same per-output dot products; tested bit for bit).
peft then targets ``q`` and ``v`` by name in the chosen blocks (``layers_to_transform``).

peft's LoRA initialises ``B = 0``, so a freshly adapted model equals the plain one; the adapter's
trainable parameters are the ``lora_A`` / ``lora_B`` weights only.
"""

from __future__ import annotations

import re

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from clplat.errors import UserError

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


class LoraSpec(BaseModel):
    """Where and how large the adapters are (CoACT: r 16, alpha 16, dropout 0.1 on q and v)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["q", "v"], min_length=1,
                               description="module names inside the blocks (q, k, v, proj, fc1, fc2)")
    blocks: list[int] | None = Field(None, description="block indices to adapt; null = every block")


class SplitQKV(nn.Module):
    """Output-identical stand-in for a fused ``qkv`` Linear: ``cat([q(x), k(x), v(x)], -1)``."""

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        if fused.out_features % 3:
            raise UserError(f"qkv layer has {fused.out_features} outputs, not a multiple of 3")
        d, has_bias = fused.out_features // 3, fused.bias is not None
        factory = {"device": fused.weight.device, "dtype": fused.weight.dtype}
        self.q = nn.Linear(fused.in_features, d, bias=has_bias, **factory)
        self.k = nn.Linear(fused.in_features, d, bias=has_bias, **factory)
        self.v = nn.Linear(fused.in_features, d, bias=has_bias, **factory)
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(fused.weight[i * d:(i + 1) * d])
                part.weight.requires_grad_(fused.weight.requires_grad)
                if has_bias:
                    part.bias.copy_(fused.bias[i * d:(i + 1) * d])
                    part.bias.requires_grad_(fused.bias.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _check_vit(vit: nn.Module) -> None:
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not len(blocks) or not hasattr(blocks[0], "attn"):
        raise UserError(f"LoRA needs a timm VisionTransformer backbone, got {type(vit).__name__}")


def split_qkv(vit: nn.Module) -> nn.Module:
    """Replace every block's fused ``attn.qkv`` by a :class:`SplitQKV` (in place, idempotent)."""
    _check_vit(vit)
    for block in vit.blocks:
        if isinstance(block.attn.qkv, nn.Linear):
            block.attn.qkv = SplitQKV(block.attn.qkv)
    return vit


def _resolve_blocks(blocks: list[int] | None, depth: int) -> list[int]:
    if blocks is None:
        return list(range(depth))
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad or not blocks:
        raise UserError(f"lora.blocks {blocks}: the backbone has blocks 0..{depth - 1}")
    return sorted(set(blocks))


def _check_targets(vit: nn.Module, targets: list[str], blocks: list[int]) -> None:
    """A target must name at least one Linear inside a chosen block (peft would fail less clearly)."""
    linear: set[str] = set()
    for b in blocks:
        linear |= {n for n, m in vit.blocks[b].named_modules() if isinstance(m, nn.Linear)}
    leaf = sorted({n.rsplit(".", 1)[-1] for n in linear})
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in linear):
            raise UserError(f"lora.targets: '{t}' matches no linear layer in blocks {blocks} of the "
                            f"backbone (there: {', '.join(leaf)})")


def add_lora(vit: nn.Module, spec: LoraSpec) -> nn.Module:
    """Split q/k/v and inject peft LoRA adapters in place; only the adapters require grad after."""
    from peft import LoraConfig, inject_adapter_in_model

    split_qkv(vit)
    blocks = _resolve_blocks(spec.blocks, len(vit.blocks))
    _check_targets(vit, spec.targets, blocks)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                        target_modules=list(spec.targets), layers_to_transform=blocks,
                        layers_pattern="blocks")
    vit = inject_adapter_in_model(config, vit)
    for name, p in vit.named_parameters():
        p.requires_grad_(is_lora(name))
    return vit


def is_lora(name: str) -> bool:
    """True for a peft adapter parameter (``...lora_A.default.weight`` / ``lora_B``)."""
    return ".lora_A." in name or ".lora_B." in name


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if is_lora(n)]


def base_name(name: str) -> str:
    """Name of an adapted model's parameter in the un-adapted (split) model: drops peft's
    ``.base_layer`` (adapters themselves have no counterpart)."""
    return name.replace(".base_layer.", ".")


def block_index(name: str) -> int | None:
    """Transformer block a parameter belongs to (``None`` for embeddings, final norms, heads)."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None
