"""LoRA training step vs full fine-tuning step, same ViT and batch, in one run.

    python benchmarks/lora_step.py [--preset vit_b16|glyph_vit] [--batch 32] [--rounds 7] [--steps 3]
                                   [--threads 1] [--device cpu|cuda]

LoRA = peft adapters (r 16, alpha 16) on q and v of every block (``clplat.backbones.lora``), backbone
frozen, linear head trained; full FT = every backbone weight and the head trained. Both use SGD with
Nesterov momentum (CoACT's optimiser) and cross-entropy on random inputs.

Reported: trainable parameters (and their share of the backbone), optimizer-state bytes after a
step, step time (``--rounds`` interleaved rounds of ``--steps`` steps each, LoRA then full in every
round so machine noise hits both alike; median and range of the per-step time) and peak memory of a
few steps, each mode in its own fresh process (CUDA: max allocated; CPU: peak RSS growth over the
built model). Targets (issue 8): trainable <= 1 % of the backbone, step time <= 0.8x full FT.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch
import torch.nn.functional as F

PRESETS = {
    "vit_b16": {"name": "vit_base_patch16_224", "kwargs": {}, "image_size": 224, "classes": 100},
    "glyph_vit": {"name": "vit_tiny_patch16_224", "image_size": 32, "classes": 100,
                  "kwargs": {"patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4}},
}
MODES = ("lora", "full")


def build(preset: dict, mode: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    import timm

    from clplat.backbones.lora import LoraSpec, add_lora

    torch.manual_seed(0)
    vit = timm.create_model(preset["name"], pretrained=False, num_classes=0,
                            img_size=preset["image_size"], **preset["kwargs"])
    if mode == "lora":
        vit = add_lora(vit, LoraSpec())  # freezes all but the adapters
    head = torch.nn.Linear(vit.num_features, preset["classes"])
    vit.to(device).train()
    head.to(device)
    params = [p for p in [*vit.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return vit, head, opt


def make_step(vit, head, opt, x, y):
    def step() -> None:
        loss = F.cross_entropy(head(vit(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(preset: dict, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    s = preset["image_size"]
    x = torch.randn(batch, 3, s, s, generator=g).to(device)
    y = torch.randint(0, preset["classes"], (batch,), generator=g).to(device)
    return x, y


def counts(vit, head, opt) -> dict:
    backbone = sum(p.numel() for n, p in vit.named_parameters() if ".lora_" not in n)
    trainable = sum(p.numel() for p in [*vit.parameters(), *head.parameters()] if p.requires_grad)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t))
    return {"backbone_params": backbone, "trainable_params": trainable,
            "trainable_pct_of_backbone": 100 * trainable / backbone, "optimizer_state_bytes": state}


def _memory_worker(preset: dict, mode: str, device: str, batch: int, threads: int, queue) -> None:
    """Peak memory of a few steps of one mode in a fresh process (its own RSS high-water mark)."""
    torch.set_num_threads(threads)
    vit, head, opt = build(preset, mode, device)
    x, y = _inputs(preset, batch, device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    step = make_step(vit, head, opt, x, y)
    for _ in range(2):
        step()
    _sync(device)
    if device == "cuda":
        peak, kind = (torch.cuda.max_memory_allocated() - base) / 2**20, "CUDA max allocated over the model"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0, "peak RSS growth"
    queue.put({"mode": mode, "peak_mb": peak, "memory_kind": kind, **counts(vit, head, opt)})


def peak_memory(preset: dict, device: str, batch: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for mode in MODES:
        queue = ctx.Queue()
        proc = ctx.Process(target=_memory_worker, args=(preset, mode, device, batch, threads, queue))
        proc.start()
        out[mode] = queue.get()
        proc.join()
    return out


def step_times(preset: dict, device: str, batch: int, rounds: int, steps: int) -> dict:
    """Interleaved rounds: per round, ``steps`` LoRA steps then ``steps`` full-FT steps."""
    x, y = _inputs(preset, batch, device)
    runners = {m: make_step(*build(preset, m, device), x, y) for m in MODES}
    for run in runners.values():  # warm-up (allocator, kernels, optimizer state)
        run()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode, run in runners.items():
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                run()
            _sync(device)
            times[mode].append((time.perf_counter() - t) / steps)
    out = {m: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for m, v in times.items()}
    ratios = [a / b for a, b in zip(times["lora"], times["full"], strict=True)]
    out["ratio_lora_over_full"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="vit_b16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    mem = peak_memory(preset, args.device, args.batch, args.threads)
    times = step_times(preset, args.device, args.batch, args.rounds, args.steps)
    print(f"{args.preset} ({preset['name']}, {preset['image_size']} px), batch {args.batch}, "
          f"{args.device}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps")
    for mode in MODES:
        m, t = mem[mode], times[mode]
        print(f"{mode:>5}: trainable {m['trainable_params']:,} ({m['trainable_pct_of_backbone']:.2f} % of "
              f"backbone), optimizer state {m['optimizer_state_bytes'] / 2**20:.2f} MiB, step "
              f"{1e3 * t['median_s']:.1f} ms [{1e3 * t['min_s']:.1f}-{1e3 * t['max_s']:.1f}], "
              f"peak {m['peak_mb']:.0f} MB ({m['memory_kind']})")
    r = times["ratio_lora_over_full"]
    print(f"LoRA/full step time: median {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] (target <= 0.8x); "
          f"trainable {mem['lora']['trainable_pct_of_backbone']:.2f} % (target <= 1 %)")
    print(json.dumps({"args": vars(args), "memory": mem, "times": times}))


if __name__ == "__main__":
    main()
