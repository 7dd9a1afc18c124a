"""PFNR: one video per session learned by a winning subnetwork of a shared NeRV (spec A2-A5).

Session ``s`` trains ``head_s(body(coords; W * m_s))`` where ``m_s = top-c%(scores)`` per tensor
(straight-through gradient to the scores). Weights any earlier session kept (the union ``M``) are
frozen: the forward uses their detached values, so their gradient is exactly 0 and a fresh Adam
(per session, no weight decay) never moves them; their checksum is verified before every update and
after the last one. At the session's end ``m_s`` is stored bit-packed (a buffer, so it is in every
checkpoint) and decoding video ``s`` later uses exactly that mask and head: lossless by construction.

Baselines with the same code: ``masks: false`` is a dense NeRV fine-tuned session after session
(it forgets; heads per session); ``per_video: true`` is one dense NeRV per video. The FSO layer is a
backbone option (``backbone.kwargs.fso_block``); without it this is WSN on NeRV.

Inputs: the engine passes frames ``x (B, 3, H, W)`` and exposure indices ``y`` = global frame ids
(``dataset: videos``); ``offsets`` (a buffer filled at each session start) turn them into frame
positions ``t / T_video``. The session position is ``(s + 1) / (t_max + 1)``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from clplat.errors import UserError
from clplat.pfnr.quality import fusion_loss
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.subnet import checksum, pack_bits, packed_size, topc_mask, unpack_bits


class PfnrConfig(StrategyConfig):
    c: float = Field(30.0, gt=0, le=100, description="kept percentage of every masked tensor per session")
    masks: bool = Field(True, description="false: dense NeRV fine-tuned over sessions (baseline)")
    per_video: bool = Field(False, description="one dense NeRV per video (baseline; needs masks: false)")
    t_max: int = Field(8, ge=1, description="sessions the session encoding and heads are built for")
    reinit_scores: bool = Field(False, description="re-initialise the scores at every session start")
    l1_weight: float = Field(0.7, ge=0, le=1, description="loss = w L1 + (1 - w)(1 - SSIM)")
    adam_beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 of every group (0.5 as in PFNR)")
    decode_batch: int = Field(16, ge=1, description="frames per decoding batch (in-run and CLI alike)")

    @model_validator(mode="after")
    def _modes(self) -> PfnrConfig:
        if self.per_video and self.masks:
            raise ValueError("per_video needs masks: false")
        return self


def _key(name: str) -> str:
    return name.replace(".", "__")


@STRATEGIES.register("pfnr")
class PFNR(Strategy):
    config_model = PfnrConfig

    def __init__(self, cfg: PfnrConfig, backbone: nn.Module, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        if not hasattr(backbone, "subnet_tensors"):
            raise UserError("strategy pfnr needs backbone.name: nerv")
        self.body = backbone
        if cfg.per_video:
            extra = [copy.deepcopy(backbone) for _ in range(cfg.t_max - 1)]
            for b in extra:  # each video's model starts from its own init
                for m in b.modules():
                    if hasattr(m, "reset_parameters") and m is not b:
                        m.reset_parameters()
            self.bodies = nn.ModuleList([backbone, *extra])
        self.heads = nn.ModuleList(nn.Conv2d(backbone.num_features, 3, 1, bias=False) for _ in range(cfg.t_max))
        self.register_buffer("offsets", torch.zeros(cfg.t_max + 1, dtype=torch.long))
        self.register_buffer("sessions_done", torch.zeros((), dtype=torch.long))
        self.masked = dict(backbone.subnet_tensors()) if cfg.masks else {}
        params = dict(backbone.named_parameters())
        self.scores = nn.ParameterDict()
        for name in self.masked:
            w = params[name]
            self.scores[_key(name)] = nn.Parameter(self._init_scores(w.shape))
            self.register_buffer(f"maskbits__{_key(name)}", torch.zeros(cfg.t_max, packed_size(w.numel()),
                                                                      dtype=torch.uint8))
        self._frozen: dict[str, Tensor] | None = None  # name -> bool mask of weights earlier sessions use
        self._frozen_sums: dict[str, int] = {}

    @staticmethod
    def _init_scores(shape: torch.Size) -> Tensor:
        s = torch.empty(shape)
        nn.init.kaiming_uniform_(s.view(shape[0], -1) if len(shape) > 1 else s.view(1, -1), a=math.sqrt(5))
        return s

    # --- masks ------------------------------------------------------------------------------------
    def stored_mask(self, name: str, session: int) -> Tensor:
        shape = dict(self.body.named_parameters())[name].shape
        return unpack_bits(getattr(self, f"maskbits__{_key(name)}")[session], shape)

    def frozen_masks(self, upto: int) -> dict[str, Tensor]:
        """Union of the stored masks of sessions ``< upto`` (the weights those sessions use)."""
        out = {}
        for name in self.masked:
            shape = dict(self.body.named_parameters())[name].shape
            union = torch.zeros(shape, dtype=torch.bool)
            for s in range(upto):
                union |= self.stored_mask(name, s)
            out[name] = union
        return out

    def _frozen_now(self, session: int) -> dict[str, Tensor]:
        if self._frozen is None:  # first use in this process (also after a resume)
            self._frozen = self.frozen_masks(session)
            params = dict(self.body.named_parameters())
            self._frozen_sums = {n: checksum(params[n][m]) for n, m in self._frozen.items()}
        return self._frozen

    def verify_frozen(self) -> None:
        """The weights of earlier sessions are bit-identical to the session start (after each step)."""
        if self._frozen is None:
            return
        params = dict(self.body.named_parameters())
        for n, m in self._frozen.items():
            if checksum(params[n][m]) != self._frozen_sums[n]:
                raise UserError(f"pfnr: frozen weights of earlier sessions changed in '{n}' after an optimizer "
                                "step (use weight_decay: 0; the subnetwork guarantee is broken)")

    def masked_weights(self, session: int, train: bool) -> dict[str, Tensor]:
        """Body weights of ``session``: training masks are ``top-c%(scores)`` (STE), frozen weights detached;
        decoding uses the stored mask."""
        params = dict(self.body.named_parameters())
        out = {}
        frozen = self._frozen_now(session) if train else {}
        for name, use_abs in self.masked.items():
            w = params[name]
            if train:
                w = torch.where(frozen[name], w.detach(), w)
                out[name] = w * topc_mask(self.scores[_key(name)], self.cfg.c, use_abs)
            else:
                out[name] = w * self.stored_mask(name, session).to(w.dtype)
        return out

    # --- the model --------------------------------------------------------------------------------
    def coords(self, session: int, frames: Tensor) -> Tensor:
        """``(B, 2)``: frame position ``t / T`` of the session's video and the session position."""
        n = int(self.offsets[session + 1] - self.offsets[session])
        t = frames.float() / max(n, 1)
        return torch.stack([t, torch.full_like(t, (session + 1) / (self.cfg.t_max + 1))], dim=1)

    def render(self, session: int, frames: Tensor, train: bool) -> Tensor:
        """Frames ``t`` of video ``session`` -> ``(B, 3, H, W)`` in [0, 1]."""
        coords = self.coords(session, frames.to(self.offsets.device))
        if self.cfg.per_video:
            feats = self.bodies[session](coords)
        elif self.masked:
            feats = functional_call(self.body, self.masked_weights(session, train), (coords,), strict=False)
        else:
            feats = self.body(coords)
        return (torch.tanh(self.heads[session](feats)) + 1.0) / 2.0

    @torch.no_grad()
    def decode(self, session: int) -> Tensor:
        """Every frame of video ``session`` from the stored state: float ``(T, 3, H, W)``."""
        n = int(self.offsets[session + 1] - self.offsets[session])
        frames = torch.arange(n)
        was = self.training
        self.eval()
        try:
            out = [self.render(session, frames[i:i + self.cfg.decode_batch], train=False)
                   for i in range(0, n, self.cfg.decode_batch)]
        finally:
            self.train(was)
        return torch.cat(out)

    @classmethod
    def session_experiment(cls) -> type:
        """The engine's hook for non-classification strategies: decode videos, PSNR/MS-SSIM matrices."""
        from clplat.pfnr.experiment import VideoSessionExperiment

        return VideoSessionExperiment

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        s = ctx.session
        if int(self.offsets[s + 1]) <= int(self.offsets[s]):
            raise UserError("strategy pfnr runs with regime: sessions, data.dataset: videos and "
                            "scenario.kind: video_sessions")
        self.verify_frozen()  # the previous optimizer step left earlier sessions' weights alone
        pred = self.render(s, y - self.offsets[s], train=True)
        return fusion_loss(pred, x, self.cfg.l1_weight)

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        raise UserError("pfnr is a video representation: it decodes frames, it does not classify")

    # --- session hooks ----------------------------------------------------------------------------
    def on_session_start(self, session: int, loader: DataLoader, ctx: StreamContext) -> None:
        if session >= self.cfg.t_max:
            raise UserError(f"session {session} exceeds pfnr.t_max={self.cfg.t_max}")
        self.offsets[session + 1] = ctx.n_exposed
        if self.masked and self.cfg.reinit_scores and session > 0:
            for p in self.scores.values():
                p.data.copy_(self._init_scores(p.shape))
        self._frozen = None
        self._frozen_now(session)

    def on_session_end(self, session: int, loader: DataLoader, ctx: StreamContext) -> None:
        self.verify_frozen()  # after the session's last step
        with torch.no_grad():
            for name, use_abs in self.masked.items():
                mask = topc_mask(self.scores[_key(name)], self.cfg.c, use_abs).bool()
                getattr(self, f"maskbits__{_key(name)}")[session] = pack_bits(mask)
        self.sessions_done.fill_(session + 1)
        self._frozen = None

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.trainable_parameters()), "lr": lr, "betas": (self.cfg.adam_beta1, 0.999)}]

    # --- size ---------------------------------------------------------------------------------------
    def model_bits(self, sessions: int, weight_bits: int = 32) -> int:
        """Bits to decode ``sessions`` videos: used weights at ``weight_bits`` + 1 bit per masked weight
        per session (the packed masks) + the heads. Dense baselines: every weight of the model(s) used."""
        head = sum(p.numel() for p in self.heads[0].parameters())
        body = sum(p.numel() for p in self.body.parameters())
        if self.cfg.per_video:
            return weight_bits * sessions * (body + head)
        if not self.masked:
            return weight_bits * (body + sessions * head)
        union = self.frozen_masks(sessions)
        used = sum(int(m.sum()) for m in union.values())
        masked_total = sum(m.numel() for m in union.values())
        dense = body - masked_total  # tensors outside the subnetwork (none in NeRV)
        return weight_bits * (used + dense + sessions * head) + sessions * masked_total

    def mask_bytes(self) -> tuple[int, int]:
        """(bytes of all stored masks bit-packed, bytes of the same masks as ``torch.bool``)."""
        packed = sum(getattr(self, f"maskbits__{_key(n)}").numel() for n in self.masked)
        params = dict(self.body.named_parameters())
        return packed, self.cfg.t_max * sum(params[n].numel() for n in self.masked)
