"""Compact Convolutional Transformer (CCT; Hassani et al., 2021), as ConTraCon trains it from scratch.

A convolutional tokenizer (conv -> ReLU -> max-pool, per layer), a fixed sinusoidal positional
embedding, post-norm CCT encoder layers and sequence pooling (a softmax over tokens of a
``Linear(D, 1)`` score). Returns pooled features ``(B, D)``; the classifier lives in the strategy.

Names follow the reference implementation (SHI-Labs Compact-Transformers): ``cct_6`` is 6 layers,
4 heads, dim 256, MLP ratio 2 (ConTraCon's CIFAR-100 model). The attention projection is a fused
timm-style ``qkv`` by default; ``qkv: separate`` gives bias-free ``q``/``k``/``v`` linears (the
ConTraCon release's layout) with the same function.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from clplat.backbones.build import BACKBONES
from clplat.errors import UserError


class Tokenizer(nn.Module):
    """``n_conv_layers`` x (Conv(k, stride 1, pad k//2, no bias) -> ReLU -> MaxPool(3, 2, 1)), then
    flatten to tokens ``(B, H'W', D)``; intermediate layers have ``in_planes`` channels."""

    def __init__(self, in_channels: int, dim: int, n_conv_layers: int, kernel_size: int, in_planes: int) -> None:
        super().__init__()
        chans = [in_channels] + [in_planes] * (n_conv_layers - 1) + [dim]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, kernel_size, stride=1, padding=kernel_size // 2, bias=False),
                       nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        self.convs = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x).flatten(2).transpose(1, 2)


def sinusoidal_embedding(n_tokens: int, dim: int) -> Tensor:
    """``pe[p, i] = sin/cos(p / 10000^(2 (i//2) / dim))`` (sin on even i, cos on odd i), shape (1, N, D)."""
    pos = torch.arange(n_tokens, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    pe = torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return pe.float()[None]


class Attention(nn.Module):
    """Multi-head self-attention with bias-free input projections (fused ``qkv`` or ``q``/``k``/``v``)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, qkv: str = "fused") -> None:
        super().__init__()
        if dim % num_heads:
            raise UserError(f"backbone: embedding_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.fused = num_heads, qkv == "fused"
        if self.fused:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        else:
            self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        if self.fused:
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (m(x).reshape(b, n, self.num_heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """CCT's layer: ``x += DropPath(MHSA(pre_norm(x))); x = norm1(x); x += DropPath(FFN(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_drop: float, drop_path: float,
                 qkv: str) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_drop, qkv)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.pre_norm(x)))
        x = self.norm1(x)
        return x + self.drop_path(self.linear2(F.gelu(self.linear1(x))))


class CCT(nn.Module):
    """Tokenizer -> + sinusoidal positions -> encoder layers -> LayerNorm -> sequence pooling."""

    def __init__(self, input_shape: tuple[int, ...], *, num_layers: int, num_heads: int, mlp_ratio: float,
                 embedding_dim: int, n_conv_layers: int = 1, kernel_size: int = 3, in_planes: int = 64,
                 attention_dropout: float = 0.1, stochastic_depth: float = 0.1,
                 qkv: Literal["fused", "separate"] = "fused") -> None:
        super().__init__()
        if qkv not in ("fused", "separate"):
            raise UserError(f"backbone.kwargs.qkv must be 'fused' or 'separate', got {qkv!r}")
        if len(input_shape) != 3 or n_conv_layers < 1 or kernel_size < 1 or num_layers < 1:
            raise UserError(f"cct needs (C, H, W) images and positive layer counts, got {input_shape}")
        self.tokenizer = Tokenizer(input_shape[0], embedding_dim, n_conv_layers, kernel_size, in_planes)
        with torch.no_grad():
            n_tokens = self.tokenizer(torch.zeros(1, *input_shape)).shape[1]
        self.register_buffer("pos_embed", sinusoidal_embedding(n_tokens, embedding_dim), persistent=False)
        rates = torch.linspace(0, stochastic_depth, num_layers).tolist()
        self.blocks = nn.ModuleList(EncoderLayer(embedding_dim, num_heads, mlp_ratio, attention_dropout, r, qkv)
                                    for r in rates)
        self.norm = nn.LayerNorm(embedding_dim)
        self.pool = nn.Linear(embedding_dim, 1)
        self.num_features = embedding_dim
        self.num_heads = num_heads
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: Tensor) -> Tensor:
        """Images -> tokens plus positions: the part before the encoder layers (ConTraCon shares it
        across tasks, so task identification computes it once per image, not once per task)."""
        return self.tokenizer(x) + self.pos_embed

    def forward(self, x: Tensor, embedded: bool = False) -> Tensor:
        """Pooled features of images ``x`` (or of tokens from :meth:`embed` when ``embedded``)."""
        x = x if embedded else self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        w = torch.softmax(self.pool(x), dim=1)  # (B, N, 1): sequence pooling
        return (w.transpose(1, 2) @ x).squeeze(1)


# name -> (layers, heads, mlp_ratio, dim), as the reference implementation names them
VARIANTS = {"cct_2": (2, 2, 1.0, 128), "cct_4": (4, 2, 1.0, 128), "cct_6": (6, 4, 2.0, 256),
            "cct_7": (7, 4, 2.0, 256), "cct_14": (14, 6, 3.0, 384)}


def _register(name: str, layers: int, heads: int, mlp: float, dim: int) -> None:
    def build(input_shape: tuple[int, ...], **kwargs) -> CCT:
        kw = {"num_layers": layers, "num_heads": heads, "mlp_ratio": mlp, "embedding_dim": dim, **kwargs}
        return CCT(tuple(input_shape), **kw)

    build.__doc__ = f"{name}: {layers} layers, {heads} heads, MLP ratio {mlp}, dim {dim} (kwargs override)."
    BACKBONES.register(name)(build)


for _name, _spec in VARIANTS.items():
    _register(_name, *_spec)


@BACKBONES.register("cct")
def _cct(input_shape: tuple[int, ...], num_layers: int = 2, num_heads: int = 2, mlp_ratio: float = 2.0,
         embedding_dim: int = 64, **kwargs) -> CCT:
    """A CCT with every size given in ``backbone.kwargs`` (the default is CPU-sized: 2 x 2 heads x 64)."""
    return CCT(tuple(input_shape), num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
               embedding_dim=embedding_dim, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CCT", "VARIANTS", "count_parameters", "sinusoidal_embedding"]
