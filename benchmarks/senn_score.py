"""Cost of SENN's natural expansion score as a fraction of a training epoch (issue 10, target <= 15 %).

At an experiment's size (its data, batch size and network: the starting architecture, or a grown
one from ``--arch-file``), in one process, interleaved so load drifts hit all alike:

- plain: one epoch of updates (cross-entropy, Adam), no hooks on the network;
- bookkeeping: the same epoch with the curvature factors updated every ``curvature_every`` steps;
- decision: one expansion decision (decision batch forward/backward, every block's candidates).

    python benchmarks/senn_score.py --config experiments/senn_digits.yaml --reps 5
    python benchmarks/senn_score.py --config experiments/senn_digits.yaml --arch-file runs/senn_digits/architecture.json
    python benchmarks/senn_score.py --smoke          # seconds; checks the script runs
Prints one JSON line: median seconds of each and the overheads as fractions of the plain epoch.
Run on a quiet machine; threads pinned by --threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from clplat.backbones import build_backbone
from clplat.config import BackboneConfig, load_config
from clplat.data import build_dataset
from clplat.strategies.base import StreamContext
from clplat.strategies.senn import Senn


def build(cfg, arch_file: str | None):
    data = build_dataset(cfg.data, cfg.seed)
    bcfg = cfg.backbone if arch_file is None else BackboneConfig(name="expandable_cnn",
                                                                 kwargs={"arch_file": arch_file})
    torch.manual_seed(cfg.seed)
    net = build_backbone(bcfg, data.input_shape)
    st = Senn(cfg.strategy_config.model_copy(update={"mode": "senn"}), net, data.num_classes, data.input_shape)
    x, y = data.train.x if hasattr(data.train, "x") else None, torch.as_tensor(data.train_targets)
    if x is None:
        x = torch.stack([data.train[i][0] for i in range(len(y))])
    g = torch.Generator().manual_seed(cfg.seed)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="experiments/senn_digits.yaml")
    p.add_argument("--arch-file", default=None, help="a grown architecture.json (default: the config's start)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="two tiny repetitions on a subset")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    st, x, y, ctx = build(cfg, a.arch_file)
    if a.smoke:
        x, y, a.reps = x[:256], y[:256], 2
    bs = cfg.sessions.base.batch_size
    opt = torch.optim.Adam(st.parameters(), lr=cfg.sessions.base.optim.lr)
    epoch(st, opt, x, y, bs, ctx, True)  # warm-up: fills the factors, first-call costs
    plain, book, dec = [], [], []
    for _ in range(a.reps):
        plain.append(epoch(st, opt, x, y, bs, ctx, False))
        book.append(epoch(st, opt, x, y, bs, ctx, True))
        dec.append(decision(st, ctx))
    med = {k: statistics.median(v) for k, v in (("plain", plain), ("bookkeeping", book), ("decision", dec))}
    every = cfg.strategy_config.cooldown + 1
    print(json.dumps({
        "config": a.config, "architecture": st.backbone.summary(), "params": st.backbone.num_params(),
        "batches_per_epoch": -(-len(y) // bs), "threads": a.threads, "reps": a.reps,
        "plain_epoch_s": round(med["plain"], 4), "bookkeeping_epoch_s": round(med["bookkeeping"], 4),
        "decision_s": round(med["decision"], 4),
        "bookkeeping_overhead": round(med["bookkeeping"] / med["plain"] - 1, 4),
        "decision_per_epoch": round(med["decision"] / med["plain"], 4),
        "overhead_decision_every_epoch": round((med["bookkeeping"] + med["decision"]) / med["plain"] - 1, 4),
        f"overhead_decision_every_{every}_epochs": round(
            (med["bookkeeping"] + med["decision"] / every) / med["plain"] - 1, 4),
    }))


if __name__ == "__main__":
    main()
