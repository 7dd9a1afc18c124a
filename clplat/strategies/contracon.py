"""ConTraCon (Roy et al., ICCV 2023): an exemplar-free continual transformer. Task 0 trains the
whole network; every later task re-weights the frozen task-0 q/k/v weights with its own per-head
k x k convolutions and sigmoid skip-gates, and has its own LayerNorms, sequence-pool linear and
head. Without a task label, the task is the one whose averaged logits over 16 views of the image
have the lowest entropy (spec: shared/specs/coact_contracon.md part B; docs/contracon.md).

Per-task parameters live in ``self.adapters[t]`` (a ``ModuleList``), so ``state_dict`` carries every
task and switching task is an index. The backbone's own LayerNorms and pool are never used (every
task, task 0 included, supplies its own through ``torch.func.functional_call``); any backbone with
``blocks[i].attn`` holding a fused ``qkv`` or separate ``q``/``k``/``v`` linears and ``num_heads``
works (the CCT here, a timm ViT). A projection bias, if present, stays shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.func import functional_call

from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.contracon_views import entropy_task_id, task_id_views
from clplat.strategies.heads import linear_head


class ContraconConfig(StrategyConfig):
    kernel_size: int = Field(15, ge=1, description="odd k of the k x k kernels over each head's weight slice")
    gate_init: float = Field(1.0, description="initial skip-gate logit s (sigma(1) = 0.73, as the release)")
    kernel_init: Literal["conv_default", "zero"] = Field(
        "conv_default", description="conv_default: nn.Conv2d's init (the release); zero: kernels and "
        "biases 0, so a new task starts from sigma(s) W0 instead of a randomly perturbed W0")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    head_lr: float | None = Field(None, gt=0, description="lr of the task head (None: the session's lr)")
    entropy_eps: float = Field(1e-4, gt=0, description="H = -sum p log(p + eps)")
    adapt: Literal["contracon", "probe"] = Field(
        "contracon", description="probe: the baseline of a frozen task-0 network with a new head per task")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {k}")
        return k


@dataclass(frozen=True)
class Projection:
    """One re-weighted input projection: parameter ``name`` holds ``mats`` blocks of ``heads`` heads."""

    name: str
    mats: int
    heads: int


class ConvReweight(nn.Module):
    """``W = conv_g(W0_g) + sigmoid(s_g) W0_g`` for every group g (= one head of one of q/k/v): one
    grouped ``conv2d`` over the weight viewed as ``(1, G, d_h, D)`` with G single-channel kernels."""

    def __init__(self, groups: int, kernel_size: int, gate_init: float, init: str = "conv_default") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(groups, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(groups))
        self.gate = nn.Parameter(torch.full((groups,), float(gate_init)))
        if init == "conv_default":
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d(1, 1, k)'s default init, per group
            nn.init.uniform_(self.bias, -1.0 / kernel_size, 1.0 / kernel_size)

    def forward(self, w0: Tensor) -> Tensor:
        g = self.weight.shape[0]
        x = w0.reshape(1, g, w0.shape[0] // g, w0.shape[1])
        out = F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2, groups=g)
        return (out[0] + torch.sigmoid(self.gate)[:, None, None] * x[0]).reshape_as(w0)


class TaskAdapter(nn.Module):
    """Everything task t owns: re-weighting (none for task 0), LayerNorms, pool linear, head."""

    def __init__(self, task: int, projections: list[Projection], norms: list[nn.LayerNorm], pool_dim: int | None,
                 num_features: int, n_classes: int, cfg: ContraconConfig) -> None:
        super().__init__()
        self.reweight = nn.ModuleList(
            ConvReweight(p.mats * p.heads, cfg.kernel_size, cfg.gate_init, cfg.kernel_init) for p in projections
        ) if task and cfg.adapt == "contracon" else None
        self.norms = nn.ModuleList(nn.LayerNorm(n.normalized_shape, eps=n.eps) for n in norms)
        self.pool = None
        if pool_dim is not None:
            self.pool = nn.Linear(pool_dim, 1)
            nn.init.trunc_normal_(self.pool.weight, std=0.02)
            nn.init.zeros_(self.pool.bias)
        self.head = linear_head(num_features, n_classes)


def _layout(backbone: nn.Module, k: int) -> tuple[list[Projection], list[str], str | None]:
    """The re-weighted projections, the per-task LayerNorms (every LayerNorm inside ``blocks``) and
    the sequence-pool linear (``pool``) of ``backbone``."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        raise UserError("contracon needs a transformer backbone with .blocks (e.g. backbone.name: cct_6)")
    projections: list[Projection] = []
    for i, blk in enumerate(blocks):
        attn, heads = getattr(blk, "attn", None), getattr(getattr(blk, "attn", None), "num_heads", None)
        if attn is None or heads is None:
            raise UserError(f"contracon: backbone block {i} has no attn with num_heads")
        names = [("qkv", 3)] if hasattr(attn, "qkv") else [(n, 1) for n in ("q", "k", "v")]
        for n, mats in names:
            w = getattr(attn, n).weight
            d_h = w.shape[0] // (mats * heads)
            if k > min(d_h, w.shape[1]):
                raise UserError(f"contracon.kernel_size={k} is larger than a head's weight slice "
                                f"({d_h} x {w.shape[1]}) in block {i}")
            projections.append(Projection(f"blocks.{i}.attn.{n}.weight", mats, heads))
    norms = [n for n, m in backbone.named_modules() if n.startswith("blocks.") and isinstance(m, nn.LayerNorm)]
    pool = "pool" if isinstance(getattr(backbone, "pool", None), nn.Linear) else None
    return projections, norms, pool


@STRATEGIES.register("contracon")
class ConTraCon(Strategy):
    config_model = ContraconConfig

    def __init__(self, cfg: ContraconConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.backbone = backbone
        self.projections, self.norm_names, self.pool_name = _layout(backbone, cfg.kernel_size)
        modules = dict(backbone.named_modules())
        self._norm_templates = [modules[n] for n in self.norm_names]
        self._pool_dim = backbone.pool.in_features if self.pool_name else None
        self.replaced = {f"{n}.{p}" for n in [*self.norm_names, *([self.pool_name] if self.pool_name else [])]
                         for p in ("weight", "bias")}  # supplied per task; the backbone's own are unused
        for name, p in backbone.named_parameters():
            if name in self.replaced:
                p.requires_grad_(False)
        self.adapters = nn.ModuleList()
        # attention heads of every re-weighted projection, then k: a resume must re-group the same way
        self.register_buffer("layout", torch.tensor([p.heads for p in self.projections] + [cfg.kernel_size]))
        self._cache: dict[int, tuple[tuple[int, ...], dict[str, Tensor]]] = {}

    # --- per-task state -----------------------------------------------------------------------
    def offset(self, task: int) -> int:
        """Head unit of task ``task``'s first class (sessions expose their classes in order)."""
        return sum(a.head.out_features for a in self.adapters[:task])

    def _add_adapter(self, n_classes: int) -> None:
        t = len(self.adapters)
        self.adapters.append(TaskAdapter(t, self.projections, self._norm_templates, self._pool_dim,
                                         self.backbone.num_features, n_classes, self.cfg))

    def on_session_start(self, session: int, loader, ctx: StreamContext) -> None:
        if session > len(self.adapters):
            raise UserError(f"contracon: session {session} started before session {len(self.adapters)}")
        if session == len(self.adapters):
            self._add_adapter(ctx.n_exposed - self.offset(session))
        for p in self.parameters():
            p.requires_grad_(False)
        trained = self.adapters[session]
        if session and self.cfg.adapt == "probe":  # task 0's LayerNorms and pool, frozen; a new head
            trained.norms.load_state_dict(self.adapters[0].norms.state_dict())
            if trained.pool is not None:
                trained.pool.load_state_dict(self.adapters[0].pool.state_dict())
            trained = trained.head
        for p in trained.parameters():
            p.requires_grad_(True)
        if session == 0:  # task 0 trains the whole network from scratch
            for name, p in self.backbone.named_parameters():
                p.requires_grad_(name not in self.replaced)
        self._cache.clear()

    def overrides(self, task: int) -> dict[str, Tensor]:
        """Backbone parameter name -> task ``task``'s tensor (adapted q/k/v, LayerNorms, pool)."""
        a = self.adapters[task]
        caching = not self.training and not torch.is_grad_enabled()
        # in-place changes (optimizer steps, load_state_dict) bump a tensor's version: stale otherwise
        version = tuple(p._version for p in [*a.parameters(), *self.backbone.parameters()]) if caching else ()
        if caching and task in self._cache and self._cache[task][0] == version:
            return self._cache[task][1]
        out: dict[str, Tensor] = {}
        if a.reweight is not None:
            for proj, rw in zip(self.projections, a.reweight, strict=True):
                out[proj.name] = rw(self.backbone.get_parameter(proj.name))
        for name, ln in zip(self.norm_names, a.norms, strict=True):
            out[f"{name}.weight"], out[f"{name}.bias"] = ln.weight, ln.bias
        if a.pool is not None:
            out[f"{self.pool_name}.weight"], out[f"{self.pool_name}.bias"] = a.pool.weight, a.pool.bias
        if caching:
            self._cache[task] = (version, out)  # evaluation: adapted weights once per task, not per batch
        return out

    def task_logits(self, x: Tensor, task: int, embedded: bool = False) -> Tensor:
        """Task ``task``'s own logits ``(B, C_task)`` of images ``x`` (tokens of ``backbone.embed``
        when ``embedded``: that part uses no per-task tensor)."""
        kwargs = {"embedded": True} if embedded else {}
        feats = functional_call(self.backbone, self.overrides(task), (x,), kwargs, strict=False)
        return self.adapters[task].head(feats)

    def train(self, mode: bool = True) -> ConTraCon:
        self._cache.clear()
        return super().train(mode)

    # --- training -----------------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        t = ctx.session
        if t >= len(self.adapters):
            raise UserError("contracon trains per task: it needs regime: sessions")
        local = y - self.offset(t)
        return F.cross_entropy(self.task_logits(x, t), local, label_smoothing=self.cfg.label_smoothing)

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The head may have its own lr (the release trains it with a separate SGD)."""
        heads = {id(p) for a in self.adapters for p in a.head.parameters()}
        train = list(self.trainable_parameters())
        head_lr = self.cfg.head_lr or lr
        return [{"params": [p for p in train if id(p) not in heads], "lr": lr},
                {"params": [p for p in train if id(p) in heads], "lr": head_lr, "weight_decay": 0.0}]

    # --- inference ----------------------------------------------------------------------------
    def _full(self, b: int, device: torch.device) -> Tensor:
        return torch.full((b, self.num_classes), float("-inf"), device=device)

    def predict_task(self, x: Tensor, task: int, ctx: StreamContext) -> Tensor:
        out = self._full(x.shape[0], x.device)
        off = self.offset(task)
        logits = self.task_logits(x, task)
        out[:, off : off + logits.shape[1]] = logits
        return out

    def identify_tasks(self, x: Tensor, ctx: StreamContext) -> tuple[Tensor, list[Tensor]]:
        """Per image, the task whose view-averaged softmax has the lowest entropy, and every task's
        clean-image logits. One forward per task over the clean batch plus its 10 augmented views;
        a backbone with ``embed`` (the CCT: tokenizer + positions, frozen and shared by every task)
        embeds them once and only the encoder runs per task."""
        n_tasks = min(len(self.adapters), ctx.session + 1)
        aug = task_id_views(x, getattr(ctx.augment, "mean", None), getattr(ctx.augment, "std", None))
        views = torch.cat([x, aug])
        embed = getattr(self.backbone, "embed", None)
        if callable(embed):
            tokens = embed(views)
            return entropy_task_id(lambda t: self.task_logits(tokens, t, embedded=True), n_tasks,
                                   x.shape[0], self.cfg.entropy_eps)
        return entropy_task_id(lambda t: self.task_logits(views, t), n_tasks, x.shape[0], self.cfg.entropy_eps)

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        """Class-incremental: the identified task's head on the clean image; -inf elsewhere."""
        tid, clean = self.identify_tasks(x, ctx)
        out = self._full(x.shape[0], x.device)
        for t, c in enumerate(clean):
            rows = tid == t
            off = self.offset(t)
            out[rows, off : off + c.shape[1]] = c[rows]
        return out

    # --- bookkeeping --------------------------------------------------------------------------
    def task_parameter_counts(self) -> list[int]:
        """Parameters each task adds: task 0 the shared network plus its own parts, later tasks
        only their adapter (spec B.2.1). The backbone's unused LayerNorms/pool are not counted."""
        shared = sum(p.numel() for n, p in self.backbone.named_parameters() if n not in self.replaced)
        own = [a.head if t and self.cfg.adapt == "probe" else a for t, a in enumerate(self.adapters)]
        per = [sum(p.numel() for p in m.parameters()) for m in own]  # probe: LN/pool are task 0's copies
        return [shared + per[0], *per[1:]] if per else []

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """Creates the adapters the checkpoint holds (sizes from its heads) before loading. A
        checkpoint made with other attention heads or another kernel size is a ``UserError``: the
        task-0 weights would load (same shapes) but be split into other heads' slices."""
        saved = state_dict.get("layout")
        if saved is not None and saved.tolist() != self.layout.tolist():
            raise UserError(f"contracon checkpoint has {saved[:-1].tolist()} attention heads per projection and "
                            f"kernel_size {int(saved[-1])}; this config has {self.layout[:-1].tolist()} and "
                            f"{int(self.layout[-1])}")
        if saved is None:  # a checkpoint from before the layout was recorded
            state_dict = {**state_dict, "layout": self.layout}
        heads = {int(m.group(1)): v.shape[0] for k, v in state_dict.items()
                 if (m := re.fullmatch(r"adapters\.(\d+)\.head\.weight", k))}
        if sorted(heads) != list(range(len(heads))):
            raise UserError(f"contracon state has adapters {sorted(heads)}, not 0..{len(heads) - 1}")
        while len(self.adapters) < len(heads):
            self._add_adapter(heads[len(self.adapters)])
        self._cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
