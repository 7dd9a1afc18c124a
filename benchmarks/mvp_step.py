"""MVP step costs: closed-form GSF weights vs per-sample backward passes, and MVP vs ER training
throughput / peak memory on the same frozen backbone, measured in one run.

    python benchmarks/mvp_step.py [--device cpu|cuda] [--steps 10] [--repeats 5] [--threads 1] [--write-docs]

(a) builds the release's reference (B backward passes on a copied head) and the closed form at
ViT-B sizes (B=64, D=768, C=100), checks the weights agree to 1e-5 and prints the speed ratio.
(b) runs ``--steps`` full updates (forward, backward, Adam) of MVP and of ER (head-only, replay)
with the same ViT and the same samples per update; each strategy runs in its own child process so
peak memory (CUDA: max allocated; CPU: peak RSS growth) is its own. ``--write-docs`` replaces the
``## MVP step`` section of docs/benchmarks.md with the figures.

Fairness on a shared machine: torch's intra-op threads are pinned (``--threads``, default 1, in this
process and in every child), and the contenders are measured in interleaved repeats (closed form /
reference alternate for (a); ER / MVP child processes alternate, the order flipping every repeat,
for (b)), so a slow phase of the machine hits both. Figures are medians with min..max ranges.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
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


def bench_gsf(device: str, B: int = 64, D: int = 768, C: int = 100, reps: int = 20, repeats: int = 5) -> dict:
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

    closed_s, ref_s = [], []
    for _ in range(repeats):  # interleaved: a slow phase of the machine hits both
        ours, t = timed(closed)
        closed_s.append(t)
        ref, t = timed(lambda: gsf_weights_reference(f, y, m, head, ctx, 2.0))
        ref_s.append(t)
    err = float((ours - ref).abs().max())
    t_closed, t_ref = statistics.median(closed_s), statistics.median(ref_s)
    return {"batch": B, "dim": D, "classes": C, "max_abs_diff": err, "closed_ms": 1e3 * t_closed,
            "per_sample_ms": 1e3 * t_ref, "speedup": t_ref / t_closed, "repeats": repeats,
            "speedup_range": [min(ref_s) / max(closed_s), max(ref_s) / min(closed_s)]}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _train_worker(name: str, device: str, steps: int, batch: int, threads: int, queue) -> None:
    """One strategy's updates in a fresh process, so its peak memory is its own."""
    torch.set_num_threads(threads)
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


def bench_training(device: str, steps: int, batch: int, threads: int, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {"er": [], "mvp": []}
    for r in range(repeats):  # interleaved, order flipped every repeat
        for name in (("er", "mvp") if r % 2 == 0 else ("mvp", "er")):
            queue = ctx.Queue()
            proc = ctx.Process(target=_train_worker, args=(name, device, steps, batch, threads, queue))
            proc.start()
            runs[name].append(queue.get())
            proc.join()
    results: dict = {}
    for name, rs in runs.items():
        sps = [x["samples_per_s"] for x in rs]
        results[name] = {**rs[0], "samples_per_s": statistics.median(sps), "samples_per_s_range": [min(sps), max(sps)],
                         "peak_mb": statistics.median([x["peak_mb"] for x in rs])}
    er, mvp = results["er"], results["mvp"]
    results["throughput_ratio_mvp_over_er"] = mvp["samples_per_s"] / er["samples_per_s"]
    results["throughput_ratio_range"] = [mvp["samples_per_s_range"][0] / er["samples_per_s_range"][1],
                                         mvp["samples_per_s_range"][1] / er["samples_per_s_range"][0]]
    results["memory_ratio_mvp_over_er"] = mvp["peak_mb"] / max(er["peak_mb"], 1e-9)
    results["repeats"] = repeats
    return results


def write_docs(gsf: dict, train: dict, args: argparse.Namespace) -> None:
    er, mvp = train["er"], train["mvp"]
    cmd = (f"python benchmarks/mvp_step.py --device {args.device} --steps {args.steps} --batch {args.batch} "
           f"--repeats {args.repeats} --threads {args.threads} --write-docs")
    lo, hi = train["throughput_ratio_range"]
    ratio = f"{train['throughput_ratio_mvp_over_er']:.2f}x ({lo:.2f}-{hi:.2f})"
    section = f"""## MVP step

`{cmd}`
({platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads;
medians of {args.repeats} interleaved repeats, ranges min..max).

**(a) GSF weights, closed form vs the release's per-sample backward passes** (B={gsf['batch']},
D={gsf['dim']}, C={gsf['classes']}): max |difference| {gsf['max_abs_diff']:.1e};
closed form {gsf['closed_ms']:.3f} ms vs per-sample {gsf['per_sample_ms']:.2f} ms,
**{gsf['speedup']:.0f}x faster** (range {gsf['speedup_range'][0]:.0f}-{gsf['speedup_range'][1]:.0f}x).

**(b) Training step, MVP vs ER on the same frozen ViT** (`{BACKBONE['name']}` {BACKBONE['kwargs']},
32 px, {args.batch} samples per update; ER: head only, half the batch replayed):

| strategy | samples/s | peak memory (MB, {er['memory_kind']}) |
|---|---:|---:|
| ER | {er['samples_per_s']:.1f} | {er['peak_mb']:.0f} |
| MVP | {mvp['samples_per_s']:.1f} | {mvp['peak_mb']:.0f} |
| MVP / ER | {ratio} | {train['memory_ratio_mvp_over_er']:.2f}x |

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
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians, min..max ranges)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in every child")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gsf = bench_gsf(args.device, repeats=args.repeats)
    print(f"(a) GSF B={gsf['batch']}: max diff {gsf['max_abs_diff']:.1e}, closed {gsf['closed_ms']:.3f} ms, "
          f"per-sample {gsf['per_sample_ms']:.2f} ms -> {gsf['speedup']:.0f}x")
    assert gsf["max_abs_diff"] < 1e-5, "closed-form GSF disagrees with the per-sample reference"
    train = bench_training(args.device, args.steps, args.batch, args.threads, args.repeats)
    for name in ("er", "mvp"):
        r = train[name]
        print(f"(b) {name:>3}: {r['samples_per_s']:.1f} samples/s, peak {r['peak_mb']:.0f} MB ({r['memory_kind']})")
    lo, hi = train["throughput_ratio_range"]
    print(f"    MVP/ER throughput {train['throughput_ratio_mvp_over_er']:.2f}x (range {lo:.2f}-{hi:.2f}), "
          f"memory {train['memory_ratio_mvp_over_er']:.2f}x")
    print(json.dumps({"gsf": gsf, "training": train}))
    if args.write_docs:
        write_docs(gsf, train, args)


if __name__ == "__main__":
    main()
