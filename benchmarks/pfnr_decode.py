"""PFNR speed and mask memory (issue 11): decoding frames/s of one session, training iterations/s,
and the stored masks bit-packed vs as ``torch.bool`` (target: >= 8x smaller).

Models are randomly initialised (speed does not depend on training); a session's mask is stored the
way ``on_session_end`` stores it and decoding goes through ``PFNR.decode`` (unpack the mask, masked
``functional_call``, the session's head), exactly as ``python -m clplat.pfnr decode`` does.

    python benchmarks/pfnr_decode.py                       # experiment size (xs 64x64) and 720p (paper size)
    python benchmarks/pfnr_decode.py --device cuda --frames 64
    python benchmarks/pfnr_decode.py --smoke               # tiny, seconds
Prints one line per setting (and ``--json PATH``); run on a quiet machine, threads pinned by --threads.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from clplat.backbones import build_backbone
from clplat.config import BackboneConfig
from clplat.pfnr.quality import fusion_loss
from clplat.strategies.pfnr import PFNR, PfnrConfig

SETTINGS = {  # name -> (frame size, backbone kwargs)
    "experiment": ((64, 64), {"size": "xs", "fso_block": 1, "fso_mode": "sum"}),
    "720p": ((720, 1280), {"size": "paper", "fso_block": 1, "fso_mode": "replace"}),
    "smoke_720p": ((720, 1280), {"size": "xs", "strides": [5, 2, 2, 2, 2], "fso_block": 1, "fso_mode": "replace"}),
}


def build(size: tuple[int, int], kwargs: dict, frames: int, c: float, device: str) -> PFNR:
    shape = (3, *size)
    s = PFNR(PfnrConfig(c=c, t_max=8), build_backbone(BackboneConfig(name="nerv", kwargs=kwargs), shape), 0, shape)
    s.on_session_start(0, None, SimpleNamespace(n_exposed=frames))
    s.on_session_end(0, None, None)  # session 0's mask stored bit-packed
    return s.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_fps(s: PFNR, device: str, repeats: int) -> float:
    s.decode(0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = s.decode(0)
    sync(device)
    return repeats * out.shape[0] / (time.perf_counter() - t0)


def train_its(s: PFNR, size: tuple[int, int], batch: int, steps: int, device: str) -> float:
    """Masked forward + backward + Adam step of session 1 (session 0's weights frozen)."""
    s.on_session_start(1, None, SimpleNamespace(n_exposed=int(s.offsets[1]) + batch))
    opt = torch.optim.Adam(**s.optimizer_param_groups(5e-4)[0])
    x = torch.rand(batch, 3, *size, device=device)
    frames = torch.arange(batch, device=device)

    def step() -> None:
        loss = fusion_loss(s.render(1, frames, train=True), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    s.verify_frozen()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["experiment", "720p"], choices=sorted(SETTINGS))
    p.add_argument("--frames", type=int, default=32, help="frames of the decoded session")
    p.add_argument("--decode-batch", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=8, help="720p uses 1, as the paper")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--c", type=float, default=50.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny: experiment + a narrow 720p model, 2 frames")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.settings, args.frames, args.steps, args.repeats = ["experiment", "smoke_720p"], 2, 2, 1
    rows = []
    for name in args.settings:
        size, kwargs = SETTINGS[name]
        s = build(size, kwargs, args.frames, args.c, args.device)
        s.cfg = s.cfg.model_copy(update={"decode_batch": args.decode_batch if size[0] < 256 else 1})
        packed, as_bool = s.mask_bytes()
        params = sum(p.numel() for p in s.body.parameters())
        row = {"setting": name, "size": list(size), "params": params, "decode_fps": decode_fps(s, args.device,
               args.repeats), "mask_bytes_packed": packed, "mask_bytes_bool": as_bool,
               "mask_ratio": as_bool / packed}
        row["train_it_s"] = train_its(s, size, args.train_batch if size[0] < 256 else 1, args.steps, args.device)
        rows.append(row)
        print(f"{name:12s} {size[0]}x{size[1]}  {params / 1e6:7.2f} M weights  decode {row['decode_fps']:8.2f} "
              f"frames/s  train {row['train_it_s']:7.2f} it/s  masks {packed / 2**20:8.3f} MiB packed vs "
              f"{as_bool / 2**20:8.3f} MiB bool ({row['mask_ratio']:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": args.device, "threads": args.threads, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
