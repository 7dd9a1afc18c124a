"""``python -m clplat.streaming.evflow train CONFIG [key=value ...]``: train an event-flow net by
sequential learning on synthetic scenes, then stream held-out scenes through it bin by bin.

The evaluation runs the network exactly as the demo does: one ``step`` per 10 ms bin from a fresh
state at the start of each held-out scene (the temporally-dense-flow repo's ``test_wo_reset``),
scoring every output whose 100 ms target window lies inside the scene, against the exact
displacement; a zero-flow predictor is scored the same way, as the floor. Weights go to a
safetensors file whose header holds the model description, with a JSON beside it (config,
metrics, parameters, command).
"""

from __future__ import annotations

import logging
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from clplat.streaming.evflow.config import EventFlowTrainConfig, load_evflow_config
from clplat.streaming.evflow.data import SceneTensors, WindowDataset, render_scenes
from clplat.streaming.evflow.metrics import FlowScores
from clplat.streaming.evflow.module import SequentialFlowModule
from clplat.streaming.evflow.weights import FORMAT, save_event_flow
from clplat.streaming.models.evflow_common import FlowUNet, build_evflow
from clplat.streaming.sinks import write_json

__all__ = ["evaluate_stream", "main", "run_training"]


@torch.inference_mode()
def evaluate_stream(model: FlowUNet, scenes: SceneTensors, target_bins: int) -> dict[str, Any]:
    """Step every held-out scene bin by bin; EPE/nPE of the net and of zero flow, from the first
    bin whose ``target_bins`` window lies in the scene. Also the largest |step - sequence| gap."""
    model.eval()
    net, zero = FlowScores(), FlowScores()
    gap = 0.0
    for i in range(scenes["bins"].shape[0]):
        bins = scenes["bins"][i].float()  # (T, 2, H, W)
        flow, valid = scenes["flow"][i].float(), scenes["valid"][i]
        seen = torch.nn.functional.avg_pool1d(  # any event in the target window, per pixel
            (bins.sum(1) > 0).float().flatten(1).T[:, None], target_bins, 1).squeeze(1).T.view(-1, *valid.shape[1:]) > 0
        state, outs = None, []
        for k in range(bins.shape[0]):
            y, state = model.step(bins[k : k + 1], state)
            outs.append(y[0])
        pred = torch.stack(outs)[target_bins - 1:]
        net.add(pred, flow[target_bins - 1:], valid[target_bins - 1:], seen)
        zero.add(torch.zeros_like(pred), flow[target_bins - 1:], valid[target_bins - 1:], seen)
        if i == 0:
            offline = model.forward_sequence(bins.movedim(0, 1)[None])[0][0].movedim(1, 0)
            gap = float((offline[target_bins - 1:] - pred).abs().max())
    return {"model": net.summary(), "zero_flow": zero.summary(), "stream_vs_sequence_max_abs": gap,
            "scenes": int(scenes["bins"].shape[0])}


def _fit(cfg: EventFlowTrainConfig, model: FlowUNet, scenes: SceneTensors, run_dir: Path) -> dict[str, float]:
    t = cfg.train
    ds = WindowDataset(scenes, t.warmup_bins, t.grad_bins, t.loss_bins, t.offset_stride)
    loader = DataLoader(ds, batch_size=t.batch_size, shuffle=True, drop_last=len(ds) > t.batch_size,
                        generator=torch.Generator().manual_seed(cfg.seed))
    trainer = L.Trainer(max_epochs=t.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=t.progress,
                        enable_model_summary=False, deterministic=True, default_root_dir=str(run_dir),
                        log_every_n_steps=10)
    trainer.fit(SequentialFlowModule(model, t.lr, t.weight_decay, t.warmup_bins), loader)
    return {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("train_")} | {
        "train_windows": len(ds), "optimizer_steps": int(trainer.global_step)}


def run_training(cfg: EventFlowTrainConfig, command: str = "") -> dict[str, Any]:
    """Train, evaluate on held-out scenes, save; returns the saved header. Deterministic for one seed."""
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_evflow(cfg.model)
    train = render_scenes(cfg.data, "train", cfg.seed)
    run_dir = Path(cfg.output.runs_dir) / cfg.name
    t_fit = time.perf_counter()
    metrics: dict[str, Any] = _fit(cfg, model, train, run_dir)
    metrics["train_seconds"] = round(time.perf_counter() - t_fit, 1)
    del train
    test = render_scenes(cfg.data, "test", cfg.seed)
    metrics["held_out"] = evaluate_stream(model, test, cfg.data.target_bins)
    meta = {"format": FORMAT, "name": cfg.name, "model": cfg.model.model_dump(mode="json"),
            "input": {"bin_us": cfg.data.bin_ms * 1000, "channels": "0 = ON, 1 = OFF; bilinear counts",
                      "flow": f"px over the {cfg.data.target_bins} bins ending with the input bin"},
            "target_bins": cfg.data.target_bins, "data": cfg.data.model_dump(mode="json"),
            "config": cfg.model_dump(mode="json"), "metrics": metrics,
            "parameters": sum(p.numel() for p in model.parameters()), "command": command,
            "torch": torch.__version__}
    weights = Path(cfg.output.weights) if cfg.output.weights else run_dir / "model.safetensors"
    save_event_flow(weights, model, meta)
    write_json(run_dir / "results.json", meta)
    _report(meta, weights, time.perf_counter() - t0)
    return meta


def _report(meta: dict[str, Any], weights: Path, seconds: float) -> None:
    h = meta["metrics"]["held_out"]
    m, z = h["model"], h["zero_flow"]
    print(f"saved {weights} ({weights.stat().st_size / 1e6:.2f} MB); {meta['parameters']} parameters; "
          f"{seconds:.0f} s total")
    print(f"held-out ({h['scenes']} scenes, {m['bins']} bins): EPE {m['epe']:.3f} px "
          f"(event pixels {m['epe_event_pixels']}), 1PE {m['1pe']:.1f}% 3PE {m['3pe']:.1f}% 5PE {m['5pe']:.1f}% "
          f"| zero flow EPE {z['epe']:.3f}, 3PE {z['3pe']:.1f}%; "
          f"stream vs sequence {h['stream_vs_sequence_max_abs']:.1e}")


def main(argv: list[str]) -> int:
    """``CONFIG [key=value ...]`` (argv without the ``train`` word); errors raise UserError."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m clplat.streaming.evflow train CONFIG.yaml [key.sub=value ...]")
        return 0 if argv else 2
    cfg = load_evflow_config(argv[0], argv[1:])
    command = "python -m clplat.streaming.evflow train " + " ".join(shlex.quote(a) for a in argv)
    run_training(cfg, command=command)
    return 0
