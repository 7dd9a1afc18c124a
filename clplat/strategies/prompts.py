"""Prompt-pool methods on a frozen ViT: L2P and DualPrompt, plus the pieces MVP shares with them.

Both follow the Si-Blurry release (``models/l2p.py``, ``models/dualprompt.py``): keys and prompts
initialised ``U(-1, 1)``, the query is the final-norm CLS of the un-prompted model, prompt tokens
get the CLS positional embedding added, the classifier is a new linear head (timm init). Both are
trained with the release's batch-level CutMix when ``augment.cutmix_prob > 0`` (the release runs
them through its ER trainer). Shared pieces
(:func:`cosine_distance`, :func:`as_prompted_vit`, :func:`prompts_by_block`) are used by
``clplat.strategies.mvp`` too.

Deviation: the release's L2P adds its pull loss through a buffer that is never updated (its loss
is CE only); here the pull loss is applied (``l2p.pull_weight``, 0 reproduces the release).
L2P's frequency-diversified selection is off by default: in the release the frequency buffer is
only updated by a method nobody calls, so it stays uniform and the selection is plain top-k
(``l2p.diversified_selection: true`` turns on the paper's version).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from clplat.backbones.vit_prompted import PromptedViT
from clplat.engine.augment import mix_batch, mixed_cross_entropy
from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.heads import linear_head


def cosine_distance(query: Tensor, keys: Tensor) -> Tensor:
    """``1 - cos(q_b, k_p)``, shape ``(B, P)``; differentiable in the keys."""
    return 1.0 - F.cosine_similarity(query.unsqueeze(1), keys.unsqueeze(0), dim=-1)


def as_prompted_vit(backbone: nn.Module) -> PromptedViT:
    """Wrap the engine's timm ViT (frozen, eval) unless it is already wrapped."""
    return backbone if isinstance(backbone, PromptedViT) else PromptedViT(backbone)


def prompts_by_block(groups: list[tuple[list[int], Tensor]]) -> dict[int, Tensor]:
    """``[(blocks, (B, len(blocks), L, D)), ...]`` -> ``{block: (B, sum L, D)}``; groups sharing a
    block are concatenated in order (G before E)."""
    out: dict[int, list[Tensor]] = {}
    for blocks, tokens in groups:
        for j, b in enumerate(blocks):
            out.setdefault(b, []).append(tokens[:, j])
    return {b: torch.cat(ts, dim=-2) for b, ts in out.items()}


def check_blocks(name: str, blocks: list[int], depth: int) -> None:
    """A prompt block index the backbone does not have is a config error naming the key."""
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise UserError(f"{name}: blocks {bad} outside 0..{depth - 1} of this backbone")


# ------------------------------------------------------------------------------------------------ L2P
class L2PConfig(StrategyConfig):
    pool_size: int = Field(10, ge=1)
    top_k: int = Field(5, ge=1)
    prompt_len: int = Field(5, ge=1)
    pull_weight: float = Field(0.5, ge=0, description="weight of mean(1 - cos(q, k_selected))")
    diversified_selection: bool = Field(
        False, description="scale distances by normalised use frequency (a no-op in the release)")

    @model_validator(mode="after")
    def _k_le_pool(self) -> L2PConfig:
        if self.top_k > self.pool_size:
            raise ValueError("top_k must not exceed pool_size")
        return self


@STRATEGIES.register("l2p")
class L2P(Strategy):
    """Learning to Prompt: top-k prompts from a keyed pool, prepended once and kept through all
    blocks; the head reads the mean of the prompt tokens after the final norm."""

    config_model = L2PConfig

    def __init__(self, cfg: L2PConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = as_prompted_vit(backbone)
        dim = self.backbone.embed_dim
        self.keys = nn.Parameter(torch.empty(cfg.pool_size, dim).uniform_(-1, 1))
        self.prompts = nn.Parameter(torch.empty(cfg.pool_size, cfg.prompt_len, dim).uniform_(-1, 1))
        self.head = linear_head(self.backbone.num_features, num_classes)
        self.register_buffer("frequency", torch.ones(cfg.pool_size))

    def _features(self, x: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        """Head input (final-norm mean of the prompt tokens) and the pull term."""
        cfg = self.cfg
        tokens = self.backbone.embed(x)
        query = self.backbone.query(tokens=tokens, final_norm=True)
        dist = cosine_distance(query, self.keys)
        score = dist.detach()
        if training and cfg.diversified_selection:
            score = score * F.normalize(self.frequency, p=1, dim=0)
        idx = score.topk(cfg.top_k, dim=1, largest=False).indices  # (B, k)
        if training:
            self.frequency += torch.bincount(idx.flatten(), minlength=cfg.pool_size).to(self.frequency)
        B, n = x.shape[0], tokens.shape[1]
        carry = self.prompts[idx].reshape(B, cfg.top_k * cfg.prompt_len, -1) + self.backbone.cls_pos_embed
        out = self.backbone.forward_tokens(tokens=tokens, carry=carry)
        return self.backbone.vit.fc_norm(out[:, n:].mean(dim=1)), dist.gather(1, idx).mean()

    def _forward(self, x: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        f, pull = self._features(x, training)
        return self.head(f), pull

    def head_features(self, x: Tensor, ctx: StreamContext | None = None) -> Tensor:
        """What the linear head reads at evaluation (for the class-mean probe)."""
        return self._features(x, training=False)[0]

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> dict[str, Tensor]:
        x, target = mix_batch(ctx.augment, x, y)
        logits, pull = self._forward(x, training=True)
        ce = mixed_cross_entropy(ctx.mask_logits(logits), target)
        return {"loss": ce + self.cfg.pull_weight * pull, "ce": ce.detach(), "pull": pull.detach()}

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        return self._forward(x, training=False)[0]


# ----------------------------------------------------------------------------------------- DualPrompt
class DualPromptConfig(StrategyConfig):
    g_blocks: list[int] = Field(default_factory=lambda: [0, 1])
    g_len: int = Field(5, ge=1)
    e_blocks: list[int] = Field(default_factory=lambda: [2, 3, 4])
    e_len: int = Field(20, ge=1)
    pool_size: int = Field(10, ge=1)
    pull_weight: float = Field(1.0, ge=0)
    prompt_func: Literal["prompt_tuning", "prefix_tuning"] = "prompt_tuning"


@STRATEGIES.register("dualprompt")
class DualPrompt(Strategy):
    """DualPrompt: a shared G-prompt at early blocks and a top-1 E-prompt from a keyed pool at
    middle blocks; the head reads the final-norm CLS token."""

    config_model = DualPromptConfig

    def __init__(self, cfg: DualPromptConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = as_prompted_vit(backbone)
        check_blocks("dualprompt.g_blocks", cfg.g_blocks, self.backbone.depth)
        check_blocks("dualprompt.e_blocks", cfg.e_blocks, self.backbone.depth)
        dim = self.backbone.embed_dim
        kv = (2,) if cfg.prompt_func == "prefix_tuning" else ()
        self.keys = nn.Parameter(torch.empty(cfg.pool_size, dim).uniform_(-1, 1))
        self.g_prompt = nn.Parameter(torch.empty(len(cfg.g_blocks), *kv, cfg.g_len, dim).uniform_(-1, 1))
        self.e_prompts = nn.Parameter(
            torch.empty(cfg.pool_size, len(cfg.e_blocks), *kv, cfg.e_len, dim).uniform_(-1, 1))
        self.head = linear_head(self.backbone.num_features, num_classes)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Head input (final-norm CLS of the prompted ViT) and the pull term."""
        cfg = self.cfg
        tokens = self.backbone.embed(x)
        query = self.backbone.query(tokens=tokens, final_norm=True)
        dist = cosine_distance(query, self.keys)
        idx = dist.detach().argmin(dim=1)
        B = x.shape[0]
        g = self.g_prompt.unsqueeze(0).expand(B, *self.g_prompt.shape)
        e = self.e_prompts[idx]
        if cfg.prompt_func == "prefix_tuning":
            prefix = prompts_by_block([(cfg.g_blocks, g), (cfg.e_blocks, e)])
            out = self.backbone.forward_tokens(tokens=tokens, prefix=prefix)
        else:
            pos = self.backbone.cls_pos_embed.unsqueeze(1)
            append = prompts_by_block([(cfg.g_blocks, g + pos), (cfg.e_blocks, e + pos)])
            out = self.backbone.forward_tokens(tokens=tokens, append=append)
        return self.backbone.pool(out), dist.gather(1, idx[:, None]).mean()

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, pull = self._features(x)
        return self.head(f), pull

    def head_features(self, x: Tensor, ctx: StreamContext | None = None) -> Tensor:
        """What the linear head reads (for the class-mean probe)."""
        return self._features(x)[0]

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> dict[str, Tensor]:
        x, target = mix_batch(ctx.augment, x, y)
        logits, pull = self._forward(x)
        ce = mixed_cross_entropy(ctx.mask_logits(logits), target)
        return {"loss": ce + self.cfg.pull_weight * pull, "ce": ce.detach(), "pull": pull.detach()}

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        return self._forward(x)[0]
