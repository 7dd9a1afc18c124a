"""ConTraCon class-incremental inference cost per test image after T tasks (issue 9).

Compares, on a randomly initialised CCT with T task adapters (timing does not depend on training):
- batched: ``ConTraCon.predict`` (the clean batch + its 10 views embedded once by the shared, frozen
  tokenizer, then one encoder pass per task; adapted weights cached per task);
- naive: the release's loop, 16 views x T tasks, one image-batch forward each, weights re-adapted
  every forward;
- plain: one forward of the task-0 network (no task identification).

    python benchmarks/contracon_infer.py --tasks 2 5 10 --backbone cct_6 --size 32 --batch 64
    python benchmarks/contracon_infer.py --smoke      # tiny, seconds
Prints ms per test image for each; run on a quiet machine (threads pinned by --threads).
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from clplat.backbones import build_backbone
from clplat.config import BackboneConfig
from clplat.strategies.contracon import ConTraCon, ContraconConfig
from clplat.strategies.contracon_views import task_id_views


def build(tasks: int, backbone: str, size: int, k: int, classes: int = 10) -> ConTraCon:
    kwargs = {"num_layers": 1, "num_heads": 2, "embedding_dim": 32} if backbone == "cct" else {}
    bb = build_backbone(BackboneConfig(name=backbone, kwargs=kwargs), (3, size, size))
    s = ConTraCon(ContraconConfig(kernel_size=k), bb, classes * tasks, (3, size, size))
    for t in range(tasks):
        s.on_session_start(t, None, SimpleNamespace(n_exposed=classes * (t + 1), session=t))
    return s.eval()


def naive(s: ConTraCon, x: torch.Tensor) -> torch.Tensor:
    views = [x] * 6 + list(task_id_views(x).chunk(10))
    ent = []
    for t in range(len(s.adapters)):
        s._cache.clear()  # the release re-adapts the weights for every forward
        logits = []
        for v in views:
            s._cache.clear()
            logits.append(s.task_logits(v, t))
        p = torch.softmax(torch.stack(logits).mean(0), 1)
        ent.append(-(p * torch.log(p + 1e-4)).sum(1))
    return torch.stack(ent).argmin(0)


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10])
    p.add_argument("--backbone", default="cct_6")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--kernel", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.tasks, a.backbone, a.size, a.kernel, a.batch, a.repeats = [2], "cct", 16, 3, 4, 1
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    for t in a.tasks:
        s = build(t, a.backbone, a.size, a.kernel)
        ctx = SimpleNamespace(session=t - 1, augment=None)
        with torch.no_grad():
            row = {"tasks": t,
                   "batched_ms": timed(lambda s=s, ctx=ctx: s.predict(x, ctx), a.repeats),
                   "naive_ms": timed(lambda s=s: naive(s, x), a.repeats),
                   "plain_ms": timed(lambda s=s: s.task_logits(x, 0), a.repeats)}
            same = torch.equal(s.identify_tasks(x, ctx)[0], naive(s, x))
        per = {k: round(1000 * v / a.batch, 3) for k, v in row.items() if k.endswith("_ms")}
        print(json.dumps({"tasks": t, "ms_per_image": per, "speedup_vs_naive":
                          round(row["naive_ms"] / row["batched_ms"], 2), "same_task_ids": same}))


if __name__ == "__main__":
    main()
