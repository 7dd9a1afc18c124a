"""One independent network per task: the task-incremental upper bound of ConTraCon's comparison
(issue 9), at T times the parameters. Task t trains a fresh copy of the backbone, from the same
initial weights as every other task (the backbone as the run built it, so one seed gives one
initialisation), plus its own head, on task t's data only; nothing is shared or frozen across tasks.

- TIL (``predict_task``): task t's own network and head.
- CIL (``predict``): the task is found as ConTraCon finds it (spec B.3): each task's network scores
  the clean image and its 10 fixed augmented views, the task whose view-averaged softmax has the
  lowest entropy wins, and its head classifies the clean image. The networks never saw each
  other's classes, so this is the same entropy rule applied to T separate models.

Sessions regime only. For a fair upper bound every task should get the task-0 training schedule
(``sessions.incremental`` = ``sessions.base``): each network starts from scratch.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.contracon_views import entropy_task_id, task_id_views
from clplat.strategies.heads import linear_head


class IndependentPerTaskConfig(StrategyConfig):
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="as contracon's (the release's LS-CE)")
    entropy_eps: float = Field(1e-4, gt=0, description="H = -sum p log(p + eps), as contracon's")


@STRATEGIES.register("independent_per_task")
class IndependentPerTask(Strategy):
    config_model = IndependentPerTaskConfig

    def __init__(self, cfg: IndependentPerTaskConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        # the initial weights every task's network starts from; a list, so not a submodule (not
        # trained, not in state_dict: the seeded constructor rebuilds it on a resume)
        self._template = [copy.deepcopy(backbone).requires_grad_(False)]
        self.nets = nn.ModuleList()
        self.heads = nn.ModuleList()

    def offset(self, task: int) -> int:
        """Head unit of task ``task``'s first class (sessions expose their classes in order)."""
        return sum(h.out_features for h in self.heads[:task])

    def _add_task(self, n_classes: int) -> None:
        net = copy.deepcopy(self._template[0])
        self.nets.append(net)
        self.heads.append(linear_head(net.num_features, n_classes))

    def on_session_start(self, session: int, loader, ctx: StreamContext) -> None:
        if session > len(self.nets):
            raise UserError(f"independent_per_task: session {session} started before session {len(self.nets)}")
        if session == len(self.nets):
            self._add_task(ctx.n_exposed - self.offset(session))
        for p in self.parameters():
            p.requires_grad_(False)
        for p in [*self.nets[session].parameters(), *self.heads[session].parameters()]:
            p.requires_grad_(True)

    def task_logits(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](self.nets[task](x))

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        t = ctx.session
        if t >= len(self.nets):
            raise UserError("independent_per_task trains per task: it needs regime: sessions")
        return F.cross_entropy(self.task_logits(x, t), y - self.offset(t), label_smoothing=self.cfg.label_smoothing)

    def _full(self, b: int, device: torch.device) -> Tensor:
        return torch.full((b, self.num_classes), float("-inf"), device=device)

    def predict_task(self, x: Tensor, task: int, ctx: StreamContext) -> Tensor:
        out = self._full(x.shape[0], x.device)
        logits = self.task_logits(x, task)
        out[:, self.offset(task) : self.offset(task) + logits.shape[1]] = logits
        return out

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        """Class-incremental: the lowest-entropy task's head on the clean image; -inf elsewhere."""
        views = torch.cat([x, task_id_views(x, getattr(ctx.augment, "mean", None), getattr(ctx.augment, "std", None))])
        n_tasks = min(len(self.nets), ctx.session + 1)
        tid, clean = entropy_task_id(lambda t: self.task_logits(views, t), n_tasks, x.shape[0], self.cfg.entropy_eps)
        out = self._full(x.shape[0], x.device)
        for t, c in enumerate(clean):
            rows, off = tid == t, self.offset(t)
            out[rows, off : off + c.shape[1]] = c[rows]
        return out

    def task_parameter_counts(self) -> list[int]:
        """Every task's whole network plus its head."""
        return [sum(p.numel() for p in [*n.parameters(), *h.parameters()]) for n, h in zip(self.nets, self.heads)]

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """Creates the networks the checkpoint holds (head sizes from it) before loading."""
        heads = {int(m.group(1)): v.shape[0] for k, v in state_dict.items()
                 if (m := re.fullmatch(r"heads\.(\d+)\.weight", k))}
        if sorted(heads) != list(range(len(heads))):
            raise UserError(f"independent_per_task state has heads {sorted(heads)}, not 0..{len(heads) - 1}")
        while len(self.nets) < len(heads):
            self._add_task(heads[len(self.nets)])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
