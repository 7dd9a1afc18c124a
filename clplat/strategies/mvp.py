"""MVP (Moon et al., ICCV 2023): online prompt tuning for Si-Blurry; with ``memory_size > 0``, MVP-R.

One frozen ViT steered by a shared G-prompt and a top-1 E-prompt chosen by key-query matching
(distance scaled by ``count + 1``, a use counter updated on training forwards and used at eval).
Each key owns a row of a learnable instance-wise logit mask ``2 sigmoid(M[p])`` multiplied onto
the logits at train and test time. Losses: cross-entropy on adaptively scaled features (AFS),
re-weighted per sample by the gradient-similarity focal weight (GSF, closed form), plus the
contrastive visual prompt tuning loss on the keys (L_CVPT, ICCV-release form).

Deliberate deviations from the release (switchable, see docs/mvp.md): GSF weights each sample's
loss (``gsf_weighting: per_sample``; ``batch`` = release), L_CVPT divides each sample's terms by
its own key's temperature (``cvpt_tau: per_sample``; ``release`` = the broadcast average), and
MVP-R stores original class ids and maps them to exposure indices exactly once. Like the
release's MVP forward, it ignores CutMix (``augment.cutmix_prob``); the head starts as timm's.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.heads import linear_head
from clplat.strategies.memory import ReservoirMemory
from clplat.strategies.prompts import as_prompted_vit, check_blocks, cosine_distance, prompts_by_block


class MVPConfig(StrategyConfig):
    g_blocks: list[int] = Field(default_factory=lambda: [0, 1])
    g_len: int = Field(5, ge=1)
    e_blocks: list[int] = Field(default_factory=lambda: [2, 3, 4])
    e_len: int = Field(20, ge=1)
    pool_size: int = Field(10, ge=1, description="E-prompt pool P (the release's task_num; not tied to T)")
    query_depth: int | None = Field(None, ge=0, description="blocks before the query CLS; None = depth - 1")
    use_mask: bool = True
    use_cvpt: bool = Field(True, description="L_CVPT and the count penalty; off = pull loss, plain argmin")
    use_afs: bool = True
    use_gsf: bool = True
    key_loss_weight: float = Field(1.0, ge=0)
    cvpt_tau: Literal["per_sample", "release"] = "per_sample"
    afs_margin: float = Field(0.5, gt=0)
    gsf_alpha: float = Field(0.5, ge=0, le=1)
    gsf_gamma: float = Field(2.0, ge=0)
    gsf_weighting: Literal["per_sample", "batch"] = "per_sample"
    memory_size: int = Field(0, ge=0, description="> 0 makes MVP-R (reservoir replay)")
    memory_batch: int = Field(32, ge=1, description="replay samples added to each update")

    @model_validator(mode="after")
    def _disjoint_blocks(self) -> MVPConfig:
        if len(set(self.g_blocks)) != len(self.g_blocks) or len(set(self.e_blocks)) != len(self.e_blocks):
            raise ValueError("g_blocks / e_blocks must not repeat a block")
        return self


def gsf_weights(features: Tensor, y: Tensor, logits: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Gradient-similarity focal weights ``(1 - cos(g_i, gbar_{y_i}))^gamma`` in closed form.

    ``logits`` are the head's masked logits ``m * (W f + b)`` (+ -inf on unexposed units) and
    ``mask`` the instance mask ``m``. For ``l_i = CE(logits_i, y_i)``: ``dl_i/dW_c = (p_ic -
    [y_i = c]) m_ic f_i``, so ``g_i`` (the row of its own class) and the batch-mean gradient rows
    ``gbar_c`` need one softmax and one ``(C, B) @ (B, D)`` product instead of B backward passes.
    """
    features, logits, mask = features.detach(), logits.detach(), mask.detach()
    coef = (logits.softmax(dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)) * mask  # (B, C)
    g = coef.gather(1, y[:, None]) * features                        # (B, D) per-sample row gradients
    gbar = coef.t() @ features / features.shape[0]                 # (C, D) batch-mean gradients
    cos = F.cosine_similarity(g, gbar[y], dim=1)
    return (1.0 - cos).pow(gamma)


def gsf_weights_reference(features: Tensor, y: Tensor, mask: Tensor, head: nn.Linear, ctx: StreamContext,
                          gamma: float) -> Tensor:
    """The release's ``_compute_grads``: B per-sample backward passes on a copied head. Kept as the
    PyTorch reference that :func:`gsf_weights` (the closed form) is tested and benchmarked against."""
    head = copy.deepcopy(head)
    logits = ctx.mask_logits(head(features.detach()) * mask.detach())
    per_sample = F.cross_entropy(logits, y, reduction="none")
    grads = []
    for i in range(len(y)):
        head.zero_grad()
        per_sample[i].backward(retain_graph=True)
        grads.append(head.weight.grad[y[i]].clone())
    head.zero_grad()
    F.cross_entropy(logits, y).backward()
    return (1 - F.cosine_similarity(torch.stack(grads), head.weight.grad[y], dim=1)) ** gamma


def cvpt_loss(dist_sel: Tensor, keys: Tensor, idx: Tensor, tau: Tensor,
              variant: Literal["per_sample", "release"] = "per_sample") -> Tensor:
    """Contrastive visual prompt tuning loss, ICCV-release form: ``-log(A / (D + A) + 1e-6)``.

    ``A`` averages ``exp((1 - cos(k_{p_i}, k_j)) / tau)`` over the selected keys' rows (negatives:
    push selected keys apart), ``D`` averages ``exp(d_{p_i}(x_i) / tau)`` (positives: pull each
    selected key to its queries). ``tau = count + 1`` of the selected key. ``per_sample`` divides
    sample i's terms by its own tau_i; ``release`` reproduces the release's broadcast, where every
    term is divided by every sample's tau and averaged.
    """
    key_dist = 1.0 - F.cosine_similarity(keys.unsqueeze(1), keys.unsqueeze(0), dim=-1)  # (P, P)
    rows = key_dist[idx]                                                                 # (B, P)
    if variant == "per_sample":
        a = (rows / tau[:, None]).exp().mean()
        d = (dist_sel / tau).exp().mean()
    else:
        a = (rows[:, None, :] / tau[None, :, None]).exp().mean()
        d = (dist_sel[None, :] / tau[:, None]).exp().mean()
    return -torch.log(a / (d + a) + 1e-6)


@STRATEGIES.register("mvp")
class MVP(Strategy):
    """MVP / MVP-R on a frozen timm ViT. Trainable: head, keys, logit mask, G- and E-prompts."""

    config_model = MVPConfig

    def __init__(self, cfg: MVPConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = as_prompted_vit(backbone)
        depth, dim = self.backbone.depth, self.backbone.embed_dim
        check_blocks("mvp.g_blocks", cfg.g_blocks, depth)
        check_blocks("mvp.e_blocks", cfg.e_blocks, depth)
        self.query_depth = depth - 1 if cfg.query_depth is None else cfg.query_depth
        if self.query_depth > depth:
            raise UserError(f"mvp.query_depth {self.query_depth} exceeds the backbone depth {depth}")
        self.keys = nn.Parameter(torch.randn(cfg.pool_size, dim))
        self.logit_mask = nn.Parameter(torch.full((cfg.pool_size, num_classes), -1.0))
        self.g_prompt = nn.Parameter(torch.randn(len(cfg.g_blocks), cfg.g_len, dim))
        self.e_prompts = nn.Parameter(torch.randn(cfg.pool_size, len(cfg.e_blocks), cfg.e_len, dim))
        self.head = linear_head(self.backbone.num_features, num_classes)
        self.register_buffer("count", torch.zeros(cfg.pool_size))
        self.memory = ReservoirMemory(cfg.memory_size, tuple(input_shape)) if cfg.memory_size else None

    # --- model -------------------------------------------------------------------------------
    def select(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Key distances ``(B, P)`` (grad to keys) and the top-1 key per sample (no grad)."""
        query = self.backbone.query(tokens=tokens, depth=self.query_depth)
        dist = cosine_distance(query, self.keys)
        score = dist.detach() * (self.count + 1) if self.cfg.use_cvpt else dist.detach()
        return dist, score.argmin(dim=1)

    def features(self, tokens: Tensor, idx: Tensor) -> Tensor:
        """Final-norm CLS of the ViT prompted with the G-prompt and each sample's E-prompt."""
        B = tokens.shape[0]
        g = self.g_prompt.unsqueeze(0).expand(B, *self.g_prompt.shape)
        append = prompts_by_block([(self.cfg.g_blocks, g), (self.cfg.e_blocks, self.e_prompts[idx])])
        return self.backbone.pool(self.backbone.forward_tokens(tokens=tokens, append=append))

    def instance_mask(self, idx: Tensor) -> Tensor:
        """``2 sigmoid(M[p])`` per sample, ``(B, C)``; ones when the mask is ablated."""
        if not self.cfg.use_mask:
            return torch.ones(idx.shape[0], self.num_classes, device=idx.device)
        return 2.0 * torch.sigmoid(self.logit_mask[idx])

    # --- strategy contract -------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> dict[str, Tensor]:
        cfg = self.cfg
        if self.memory is not None and len(self.memory) > 0:
            x_mem, y_mem = self.memory.sample(cfg.memory_batch, ctx.generator)
            x = torch.cat([x, ctx.augment(x_mem).to(x)])
            y = torch.cat([y, ctx.to_index(y_mem).to(y)])
        tokens = self.backbone.embed(x)
        dist, idx = self.select(tokens)
        tau = (self.count + 1)[idx]  # temperature at selection time, before this update
        with torch.no_grad():
            self.count += torch.bincount(idx, minlength=cfg.pool_size).to(self.count)
        f = self.features(tokens, idx)
        m = self.instance_mask(idx)
        W = self.head.weight
        if cfg.use_afs:
            scale = (1.0 - F.cosine_similarity(W[y].detach(), f.detach(), dim=1) + cfg.afs_margin)
            logits = ctx.mask_logits(m * self.head(f / scale[:, None]))
        else:
            logits = ctx.mask_logits(m * self.head(f))
        ce = F.cross_entropy(logits, y, reduction="none")
        out: dict[str, Tensor] = {}
        if cfg.use_gsf:
            with torch.no_grad():
                plain = ctx.mask_logits(m * F.linear(f, W, self.head.bias))
                w = gsf_weights(f, y, plain, m, cfg.gsf_gamma)
            a = cfg.gsf_alpha
            cls_loss = ((1 - a) + a * w).mul(ce).mean() if cfg.gsf_weighting == "per_sample" \
                else ((1 - a) + a * w.mean()) * ce.mean()
            out["gsf_weight"] = w.mean()
        else:
            cls_loss = ce.mean()
        dist_sel = dist.gather(1, idx[:, None]).squeeze(1)
        key_loss = cvpt_loss(dist_sel, self.keys, idx, tau, cfg.cvpt_tau) if cfg.use_cvpt \
            else dist_sel.mean()
        out.update(loss=cls_loss + cfg.key_loss_weight * key_loss, ce=ce.mean().detach(),
                   key_loss=key_loss.detach())
        return out

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        """Unscaled features, instance mask applied; the engine adds the unexposed-class mask."""
        tokens = self.backbone.embed(x)
        _, idx = self.select(tokens)
        return self.instance_mask(idx) * self.head(self.features(tokens, idx))

    def head_features(self, x: Tensor, ctx: StreamContext | None = None) -> Tensor:
        """The prompted features the head reads at evaluation (unscaled; for the class-mean probe)."""
        tokens = self.backbone.embed(x)
        return self.features(tokens, self.select(tokens)[1])

    def on_stream_batch(self, x: Tensor, y_orig: Tensor, ctx: StreamContext) -> None:
        """MVP-R: offer the raw stream batch (original class ids) to the reservoir."""
        if self.memory is not None:
            self.memory.add(x, y_orig, ctx.generator)
