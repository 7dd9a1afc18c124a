"""MVP step costs: closed-form GSF weights vs per-sample backward passes, and MVP vs ER training
throughput / peak memory on the same frozen backbone, measured in one run.

    python benchmarks/mvp_step.py [--device cpu|cuda] [--steps 10] [--write-docs]

(a) builds the release's reference (B backward passes on a copied head) and the closed form at
ViT-B sizes (B=64, D=768, C=100), checks the weights agree to 1e-5 and prints the speed ratio.
(b) runs ``--steps`` full updates (forward, backward, Adam) of MVP and of ER (head-only, replay)
with the same ViT and the same samples per update; each strategy runs in its own child process so
peak memory (CUDA: max allocated; CPU: peak RSS growth) is its own. ``--write-docs`` replaces the
``## MVP step`` section of docs/benchmarks.md with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import torch

BACKBONE = {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": 8, "embed_dim": 128, "depth": 6,
                                                        "num_heads": 4}}
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _ctx(num_classes: int, n_exposed: int):
    from clplat.strategies import StreamContext

    li = torch.tensor([i if i < n_exposed else -1 for i in range(num_classes)])
    return StreamContext(n_exposed=n_exposed, exposed_classes=list(range(n_exposed)), label_index=li,
                         generator=torch.Generator().manual_seed(0))


def bench_gsf(device: str, B: int = 64, D: int = 768, C: int = 100, reps: int = 20) -> dict:
    from clplat.strategies.mvp import gsf_weights, gsf_weights_reference

    torch.manual_seed(0)
    ctx = _ctx(C, 60)
    head = torch.nn.Linear(D, C).to(device)
    f = torch.randn(B, D, device=device)
    m = 2 * torch.sigmoid(torch.randn(B, C, device=device))
    y = torch.randint(0, 60, (B,), device=device)

    def closed():
        with torch.no_grad():
            return gsf_weights(f, y, ctx.mask_logits(m * head(f)), m, 2.0)

    def timed(fn):
        fn()
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            out = fn()
        _sync(device)
        return out, (time.perf_counter() - t) / reps

    ours, t_closed = timed(closed)
    ref, t_ref = timed(lambda: gsf_weights_reference(f, y, m, head, ctx, 2.0))
    err = float((ours - ref).abs().max())
    return {"batch": B, "dim": D, "classes": C, "max_abs_diff": err, "closed_ms": 1e3 * t_closed,
            "per_sample_ms": 1e3 * t_ref, "speedup": t_ref / t_closed}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _train_worker(name: str, device: str, steps: int, batch: int, queue) -> None:
    """One strategy's updates in a fresh process, so its peak memory is its own."""
    from clplat.backbones import build_backbone
    from clplat.config import BackboneConfig
    from clplat.strategies import STRATEGIES

    torch.manual_seed(0)
    shape, C = (3, 32, 32), 10
    backbone = build_backbone(BackboneConfig(freeze=True, **BACKBONE), shape)
    cls = STRATEGIES.get(name)
    half = batch // 2
    cfg = cls.config_model(memory_size=200, memory_batch=half) if name == "er" else cls.config_model()
    strategy = cls(cfg, backbone, C, shape).to(device).train()
    opt = torch.optim.Adam([p for p in strategy.parameters() if p.requires_grad], lr=5e-3)
    ctx = _ctx(C, C)
    stream = batch if name != "er" else half  # same samples per update: ER adds `half` replay samples
    x = torch.randn(stream, *shape, device=device)
    y = torch.randint(0, C, (stream,), device=device)
    if name == "er":
        strategy.on_stream_batch(torch.randn(200, *shape, device=device), torch.randint(0, C, (200,)), ctx)

    def step():
        out = strategy.training_loss(x, y, ctx)
        loss = out["loss"] if isinstance(out, dict) else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss0 = _peak_rss_mb()  # after building the model, before the first update
    step()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb() - rss0
    queue.put({"strategy": name, "samples_per_s": steps * batch / dt, "peak_mb": peak,
               "memory_kind": "max allocated (CUDA)" if device == "cuda" else "peak RSS growth"})


def bench_training(device: str, steps: int, batch: int) -> dict:
    ctx = mp.get_context("spawn")
    results = {}
    for name in ("er", "mvp"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_train_worker, args=(name, device, steps, batch, queue))
        proc.start()
        results[name] = queue.get()
        proc.join()
    results["throughput_ratio_mvp_over_er"] = results["mvp"]["samples_per_s"] / results["er"]["samples_per_s"]
    results["memory_ratio_mvp_over_er"] = results["mvp"]["peak_mb"] / max(results["er"]["peak_mb"], 1e-9)
    return results


def write_docs(gsf: dict, train: dict, args: argparse.Namespace) -> None:
    er, mvp = train["er"], train["mvp"]
    section = f"""## MVP step

`python benchmarks/mvp_step.py --device {args.device} --steps {args.steps} --batch {args.batch} --write-docs`
({platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads;
on a shared machine the absolute numbers move, the ratios much less).

**(a) GSF weights, closed form vs the release's per-sample backward passes** (B={gsf['batch']},
D={gsf['dim']}, C={gsf['classes']}): max |difference| {gsf['max_abs_diff']:.1e};
closed form {gsf['closed_ms']:.3f} ms vs per-sample {gsf['per_sample_ms']:.2f} ms,
**{gsf['speedup']:.0f}x faster**.

**(b) Training step, MVP vs ER on the same frozen ViT** (`{BACKBONE['name']}` {BACKBONE['kwargs']},
32 px, {args.batch} samples per update; ER: head only, half the batch replayed):

| strategy | samples/s | peak memory (MB, {er['memory_kind']}) |
|---|---:|---:|
| ER | {er['samples_per_s']:.1f} | {er['peak_mb']:.0f} |
| MVP | {mvp['samples_per_s']:.1f} | {mvp['peak_mb']:.0f} |
| MVP / ER | {train['throughput_ratio_mvp_over_er']:.2f}x | {train['memory_ratio_mvp_over_er']:.2f}x |

MVP runs the frozen ViT twice (the query path, then the prompted path with 5-20 extra tokens per
block) and back-propagates through it to the prompts; ER runs it once, without a backward pass
through the backbone.
"""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find("## MVP step")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    gsf = bench_gsf(args.device)
    print(f"(a) GSF B={gsf['batch']}: max diff {gsf['max_abs_diff']:.1e}, closed {gsf['closed_ms']:.3f} ms, "
          f"per-sample {gsf['per_sample_ms']:.2f} ms -> {gsf['speedup']:.0f}x")
    assert gsf["max_abs_diff"] < 1e-5, "closed-form GSF disagrees with the per-sample reference"
    train = bench_training(args.device, args.steps, args.batch)
    for name in ("er", "mvp"):
        r = train[name]
        print(f"(b) {name:>3}: {r['samples_per_s']:.1f} samples/s, peak {r['peak_mb']:.0f} MB ({r['memory_kind']})")
    print(f"    MVP/ER throughput {train['throughput_ratio_mvp_over_er']:.2f}x, "
          f"memory {train['memory_ratio_mvp_over_er']:.2f}x")
    print(json.dumps({"gsf": gsf, "training": train}))
    if args.write_docs:
        write_docs(gsf, train, args)


if __name__ == "__main__":
    main()
