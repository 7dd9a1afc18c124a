"""A frozen timm ``VisionTransformer`` with prompt-tuning, prefix-tuning and a query path.

Why: L2P, DualPrompt and MVP all keep a pretrained ViT frozen and steer it with learned tokens.
This wrapper gives them three doors onto one frozen model:

* **prompt-tuning** (``append={block: (B, L, D)}``): tokens appended after the CLS + patch tokens
  before a block and dropped after it; they carry no positional embedding of their own.
  ``carry=(B, L, D)`` tokens are appended once before block 0 and kept to the end (L2P).
* **prefix-tuning** (``prefix={block: (B, 2, L, D)}``): extra keys and values (already in key /
  value space, split over heads) in that block's attention, computed here from the block's own
  ``qkv`` weights; with no prefix it equals the timm block exactly.
* **query**: the CLS token after the first ``depth`` blocks of the un-prompted model (optionally
  through the final norm), computed without gradients.

The wrapped model stays in ``eval()`` whatever ``train()`` is called with (no dropout, no drop
path), and its parameters never require gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.errors import UserError


class PromptedViT(nn.Module):
    """Frozen ViT feature extractor ``(B, C, H, W) -> (B, num_features)`` with prompt hooks."""

    def __init__(self, vit: nn.Module | str, **create_kwargs) -> None:
        super().__init__()
        if isinstance(vit, str):
            import timm

            vit = timm.create_model(vit, pretrained=False, num_classes=0, **create_kwargs)
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(vit, VisionTransformer):
            raise UserError("prompt methods need a timm VisionTransformer backbone, "
                            f"got {type(vit).__name__}")
        if not vit.has_class_token:
            raise UserError("prompt methods need a ViT with a class token (class_token=True)")
        for p in vit.parameters():
            p.requires_grad_(False)
        self.vit = vit.eval()
        self.embed_dim: int = vit.embed_dim
        self.num_features: int = vit.num_features
        self.depth: int = len(vit.blocks)
        self.num_heads: int = vit.blocks[0].attn.num_heads

    def train(self, mode: bool = True) -> PromptedViT:
        """The backbone is frozen: it always runs in eval mode."""
        super().train(mode)
        self.vit.eval()
        return self

    @property
    def cls_pos_embed(self) -> Tensor:
        """``(1, 1, D)`` positional embedding of the CLS slot (zeros if the model has none);
        L2P and DualPrompt add it to their prompt tokens."""
        pos = self.vit.pos_embed
        if pos is None or self.vit.no_embed_class:
            return torch.zeros(1, 1, self.embed_dim, device=self.vit.cls_token.device)
        return pos[:, :1]

    def embed(self, x: Tensor) -> Tensor:
        """Patch + CLS tokens with positional embedding, ``(B, N, D)``."""
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    @torch.no_grad()
    def query(self, x: Tensor | None = None, depth: int | None = None, final_norm: bool = False,
              tokens: Tensor | None = None) -> Tensor:
        """CLS after the first ``depth`` blocks (default all) of the un-prompted model, ``(B, D)``."""
        h = self.embed(x) if tokens is None else tokens
        depth = self.depth if depth is None else depth
        if not 0 <= depth <= self.depth:
            raise UserError(f"query depth {depth} outside 0..{self.depth}")
        for block in self.vit.blocks[:depth]:
            h = block(h)
        if final_norm:
            h = self.vit.norm(h)
        return h[:, 0]

    def forward_tokens(self, x: Tensor | None = None, append: dict[int, Tensor] | None = None,
                       prefix: dict[int, Tensor] | None = None, carry: Tensor | None = None,
                       tokens: Tensor | None = None) -> Tensor:
        """All tokens after the final norm: ``(B, N + Lc, D)`` with the ``carry`` tokens last."""
        h = self.embed(x) if tokens is None else tokens
        if carry is not None:
            h = torch.cat([h, carry.to(h.dtype)], dim=1)
        n_keep = h.shape[1]
        for i, block in enumerate(self.vit.blocks):
            extra = None if append is None else append.get(i)
            if extra is not None:
                h = torch.cat([h, extra.to(h.dtype)], dim=1)
            pre = None if prefix is None else prefix.get(i)
            h = block(h) if pre is None else prefix_block_forward(block, h, pre)
            if extra is not None:
                h = h[:, :n_keep]
        return self.vit.norm(h)

    def pool(self, tokens: Tensor) -> Tensor:
        """The CLS feature the frozen model would hand its classifier."""
        return self.vit.fc_norm(tokens[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """Un-prompted CLS feature (equals ``vit(x)`` for token-pooled models)."""
        return self.pool(self.forward_tokens(x))


def prefix_block_forward(block: nn.Module, x: Tensor, prefix: Tensor) -> Tensor:
    """One timm ``Block`` whose attention also attends to prefix keys/values.

    ``prefix`` is ``(B, 2, L, D)``: ``prefix[:, 0]`` keys, ``prefix[:, 1]`` values, each split over
    the block's heads like the projected tokens (prefix-tuning as in DualPrompt). Queries come from
    the tokens only, so the output keeps ``x``'s length.
    """
    attn = block.attn
    if not hasattr(attn, "qkv") or not hasattr(block, "norm1"):
        raise UserError(f"prefix-tuning needs timm Block/Attention modules, got {type(block).__name__}")
    h = block.norm1(x)
    B, N, _ = h.shape
    heads, hd = attn.num_heads, attn.head_dim
    qkv = attn.qkv(h).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prefix.shape[2] > 0:
        L = prefix.shape[2]
        pk = prefix[:, 0].reshape(B, L, heads, hd).transpose(1, 2).to(k.dtype)
        pv = prefix[:, 1].reshape(B, L, heads, hd).transpose(1, 2).to(v.dtype)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    o = F.scaled_dot_product_attention(q, k, v)
    o = attn.norm(o.transpose(1, 2).reshape(B, N, heads * hd))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    o = attn.proj_drop(attn.proj(o))
    x = x + block.drop_path1(block.ls1(o))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
