"""Cost of SENN's natural expansion score against training time (issue 10, target: <= 15 %).

For each experiment config, one thread, two measurements:

1. **Bare loop** (compute only; the lower bound of an epoch, so the upper bound of the overhead).
   At the config's size (network, batch size, one session's training-set size, decision batch),
   interleaved repeats of: an epoch of plain updates (cross-entropy, Adam, no hooks); the same epoch
   with the curvature factors updated every ``curvature_every`` steps; one expansion decision
   (decision batch forward/backward, every block's candidates). Medians.
2. **Engine run**: the experiment itself (``python -m clplat.run`` in-process, seed as configured),
   with timers on the decisions and on the factor updates; overhead = their time over the rest of
   the training span (first update to last, session evaluations included). By default with the
   config's ``senn.decide_every``; with ``--decide-every 1 2``, once per value (a different schedule
   can grow differently, so its decision count is measured, not assumed).

Total overhead = bookkeeping x (share of the ``curvature_every`` steps that updated factors: below
1 with ``curvature_window``, measured in the engine run) + decisions per epoch x (decision / epoch). Prints a table per
config, the met / not met line against the target, and one JSON line per config (``--json``: only
that).

    python benchmarks/senn_score.py                               # both experiments, ~2-4 min
    python benchmarks/senn_score.py --config experiments/senn_digits.yaml --reps 7 --decide-every 1 2 3
    python benchmarks/senn_score.py --arch-file runs/senn_digits/architecture.json --no-engine  # a grown net
    python benchmarks/senn_score.py --smoke                       # seconds; checks the script runs
Run on a quiet machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clplat.backbones import build_backbone
from clplat.config import BackboneConfig, load_config
from clplat.data import build_dataset
from clplat.strategies.base import StreamContext
from clplat.strategies.senn import Senn

CONFIGS = ("experiments/senn_digits.yaml", "experiments/senn_glyphs_ci.yaml")
TARGET = 0.15


# --- 1. bare loop ------------------------------------------------------------------------------------
def build(cfg, arch_file: str | None, smoke: bool):
    """The strategy at the config's size; the training set is one session's share (random images:
    only the count matters for timing)."""
    data = build_dataset(cfg.data, cfg.seed)
    bcfg = cfg.backbone if arch_file is None else BackboneConfig(name="expandable_cnn",
                                                                 kwargs={"arch_file": arch_file})
    torch.manual_seed(cfg.seed)
    net = build_backbone(bcfg, data.input_shape)
    # factor updates at every curvature_every-th step (the engine run measures the window's share)
    st = Senn(cfg.strategy_config.model_copy(update={"mode": "senn", "curvature_window": 0}), net, data.num_classes,
              data.input_shape)
    y = torch.as_tensor(data.train_targets)
    x = data.train.x if hasattr(data.train, "x") else torch.stack([data.train[i][0] for i in range(len(y))])
    g = torch.Generator().manual_seed(cfg.seed)
    n = max(2, len(y) // cfg.scenario.n_tasks) if not smoke else 256
    keep = torch.randperm(len(y), generator=g)[:n]
    x, y = x[keep], y[keep]
    pool = torch.randperm(len(y), generator=g)[: st.cfg.decision_pool]
    st.pool_x, st.pool_y = x[pool], y[pool]
    ctx = StreamContext(n_exposed=data.num_classes, exposed_classes=list(range(data.num_classes)),
                        label_index=torch.arange(data.num_classes), generator=g, epoch=5)
    return st, x, y, ctx


def epoch(st: Senn, opt, x, y, bs: int, ctx, bookkeeping: bool) -> float:
    st.cfg.mode = "senn" if bookkeeping else "fixed"
    if bookkeeping:
        st.tracker.attach()
    else:
        for h in st.tracker.handles:
            h.remove()
    order = torch.randperm(len(y), generator=ctx.generator)
    t0 = time.perf_counter()
    for s in range(0, len(y), bs):
        i = order[s : s + bs]
        loss = st.training_loss(x[i], y[i], ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        st.counters[0] += 1
    return time.perf_counter() - t0


def decision(st: Senn, ctx) -> float:
    st.cfg.mode = "senn"
    st.tracker.attach()
    t0 = time.perf_counter()
    st._decide(ctx)
    return time.perf_counter() - t0


def bare_loop(cfg, arch_file: str | None, reps: int, smoke: bool) -> dict:
    st, x, y, ctx = build(cfg, arch_file, smoke)
    bs = cfg.sessions.base.batch_size
    opt = torch.optim.Adam(st.parameters(), lr=cfg.sessions.base.optim.lr)
    epoch(st, opt, x, y, bs, ctx, True)  # warm-up: fills the factors, first-call costs
    decision(st, ctx)
    plain, book, dec = [], [], []
    for _ in range(reps):  # interleaved: load drifts hit all three alike
        plain.append(epoch(st, opt, x, y, bs, ctx, False))
        book.append(epoch(st, opt, x, y, bs, ctx, True))
        dec.append(decision(st, ctx))
    p, b, d = (statistics.median(v) for v in (plain, book, dec))
    return {"architecture": st.backbone.summary(), "train_images": len(y), "batches_per_epoch": -(-len(y) // bs),
            "epoch_s": p, "bookkeeping": b / p - 1, "decision_s": d, "decision_epochs": d / p}


# --- 2. engine run -----------------------------------------------------------------------------------
@contextlib.contextmanager
def timed_strategy(acc: dict):
    """Timers on Senn's decisions and the tracker's factor updates, and the training span."""
    from clplat.strategies import senn_score

    tr = senn_score.CurvatureTracker
    patched = [(Senn, "_decide"), (tr, "update_A"), (tr, "update_G"), (Senn, "training_loss"), (Senn, "after_update")]
    saved = [getattr(o, n) for o, n in patched]

    def wrap(fn, key):
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                t1 = time.perf_counter()
                acc[key] = acc.get(key, 0.0) + t1 - t0
                acc.setdefault("first", t0)
                acc["last"] = t1
        return inner

    for (o, n), fn in zip(patched, saved, strict=True):
        setattr(o, n, wrap(fn, {"_decide": "decide", "update_A": "book", "update_G": "book"}.get(n, "other")))
    loss = Senn.training_loss

    def counting(st, *a, **k):
        out = loss(st, *a, **k)
        acc["steps"] = acc.get("steps", 0) + 1
        acc["ema_steps"] = acc.get("ema_steps", 0) + (st.tracker.mode == "ema")
        return out

    Senn.training_loss = counting
    try:
        yield
    finally:
        for (o, n), fn in zip(patched, saved, strict=True):
            setattr(o, n, fn)


def engine_run(config: str, decide_every: int, smoke: bool) -> dict:
    from clplat.run import main

    cfg = load_config(config)
    acc: dict = {}
    with tempfile.TemporaryDirectory() as tmp, timed_strategy(acc):
        over = [f"logging.runs_dir={tmp}", "name=bench", "threads=1", "logging.progress=false",
                "logging.wandb=disabled", f"senn.decide_every={decide_every}"]
        if smoke:
            over += ["sessions.base.epochs=3", "sessions.incremental.epochs=2"]
        with contextlib.redirect_stdout(io.StringIO()):
            main([config, *over])
        res = json.loads((Path(tmp) / "bench" / "results.json").read_text())
    span = acc["last"] - acc["first"]
    dec, book = acc.get("decide", 0.0), acc.get("book", 0.0)
    epochs = len(res["params_history"])
    every = cfg.strategy_config.curvature_every
    return {"decide_every": decide_every, "epochs": epochs, "steps": acc["steps"], "factor_updates": acc["ema_steps"],
            "update_share": acc["ema_steps"] * every / acc["steps"], "decisions": res["decisions"],
            "growth_events": len(res["growth"]), "architecture": res["architecture_summary"],
            "span_s": span, "epoch_s": (span - dec - book) / epochs, "decision_s": dec / max(1, res["decisions"]),
            "bookkeeping": book / (span - dec - book), "overhead": (dec + book) / (span - dec - book)}


# --- report ------------------------------------------------------------------------------------------
def report(config: str, bare: dict, runs: list[dict], cfg) -> None:
    print(f"\n== {config}  ({bare['architecture']}, {bare['train_images']} images/epoch, "
          f"{bare['batches_per_epoch']} batches, decision batch {cfg.strategy_config.decision_batch}, 1 thread)")
    s = cfg.strategy_config
    epochs = cfg.sessions.base.epochs
    every_epoch = max(0, epochs - s.warmup) / epochs  # worst case: no growth, a decision every epoch
    print(f"bare loop: epoch {bare['epoch_s'] * 1e3:.1f} ms, bookkeeping +{bare['bookkeeping']:.1%}, "
          f"decision {bare['decision_s'] * 1e3:.1f} ms = {bare['decision_epochs']:.2f} epochs")
    for r in runs:
        per_epoch = r["decisions"] / r["epochs"]
        total = bare["bookkeeping"] * r["update_share"] + per_epoch * bare["decision_epochs"]
        print(f"  decide_every={r['decide_every']}: {r['decisions']} decisions / {r['epochs']} epochs "
              f"({per_epoch:.2f}/epoch), factors updated at {r['update_share']:.0%} of the curvature_every "
              f"steps -> total overhead {total:.1%}  "
              f"[{'met' if total <= TARGET else 'NOT met'} vs {TARGET:.0%}, compute-only]")
    if runs and runs[0]["decide_every"] == 1 and not s.curvature_window:
        worst = bare["bookkeeping"] + every_epoch * bare["decision_epochs"]
        print(f"  worst case at decide_every=1 (no growth: a decision every epoch after warmup): {worst:.1%}")
    for r in runs:
        print(f"engine run, decide_every={r['decide_every']}: epoch {r['epoch_s'] * 1e3:.0f} ms, "
              f"decision {r['decision_s'] * 1e3:.1f} ms, bookkeeping +{r['bookkeeping']:.1%}, "
              f"overhead {r['overhead']:.1%} of the training span ({r['growth_events']} growth events, final "
              f"{r['architecture']})  [{'met' if r['overhead'] <= TARGET else 'NOT met'} vs {TARGET:.0%}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", nargs="+", default=list(CONFIGS))
    p.add_argument("--arch-file", default=None, help="bare loop on a grown architecture.json (default: the start)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--decide-every", type=int, nargs="+", default=None,
                   help="engine runs with these schedules (default: the config's)")
    p.add_argument("--no-engine", action="store_true", help="bare loop only")
    p.add_argument("--json", action="store_true", help="print only one JSON line per config")
    p.add_argument("--smoke", action="store_true", help="tiny: 2 repetitions on 256 images, 3-epoch engine runs")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.smoke:
        a.reps = 2
    for config in a.config:
        cfg = load_config(config)
        bare = bare_loop(cfg, a.arch_file, a.reps, a.smoke)
        every = a.decide_every or [cfg.strategy_config.decide_every]
        runs = [] if a.no_engine else [engine_run(config, e, a.smoke) for e in every]
        if not a.json:
            report(config, bare, runs, cfg)
        print(json.dumps({"config": config, "threads": 1, "reps": a.reps, "target": TARGET, "bare_loop": bare,
                          "engine": runs}))


if __name__ == "__main__":
    main()
