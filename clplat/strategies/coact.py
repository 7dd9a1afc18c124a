"""CoACT (Roy et al., TMLR 2025): few-shot class-incremental tuning of a pretrained ViT.

Session 0 (*asynchronous contrastive tuning*): the student is the ViT with peft LoRA on q and v
plus a bias-free linear head whose base rows start as class-mean prototypes; the teacher is a
LoRA-free copy of the ViT that follows the student's non-LoRA weights by EMA (momentum 0.999).
Loss = CE(student(view 1)) + SupCon([student(view 1), teacher(view 2)], tau 0.07).
*Controlled fine-tuning*: from epoch ``ft_start_epoch`` the blocks from ``ft_start_layer`` on (and
the final norm) train too, at ``lr * encoder_lr_factor`` (their optimizer group exists from the
start, frozen until then). Sessions >= 1: the new classes' head rows are written as class means of
the current model's features; with ``incremental_tuning`` (and epochs > 0) the head and/or LoRA
train with CE + SupCon([student, frozen session-0 teacher, pretrained model]) + MSE to the
session-0 model's logits on the base classes (detached). The head is the release's dot product
or (``classifier: cosine``) a scaled cosine; ``prototype_refresh`` rewrites the base rows as class
means after session 0. Spec: shared/specs/coact_contracon.md part A; deviations from the release
and why the CPU configs use the cosine head: docs/coact.md.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from clplat.backbones.lora import LoraSpec, add_lora, base_name, block_index, is_lora, split_qkv
from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.fscil_common import class_means, ema_update_, supcon_loss, write_prototypes

_AFTER_BLOCKS = ("norm.", "fc_norm.", "attn_pool.", "head")  # parameters behind the last block


class CoactConfig(StrategyConfig):
    lora: LoraSpec = Field(default_factory=LoraSpec)
    pooler_file: str | None = Field(None, description="local .npz with the in21k checkpoint's pre_logits "
                                    "(HF's pooler): feature = tanh(Linear(CLS)) as CoACT's pooler_output")
    use_contrastive: bool = Field(True, description="SupCon between student and teacher views")
    use_ema_teacher: bool = Field(True, description="teacher follows the student's non-LoRA weights")
    momentum: float = Field(0.999, ge=0, le=1)
    tau: float = Field(0.07, gt=0)
    base_tau: float = Field(0.07, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(1.0, ge=0)
    controlled_ft: bool = Field(True, description="unfreeze late blocks during session 0")
    ft_start_layer: int = Field(-1, ge=-1, description="first block to unfreeze; -1 = all incl. embeddings")
    ft_start_epoch: int = Field(0, ge=0)
    encoder_lr_factor: float = Field(0.01, ge=0)
    prototype_init: bool = Field(True, description="session-0 head rows start as class means")
    prototype_refresh: bool = Field(False, description="after session 0, base rows := class means of the "
                                    "tuned model (all rows then share one scale)")
    classifier: Literal["dot", "cosine"] = Field("dot", description="dot: the release's plain linear head; "
                                                 "cosine: cosine_scale * cos(feature, row)")
    cosine_scale: float = Field(16.0, gt=0)
    incremental_tuning: bool = Field(True, description="train in sessions >= 1 (needs their epochs > 0)")
    incremental_params: Literal["classifier", "lora", "classifier+lora"] = "classifier+lora"
    use_consistency: bool = Field(True, description="MSE to the session-0 model's base-class logits")
    consistency_weight: float = Field(1.0, ge=0)

    def trains_after_session_0(self) -> bool:
        return self.incremental_tuning


def load_pooler(path: str, dim: int) -> nn.Sequential:
    """HF ``ViTModel``'s pooler, ``tanh(Linear(dim, dim))``, from the ``pre_logits`` weights of an
    original Google ViT ``.npz`` (timm's loader skips them). Set as the timm ViT's ``head``, it acts
    on the CLS token after the final LayerNorm, exactly where HF applies it."""
    import numpy as np

    from clplat.backbones.build import resolve_weights_path

    try:
        p = resolve_weights_path(path)
    except UserError:
        raise UserError(f"coact.pooler_file not found: {path}") from None
    try:
        with np.load(p) as w:
            kernel, bias = w["pre_logits/kernel"], w["pre_logits/bias"]
    except KeyError:
        raise UserError(f"coact.pooler_file {p}: no pre_logits/kernel and pre_logits/bias "
                        "(only the original in21k checkpoints have the pooler)") from None
    except Exception as err:  # not an npz, truncated
        raise UserError(f"coact.pooler_file {p}: cannot read ({type(err).__name__}: {err})") from None
    if kernel.shape != (dim, dim) or bias.shape != (dim,):
        raise UserError(f"coact.pooler_file {p}: pre_logits has shape {kernel.shape}, the backbone "
                        f"has width {dim}")
    dense = nn.Linear(dim, dim)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
        dense.bias.copy_(torch.from_numpy(bias))
    return nn.Sequential(dense, nn.Tanh())


@STRATEGIES.register("coact")
class Coact(Strategy):
    config_model = CoactConfig
    augments_itself: ClassVar[bool] = True  # two views per sample
    trains_in: ClassVar[str] = "coact with incremental_tuning: false"  # for the error message

    def __init__(self, cfg: CoactConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        if cfg.pooler_file:
            backbone.head = load_pooler(cfg.pooler_file, int(backbone.num_features))
        pretrained = split_qkv(backbone)
        depth = len(pretrained.blocks)
        if cfg.controlled_ft and cfg.ft_start_layer >= depth:
            raise UserError(f"coact.ft_start_layer {cfg.ft_start_layer}: the backbone has blocks 0..{depth - 1}")
        frozen = copy.deepcopy(pretrained).requires_grad_(False)
        self.backbone = add_lora(pretrained, cfg.lora)
        dim = int(self.backbone.num_features)
        self.head = nn.Linear(dim, num_classes, bias=False)
        self.teacher = copy.deepcopy(frozen) if cfg.use_contrastive else None
        inc = cfg.incremental_tuning
        # session-0 copies used by the incremental losses; filled when session 1 starts
        self.base_backbone = copy.deepcopy(self.backbone).requires_grad_(False) if inc and cfg.use_consistency else None
        self.base_head = copy.deepcopy(self.head).requires_grad_(False) if self.base_backbone is not None else None
        self.base_teacher = copy.deepcopy(frozen) if inc and cfg.use_contrastive else None
        self.ptm = frozen if inc and cfg.use_contrastive else None
        self.register_buffer("n_base", torch.tensor(0))
        self.register_buffer("base_taken", torch.tensor(False))
        self.register_buffer("prototype_session", torch.tensor(-1))  # last session whose rows were written
        self._trainable_for: tuple[int, int] | None = None

    def train(self, mode: bool = True) -> Coact:
        """Teachers and session-0 copies are fixed functions: always eval (no LoRA dropout)."""
        super().train(mode)
        for m in (self.teacher, self.base_backbone, self.base_teacher, self.ptm):
            if m is not None:
                m.eval()
        return self

    # --- what trains when ---------------------------------------------------------------------
    def _unfrozen_by_ft(self, name: str) -> bool:
        if self.cfg.ft_start_layer < 0:
            return True
        block = block_index(name)
        return block >= self.cfg.ft_start_layer if block is not None else name.startswith(_AFTER_BLOCKS)

    def _set_trainable(self, session: int, epoch: int) -> None:
        """A pure function of (session, epoch), so a resumed run trains the same parameters."""
        cfg = self.cfg
        if session == 0:
            ft = cfg.controlled_ft and epoch >= cfg.ft_start_epoch
            for name, p in self.backbone.named_parameters():
                p.requires_grad_(is_lora(name) or (ft and self._unfrozen_by_ft(name)))
            self.head.weight.requires_grad_(True)
        else:
            tune = cfg.incremental_tuning
            for name, p in self.backbone.named_parameters():
                p.requires_grad_(tune and is_lora(name) and "lora" in cfg.incremental_params)
            self.head.weight.requires_grad_(tune and "classifier" in cfg.incremental_params)
        self._trainable_for = (session, epoch)

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """LoRA + head at ``lr``; every other student weight at ``lr * encoder_lr_factor``
        (frozen until controlled fine-tuning unfreezes it; the optimizer skips grad-less params)."""
        fast = [p for n, p in self.backbone.named_parameters() if is_lora(n)] + [self.head.weight]
        slow = [p for n, p in self.backbone.named_parameters() if not is_lora(n)]
        return [{"params": fast, "lr": lr}, {"params": slow, "lr": lr * self.cfg.encoder_lr_factor}]

    # --- session hooks ------------------------------------------------------------------------
    def on_session_start(self, session: int, loader, ctx: StreamContext) -> None:
        if session == 0:
            self.n_base.fill_(ctx.n_exposed)
        elif not bool(self.base_taken):
            self._take_base_copies()
        if int(self.prototype_session) < session and (session > 0 or self.cfg.prototype_init):
            self.write_prototypes(loader, ctx)
        self.prototype_session.fill_(session)
        self._set_trainable(session, 0)

    def on_epoch_start(self, session: int, epoch: int, ctx: StreamContext) -> None:
        self._set_trainable(session, epoch)

    def on_session_end(self, session: int, loader, ctx: StreamContext) -> None:
        if session == 0 and self.cfg.prototype_refresh:
            self.write_prototypes(loader, ctx)

    @torch.no_grad()
    def _take_base_copies(self) -> None:
        if self.base_backbone is not None:
            self.base_backbone.load_state_dict(self.backbone.state_dict())
            self.base_head.load_state_dict(self.head.state_dict())
        if self.base_teacher is not None:
            self.base_teacher.load_state_dict(self.teacher.state_dict())
        self.base_taken.fill_(True)

    def write_prototypes(self, loader, ctx: StreamContext) -> None:
        """Head rows of the session's classes := mean un-normalised feature (one loader pass,
        un-augmented inputs, model in eval mode)."""
        was_training = self.training
        self.eval()
        means, counts = class_means(self.backbone, loader, ctx, self.num_classes,
                                    self.head.in_features, self.head.weight.device)
        write_prototypes(self.head.weight.data, means, counts)
        self.train(was_training)

    # --- losses -------------------------------------------------------------------------------
    def logits(self, h: Tensor, head: nn.Linear | None = None) -> Tensor:
        w = (head or self.head).weight
        if self.cfg.classifier == "dot":
            return h @ w.T
        return self.cfg.cosine_scale * F.normalize(h, dim=-1) @ F.normalize(w, dim=-1).T

    def _ema_step(self) -> None:
        """theta_teacher <- m theta_teacher + (1 - m) theta_student over the teacher's weights
        (the student's un-adapted weights of the same name; LoRA is never merged in)."""
        student = {base_name(n): p for n, p in self.backbone.named_parameters() if not is_lora(n)}
        pairs = [(t, student[n]) for n, t in self.teacher.named_parameters()]
        ema_update_([t for t, _ in pairs], [s.detach() for _, s in pairs], self.cfg.momentum)

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> dict[str, Tensor]:
        session = getattr(ctx, "session", 0)
        if self._trainable_for is None or self._trainable_for[0] != session:
            self._set_trainable(session, getattr(ctx, "epoch", 0))
        if session == 0:
            return self._base_loss(x, y, ctx)
        if not self.cfg.incremental_tuning:
            raise UserError(f"{self.trains_in} trains only in session 0: set sessions.incremental.epochs to 0")
        return self._incremental_loss(x, y, ctx)

    def _base_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> dict[str, Tensor]:
        cfg = self.cfg
        v1 = ctx.augment(x)
        if self.teacher is not None and cfg.use_ema_teacher:
            self._ema_step()
        h = self.backbone(v1)
        ce = F.cross_entropy(ctx.mask_logits(self.logits(h)), y)
        out = {"ce": ce.detach()}
        loss = cfg.ce_weight * ce
        if self.teacher is not None:
            with torch.no_grad():
                zk = F.normalize(self.teacher(ctx.augment(x)), dim=-1)
            con = supcon_loss(torch.cat([F.normalize(h, dim=-1), zk]), torch.cat([y, y]), cfg.tau, cfg.base_tau)
            loss = loss + cfg.contrastive_weight * con
            out["supcon"] = con.detach()
        out["loss"] = loss
        return out

    def _incremental_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> dict[str, Tensor]:
        cfg = self.cfg
        v1 = ctx.augment(x)
        h = self.backbone(v1)
        logits = self.logits(h)
        ce = F.cross_entropy(ctx.mask_logits(logits), y)
        loss, out = cfg.ce_weight * ce, {"ce": ce.detach()}
        if self.base_teacher is not None:
            v2 = ctx.augment(x)
            with torch.no_grad():
                zb = F.normalize(self.base_teacher(v2), dim=-1)
                zp = F.normalize(self.ptm(v2), dim=-1)
            con = supcon_loss(torch.cat([F.normalize(h, dim=-1), zb, zp]), torch.cat([y, y, y]),
                              cfg.tau, cfg.base_tau)
            loss = loss + cfg.contrastive_weight * con
            out["supcon"] = con.detach()
        if self.base_backbone is not None:
            n = int(self.n_base)
            with torch.no_grad():
                base_logits = self.logits(self.base_backbone(v1), self.base_head)[:, :n]
            cons = F.mse_loss(logits[:, :n], base_logits)
            loss = loss + cfg.consistency_weight * cons
            out["consistency"] = cons.detach()
        out["loss"] = loss
        return out

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        return self.logits(self.backbone(x))
