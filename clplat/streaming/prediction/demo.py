"""``python -m clplat.streaming.prediction demo [--model NAME_OR_PATH] [--out predict.mp4] ...``

Plays a held-out bouncing-digits video through a trained predictor one frame at a time: during
the ``--context`` frames the model sees the truth; after that it imagines, each predicted frame
fed back as its next input. Every output frame shows the truth (left) beside the model's
prediction of that frame (right). Headless: frames go to a video file, and the per-frame step
latencies (``LatencyStats``) and the per-frame MSE go to a JSON beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clplat.data.bouncing_digits import BouncingDigits, BouncingDigitsSpec
from clplat.errors import UserError
from clplat.streaming.prediction.run import load_predictor
from clplat.streaming.sinks import LatencyStats, VideoFileSink, annotate, write_json

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
SHIPPED = {"convs5_moving_digits": "convs5_moving_digits.safetensors"}


def resolve_predictor(name_or_path: str) -> Path:
    """A shipped predictor name or a path to a ``.safetensors`` written by the train command."""
    if name_or_path in SHIPPED:
        path = WEIGHTS_DIR / SHIPPED[name_or_path]
        if not path.is_file():
            raise UserError(f"shipped model '{name_or_path}' is missing from {WEIGHTS_DIR} (reinstall clplat)")
        return path
    return Path(name_or_path)


def _panel(truth: np.ndarray, pred: np.ndarray, lines: list[str]) -> np.ndarray:
    """Grey ``(H, W)`` frames in [0, 1] side by side (truth | prediction), annotated, BGR."""
    gap = np.full((truth.shape[0], 2), 0.5, dtype=np.float32)
    row = np.concatenate([truth, gap, pred], axis=1)
    rgb = np.repeat((np.clip(row, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return annotate(rgb, lines, min_side=256)


def play_prediction(model_path: str, out: str, context: int, horizon: int, seed: int,
                    video_index: int = 0) -> dict[str, Any]:
    """Step the model over context + horizon frames; returns the statistics written beside ``out``."""
    if context < 1 or horizon < 1:
        raise UserError(f"--context and --horizon must be >= 1, got {context}, {horizon}")
    model, meta = load_predictor(resolve_predictor(model_path))
    d = meta.get("data", {})
    spec = BouncingDigitsSpec(canvas=d.get("canvas", 64), digit_size=d.get("digit_size", 28),
                              digits=d.get("digits", 2), speed=tuple(d.get("speed", (2.0, 4.0))))
    video = BouncingDigits("test", video_index + 1, spec, seed=seed).video(video_index, context + horizon)
    truth = torch.from_numpy(video).float().div(255.0)[:, None, None]  # (T, 1, 1, H, W)
    sink, stats, mse = VideoFileSink(out, fps=8), LatencyStats(), []
    state, pred = None, torch.zeros_like(truth[0])
    try:
        with torch.no_grad():
            for t in range(context + horizon):
                imagining = t >= context
                frame_in = pred if imagining else truth[t]
                if t > 0:
                    mse.append(float(((pred - truth[t]) ** 2).mean()))
                label = f"imagined +{t - context + 1}" if imagining else f"context {t + 1}/{context}"
                sink.write(_panel(truth[t, 0, 0].numpy(), pred[0, 0].numpy() if t else truth[t, 0, 0].numpy(),
                                  [f"frame {t + 1}: {label}", "truth | model"]))
                t0 = time.perf_counter()
                logits, state = model.step(frame_in, state)
                stats.add(time.perf_counter() - t0)
                pred = torch.sigmoid(logits)
    except BaseException:
        sink.close(keep=False)
        raise
    path = sink.close()
    result = {"model": str(model_path), "core": meta.get("model", {}).get("core"), "context": context,
              "horizon": horizon, "latency": stats.summary(), "mse_per_frame": [round(m, 5) for m in mse],
              "mse_imagined_mean": round(float(np.mean(mse[context - 1:])), 5), "video": str(path)}
    write_json(Path(out).with_suffix(".json"), result)
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m clplat.streaming.prediction demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convs5_moving_digits",
                   help=f"shipped ({', '.join(SHIPPED)}) or a .safetensors written by the train command")
    p.add_argument("--out", default="predict.mp4")
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--horizon", type=int, default=40)
    p.add_argument("--seed", type=int, default=1, help="seed of the held-out video")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    r = play_prediction(args.model, args.out, args.context, args.horizon, args.seed)
    lat = r["latency"]
    print(f"wrote {r['video']} ({args.context} context + {args.horizon} imagined frames); step latency "
          f"p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms; imagined-frame MSE {r['mse_imagined_mean']:.4f}")
    return 0
