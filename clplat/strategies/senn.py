"""Self-expanding CNNs (SENN, Mitchell et al. 2023; SECNN, Appolinary et al. 2024; issue 10):
a cross-entropy classifier on an ``expandable_cnn`` backbone that adds width and depth when the
natural expansion score says so, keeping the function and the optimizer state (docs/senn.md).

Sessions regime only: the i.i.d. setting is one session of many epochs; in class-incremental
sessions the (masked) head covers new classes as usual and the score decides whether the body grows.
At the first update of an epoch (``after_update``, which the sessions engine calls after every
optimizer step) a decision may run on a batch drawn from a pool of the session's training samples,
never the training batch whose statistics just updated the curvature:

* ``senn``: every block's width candidate (best ``width_step`` of ``proposals`` random fan-ins,
  scored jointly) passes if ``d_eta'/eta_layer > tau_width`` and ``d_eta'/nu^2 > abs_thresh`` and
  ``d_eta'/nu^2`` is ``noise_z`` null standard deviations above zero (a significance test); its
  depth candidate (identity block after it) if the same holds for ``d_eta'/depth_cost``; the best
  passing ones by ``d_eta'/nu^2`` are applied (``events_per_decision``); scores are cross-fitted on
  the decision batch's two halves (``cross_fit``, unbiased when nothing is to be gained);
* ``secnn``: per stage, widen every block by ``width_step`` or insert one identity block at its end;
  the better of the best of each kind is applied if ``(eta_c + d_eta') exp(-lambda dp^2) / eta_c >
  secnn_tau`` (eta_c: the sum of all layers' eta; plain, not cross-fitted, scores as SECNN);
* ``random``: ``random_width`` / ``random_depth`` events spread uniformly over ``random_span``
  decision opportunities, at uniformly drawn places (the random-growth baseline);
* ``fixed``: never grows (fixed-small and, with ``backbone.kwargs.arch_file``, fixed-large baselines).

Decisions run at epochs ``warmup``, ``warmup + decide_every``, ... of a session, then ``cooldown``
epochs without a decision after a growth; a growth that would pass ``max_params`` is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from clplat.backbones.expandable_cnn import ExpandableCNN, normalise_arch
from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext
from clplat.strategies.heads import linear_head
from clplat.strategies.senn_growth import migrate_optimizer
from clplat.strategies.senn_score import (
    Candidate,
    CurvatureTracker,
    ScoreSettings,
    depth_params,
    score_block,
    width_params,
)

EVENT_FIELDS = ("step", "session", "epoch", "stage", "block", "kind", "params_added", "score", "params")
KIND_CODE = {"width": 0.0, "depth": 1.0}


class SennConfig(StrategyConfig):
    mode: Literal["senn", "secnn", "random", "fixed"] = "senn"
    tau_width: float = Field(0.03, gt=0, description="width: d_eta'/eta_layer must exceed this")
    abs_thresh: float = Field(2.5e-3, ge=0, description="and d_eta'/||dL/dy||^2 this")
    depth_cost: float = Field(20.0, ge=1, description="depth: d_eta' is divided by this first (kappa)")
    secnn_tau: float = Field(2.0, gt=1, description="secnn: eta_new/eta_c must exceed this")
    secnn_lambda: float = Field(1e-7, ge=0, description="secnn: eta_new *= exp(-lambda * dparams^2)")
    width_step: int = Field(4, ge=1, description="channels added by one width event")
    proposals: int = Field(32, ge=1, description="random fan-in proposals scored per block")
    max_width: int = Field(256, ge=1, description="no block grows beyond this many channels")
    max_blocks_per_stage: int = Field(4, ge=1)
    max_params: int | None = Field(None, ge=1, description="parameter budget of the backbone (None: none)")
    cooldown: int = Field(10, ge=0, description="epochs without a decision after a growth")
    decide_every: int = Field(1, ge=1, description="decisions only at epochs warmup, warmup + this, ... of a "
                              "session (SENN considers growth every `cooldown` epochs); 1: every epoch")
    warmup: int = Field(1, ge=0, description="epochs of a session before its first decision")
    events_per_decision: int = Field(1, ge=1)
    curvature_every: int = Field(5, ge=1, description="update the running factors every this many steps")
    curvature_decay: float = Field(0.8, gt=0, lt=1, description="running-average decay per factor update")
    curvature_window: int = Field(0, ge=0, description="estimate the factors only in the this many epochs "
                                  "before each decision opportunity, restarted at the window's start (the "
                                  "decision reads nothing older); 0: all the time")
    max_positions: int = Field(8192, ge=64, description="images of a batch used for factors: this / positions")
    decision_batch: int = Field(128, ge=2)
    decision_positions: int = Field(2**17, ge=64, description="decision images used: this / input positions")
    decision_pool: int = Field(512, ge=2, description="session samples kept for drawing decision batches")
    damping_a: float = Field(1e-3, gt=0, le=10)
    damping_g: float = Field(0.1, gt=0, le=10)
    cross_fit: bool = Field(True, description="score = cross product of the decision batch's two halves")
    noise_z: float = Field(2.0, ge=0, description="and d_eta'/||dL/dy||^2 this many null std (sqrt(#new "
                           "weights)/(decision_batch/2)) above 0; 0: off")
    spatial: Literal["correlated", "independent"] = Field("correlated", description="KFC: positions' "
                                                          "derivatives fully correlated (x1) or independent (xT)")
    random_width: int = Field(0, ge=0)
    random_depth: int = Field(0, ge=0)
    random_span: int = Field(1, ge=1, description="random: decision opportunities to spread events over")

    @model_validator(mode="after")
    def _check(self) -> SennConfig:
        if self.decision_batch > self.decision_pool:
            raise ValueError("decision_batch must not exceed decision_pool")
        return self


def _encode(obj: Any) -> Tensor:
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def _decode(t: Tensor) -> Any:
    return json.loads(bytes(t.tolist()).decode())


def grown_from(start: dict[str, Any], arch: dict[str, Any]) -> bool:
    """Could ``arch`` have grown from ``start`` (same stem; per stage the same base blocks, none
    narrower; any number of inserted identity blocks)?"""
    if any(start[k] != arch[k] for k in ("in_channels", "num_features", "activation")):
        return False
    if len(start["stages"]) != len(arch["stages"]):
        return False
    for st0, st in zip(start["stages"], arch["stages"], strict=True):
        base = [blk["width"] for blk in st if blk["kind"] == "base"]
        want = [blk["width"] for blk in st0 if blk["kind"] == "base"]
        if len(base) != len(want) or any(w < w0 for w, w0 in zip(base, want, strict=True)):
            return False
    return True


@STRATEGIES.register("senn")
class Senn(Strategy):
    config_model = SennConfig

    def __init__(self, cfg: SennConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        if not isinstance(backbone, ExpandableCNN):
            raise UserError(f"strategy senn needs backbone.name: expandable_cnn (got {type(backbone).__name__})")
        if cfg.max_params is not None and cfg.max_params < backbone.num_params():
            raise UserError(f"senn.max_params ({cfg.max_params}) is below the starting backbone's "
                            f"{backbone.num_params()} parameters")
        self.backbone = backbone
        self.head = linear_head(backbone.num_features, num_classes)
        self.start_arch = backbone.describe()
        self.curv = nn.Module()  # running curvature factors (buffers, so they checkpoint)
        self.tracker = CurvatureTracker(backbone, self.curv, cfg.curvature_decay, cfg.max_positions)
        self.register_buffer("arch", _encode(self.start_arch))
        self.register_buffer("pool_x", torch.zeros(0, *input_shape))
        self.register_buffer("pool_y", torch.zeros(0, dtype=torch.long))
        self.register_buffer("events", torch.zeros(0, len(EVENT_FIELDS), dtype=torch.float64))
        self.register_buffer("history", torch.zeros(0, 4, dtype=torch.float64))  # step, session, epoch, params
        # updates, epoch key (session, epoch), epochs since growth, decision opportunities, random events
        # done, key of the curvature window being filled (session, decision epoch)
        self.register_buffer("counters", torch.tensor([0, -1, -1, 10**9, 0, 0, -1], dtype=torch.long))

    # --- training ---------------------------------------------------------------------------------
    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def _nu2_hook(self, g: Tensor) -> None:
        self.tracker.nu2 = max(float((g * g.shape[0]).pow(2).sum(1).mean()), 1e-30)

    def _next_decision(self, ctx: StreamContext) -> int:
        """The epoch of this session's next decision opportunity if nothing grows first (this
        epoch's counts while its first update, where the decision runs, has not happened yet)."""
        c, cfg = self.counters, self.cfg
        passed = (int(c[1]), int(c[2])) == (ctx.session, ctx.epoch)
        since = int(c[3]) + (0 if passed else 1)  # epochs since growth, this one included
        first = max(ctx.epoch + int(passed), cfg.warmup, ctx.epoch + cfg.cooldown + 1 - since)
        return first + (-(first - cfg.warmup)) % cfg.decide_every

    def _curvature_due(self, ctx: StreamContext) -> bool:
        """Factor update at this step? Every ``curvature_every`` updates, inside the window before
        a decision; the first update of a window restarts every factor."""
        cfg, c = self.cfg, self.counters
        if cfg.mode not in ("senn", "secnn") or int(c[0]) % cfg.curvature_every:
            return False
        if not cfg.curvature_window:
            return True
        nxt = self._next_decision(ctx)
        if nxt - ctx.epoch > cfg.curvature_window or 0 < ctx.session_epochs <= nxt:  # none ahead, or not here
            return False
        key = ctx.session * 100_000 + nxt
        if int(c[6]) != key:
            self.tracker.drop(*[n for n in list(self.curv._buffers) if not n.endswith("_n")])
            c[6] = key
        return True

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        ema = self._curvature_due(ctx)
        self.tracker.start("ema" if ema else None, x)
        logits = self.logits(x)
        if ema:
            logits.register_hook(self._nu2_hook)
        return F.cross_entropy(ctx.mask_logits(logits), y)

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        self.tracker.mode = None
        return self.logits(x)

    def on_stream_batch(self, x: Tensor, y_orig: Tensor, ctx: StreamContext) -> None:
        raise UserError("strategy senn runs in regime: sessions (i.i.d. = one session of many epochs)")

    def on_session_start(self, session: int, loader, ctx: StreamContext) -> None:
        """Keep ``decision_pool`` random training samples of the session for decision batches."""
        total = sum(len(b) for b in loader.batch_sampler)
        keep = set(torch.randperm(total, generator=ctx.generator)[: self.cfg.decision_pool].tolist())
        xs, ys, seen = [], [], 0
        for xb, yb in loader:
            pick = [i for i in range(len(yb)) if seen + i in keep]
            xs.append(xb[pick])
            ys.append(yb[pick])
            seen += len(yb)
        dev = self.pool_x.device
        self.pool_x, self.pool_y = torch.cat(xs).to(dev), torch.cat(ys).to(dev)

    # --- growth -----------------------------------------------------------------------------------
    def after_update(self, optimizer: torch.optim.Optimizer, ctx: StreamContext) -> bool:
        """Called by the sessions engine after every optimizer step; True when the model grew (the
        optimizer was edited in place, see ``senn_growth``)."""
        c = self.counters
        c[0] += 1
        if (int(c[1]), int(c[2])) == (ctx.session, ctx.epoch):
            return False
        c[1], c[2] = ctx.session, ctx.epoch
        c[3] += 1
        self._log_params(ctx)
        cfg = self.cfg
        if cfg.mode == "fixed" or ctx.epoch < cfg.warmup or int(c[3]) <= cfg.cooldown \
                or (ctx.epoch - cfg.warmup) % cfg.decide_every:
            return False
        c[4] += 1
        chosen = self._random_events(ctx) if self.cfg.mode == "random" else self._decide(ctx)
        if not chosen:
            return False
        reps = []
        for cand in chosen:
            reps += self._grow_one(cand, ctx)
        migrate_optimizer(optimizer, self.trainable_parameters(), reps)
        self.arch = _encode(self.backbone.describe()).to(self.arch.device)
        c[3] = 0
        return True

    def _log_params(self, ctx: StreamContext) -> None:
        row = torch.tensor([[int(self.counters[0]), ctx.session, ctx.epoch, self.backbone.num_params()]],
                           dtype=torch.float64, device=self.history.device)
        self.history = torch.cat([self.history, row])

    def _room(self, kind: str, s: int, b: int, extra: int) -> bool:
        net, cfg = self.backbone, self.cfg
        if cfg.max_params is not None and net.num_params() + extra > cfg.max_params:
            return False
        if kind == "width":
            return net.stages[s][b].conv.out_channels + cfg.width_step <= cfg.max_width
        return len(net.stages[s]) < cfg.max_blocks_per_stage

    def _decision_pass(self, ctx: StreamContext) -> None:
        """Forward/backward the decision batch in train mode with the hooks recording; BatchNorm
        statistics and parameter gradients are left as they were."""
        n = len(self.pool_y)
        if n < 2:
            raise UserError("senn: no decision pool (the session has fewer than 2 training samples)")
        idx = torch.randperm(n, generator=ctx.generator)[: self.cfg.decision_batch].to(self.pool_y.device)
        x, y = self.pool_x[idx], ctx.to_index(self.pool_y[idx])
        saved = {k: v.clone() for k, v in self.backbone.state_dict().items() if "running" in k or "batches" in k}
        self.tracker.start("decision", x, self.cfg.decision_positions)
        self.tracker.record.__init__()
        with torch.enable_grad():
            logits = self.logits(x)
            logits.register_hook(self._nu2_hook)
            loss = F.cross_entropy(ctx.mask_logits(logits), y)
            # differentiate down to the first block's output (the earliest gradient a decision
            # reads; its hook fires): no weight gradient and no first-conv backward is computed
            first = self.tracker.record.first
            torch.autograd.grad(loss, [first] if first is not None else
                                [p for p in self.parameters() if p.requires_grad], allow_unused=True)
        self.tracker.mode = None
        self.backbone.load_state_dict(saved, strict=False)

    def _decide(self, ctx: StreamContext) -> list[Candidate]:
        self._decision_pass(ctx)
        cfg, net = self.cfg, self.backbone
        cands: list[Candidate] = []
        for s, b, _ in net.blocks():
            cands += score_block(net, self.tracker, s, b, cfg.width_step, cfg.proposals, ctx.generator,
                                 ScoreSettings(cfg.damping_a, cfg.damping_g, cfg.cross_fit and cfg.mode == "senn",
                                               cfg.spatial))
        self.tracker.record.__init__()
        if cfg.mode == "secnn":
            return self._secnn_choice(cands)
        ok = [c for c in cands if c.ratio(cfg.depth_cost) > cfg.tau_width
              and c.abs_score(cfg.depth_cost) > cfg.abs_thresh and c.gain / c.nu2 > cfg.noise_z * c.noise
              and self._room(c.kind, c.stage, c.block, c.params)]
        ok.sort(key=lambda c: -c.abs_score(cfg.depth_cost))
        chosen: list[Candidate] = []
        for c in ok:  # one event per place: the scores of the others assumed the place unchanged
            if len(chosen) < cfg.events_per_decision and all((c.stage, c.block) != (d.stage, d.block) for d in chosen):
                chosen.append(c)
        return chosen

    def _secnn_choice(self, cands: list[Candidate]) -> list[Candidate]:
        """SECNN's rule on our score: the best stage-wide widening vs the best stage-end layer."""
        cfg, net = self.cfg, self.backbone
        eta_c = sum(c.eta for c in cands if c.kind == "width")
        if eta_c <= 0:
            return []
        options: list[tuple[float, list[Candidate]]] = []
        for s, stage in enumerate(net.stages):
            wide = [c for c in cands if c.kind == "width" and c.stage == s]
            deep = [c for c in cands if c.kind == "depth" and c.stage == s and c.block == len(stage) - 1]
            for group in (wide, deep):
                if not group or not all(self._room(c.kind, c.stage, c.block, 0) for c in group):
                    continue
                dp = sum(c.params for c in group)
                if cfg.max_params is not None and net.num_params() + dp > cfg.max_params:
                    continue
                eta_new = (eta_c + sum(c.gain for c in group)) * math.exp(-cfg.secnn_lambda * dp**2)
                options.append((eta_new / eta_c, group))
        if not options:
            return []
        best = max(options, key=lambda o: o[0])
        if best[0] <= cfg.secnn_tau:
            return []
        for c in best[1]:
            c.recorded = best[0]
        return best[1]

    def _random_events(self, ctx: StreamContext) -> list[Candidate]:
        """Each remaining event lands on this opportunity with probability 1 / (opportunities left)."""
        cfg, c = self.cfg, self.counters
        left = cfg.random_width + cfg.random_depth - int(c[5])
        remaining = max(1, cfg.random_span - int(c[4]) + 1)
        g = ctx.generator
        now = int((torch.rand(left, generator=g) < 1.0 / remaining).sum()) if left > 0 else 0
        kinds = ["width"] * cfg.random_width + ["depth"] * cfg.random_depth
        out = []
        for kind in kinds[int(c[5]): int(c[5]) + now]:
            places = [(s, b) for s, b, _ in self.backbone.blocks() if self._room(kind, s, b, 0)]
            if places:
                s, b = places[int(torch.randint(len(places), (1,), generator=g))]
                extra = width_params(self.backbone, s, b, cfg.width_step) if kind == "width" else \
                    depth_params(self.backbone, s, b)
                out.append(Candidate(kind, s, b, float("nan"), 1.0, extra))
        c[5] += now
        # events at the same place in one decision: apply in order, indices stay valid (insertions last)
        return sorted(out, key=lambda e: (e.kind == "depth", -e.stage, -e.block))

    def _grow_one(self, cand: Candidate, ctx: StreamContext) -> list:
        net, tr = self.backbone, self.tracker
        n0 = net.num_params()
        if cand.kind == "width":
            fan_in = cand.fan_in
            cin = net.stages[cand.stage][cand.block].conv.in_channels
            if fan_in is not None and fan_in.shape[1] < cin:  # an earlier event widened the input
                fan_in = torch.cat([fan_in, fan_in.new_zeros(fan_in.shape[0], cin - fan_in.shape[1], 3, 3)], 1)
            reps = net.grow_width(cand.stage, cand.block, self.cfg.width_step if fan_in is None else len(fan_in),
                                  fan_in, ctx.generator)
            tr.on_widen(cand.stage, cand.block)
        else:
            net.insert_identity(cand.stage, cand.block)
            tr.on_insert(cand.stage, cand.block)
            reps = []
        score = cand.abs_score(self.cfg.depth_cost) if cand.recorded is None else cand.recorded
        row = torch.tensor([[int(self.counters[0]), ctx.session, ctx.epoch, cand.stage, cand.block,
                             KIND_CODE[cand.kind], net.num_params() - n0, score, net.num_params()]],
                           dtype=torch.float64, device=self.events.device)
        self.events = torch.cat([self.events, row])
        return reps

    # --- checkpoints and outputs ------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        """Rebuild the grown architecture the checkpoint describes, then load into it."""
        if "arch" not in state_dict:
            raise UserError("not a senn checkpoint (no architecture)")
        try:
            arch = normalise_arch(_decode(state_dict["arch"]))
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"unreadable architecture in the checkpoint ({err})") from None
        if not grown_from(self.start_arch, arch):
            raise UserError(f"its architecture ({ExpandableCNN(arch).summary()}) cannot have grown from the "
                            f"configured backbone ({ExpandableCNN(self.start_arch).summary()})")
        if arch != self.backbone.describe():
            dev = self.head.weight.device
            self.backbone = ExpandableCNN(arch).to(dev)
            self.tracker.net = self.backbone
            self.tracker.attach()
        for name in list(self.curv._buffers):
            del self.curv._buffers[name]
        for key, value in state_dict.items():
            if key.startswith("curv."):
                self.curv.register_buffer(key[5:], torch.empty_like(value, device=self.head.weight.device))
        for name in ("arch", "pool_x", "pool_y", "events", "history"):
            if name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[name], device=self.head.weight.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def growth_events(self) -> list[dict[str, Any]]:
        out = []
        for row in self.events.tolist():
            e = dict(zip(EVENT_FIELDS, row, strict=True))
            out.append({"step": int(e["step"]), "session": int(e["session"]), "epoch": int(e["epoch"]),
                        "layer": f"{int(e['stage'])}.{int(e['block'])}",
                        "kind": "width" if e["kind"] == 0 else "depth", "params_added": int(e["params_added"]),
                        "score": None if e["score"] != e["score"] else e["score"], "params": int(e["params"])})
        return out

    def run_outputs(self, run_dir: Path) -> dict[str, Any]:
        """results.json keys (growth events, parameter history, final architecture), the
        ``architecture.json`` a fixed-large baseline builds from, and the parameters plot."""
        from clplat.io import atomic_write_text

        arch = self.backbone.describe()
        history = [{"step": int(r[0]), "session": int(r[1]), "epoch": int(r[2]), "params": int(r[3])}
                   for r in self.history.tolist()]
        out = {"growth": self.growth_events(), "params_history": history,
               "architecture": arch, "architecture_summary": self.backbone.summary(),
               "backbone_params": self.backbone.num_params(), "params_total": sum(p.numel() for p in self.parameters()),
               "decisions": int(self.counters[4])}
        atomic_write_text(run_dir / "architecture.json", json.dumps({"architecture": arch}, indent=1))
        return out

    def plot(self, run_dir: Path, results: dict[str, Any], title: str) -> None:
        from clplat.strategies.senn_report import plot_growth

        plot_growth(run_dir / "growth.png", results, title)
