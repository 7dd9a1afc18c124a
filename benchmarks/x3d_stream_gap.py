"""How far the streamed pytorchvideo X3D is from pytorchvideo's clip model (docs/streaming_demo.md).

A random-weights X3D in pytorchvideo's layout (``create_x3d``; needs the ``test`` extra) is loaded
the way the demo loads a checkpoint and streamed frame by frame over a drifting-noise video. Each
prediction (position ``p``, emitted ``delay`` frames later) is compared with:

- pytorchvideo's model on the ``clip_len`` frames ``p-clip_len+1 .. p`` (the reference);
- clplat's X3D with the stream's causal SE run on that same clip (splits the gap into the SE
  scope, reference vs this, and the clip's edges, this vs the stream).

Per pair: max |a-b| / max |b|, and on the input-dependent part (logits minus their mean over the
clips) the gap relative to its spread, the correlation and the top-1 agreement. Not a timing.

    python benchmarks/x3d_stream_gap.py                      # x3d_s sizes, 64 px, 60 frames
    python benchmarks/x3d_stream_gap.py --final-bn-scale 0.1 # residual-dominant blocks
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import Tensor


def _random_pytorchvideo(clip_len: int, size: int, final_bn_scale: float, seed: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorchvideo.models.x3d import create_x3d
    torch.manual_seed(seed)
    pv = create_x3d(input_clip_length=clip_len, input_crop_size=size, head_activation=None).eval()
    with torch.no_grad():
        for name, m in pv.named_modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                if name.endswith("norm_c"):
                    m.weight.mul_(final_bn_scale)
                    m.bias.mul_(final_bn_scale)
        pv.blocks[-1].proj.weight.mul_(50.0)
    return pv


def _compare(name: str, a: Tensor, b: Tensor) -> None:
    ac, bc = a - a.mean(0), b - b.mean(0)
    corr = torch.corrcoef(torch.stack([ac.flatten(), bc.flatten()]))[0, 1]
    print(f"{name}: max|a-b|/max|b| {float((a - b).abs().max() / b.abs().max()):.4f}  "
          f"top-1 {float((a.argmax(1) == b.argmax(1)).float().mean()):.2f}  |  input-dependent part: "
          f"gap/spread {float((ac - bc).abs().max() / bc.abs().max()):.3f}  corr {float(corr):.3f}  "
          f"top-1 {float((ac.argmax(1) == bc.argmax(1)).float().mean()):.2f}")


def main() -> None:
    from clplat.streaming import convert
    from clplat.streaming.models.pytorchvideo_x3d import build_x3d, from_pytorchvideo_state

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip-len", type=int, default=13)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--final-bn-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    L, S, N = args.clip_len, args.size, args.frames
    pv = _random_pytorchvideo(L, S, args.final_bn_scale, args.seed)
    net = from_pytorchvideo_state(build_x3d(400, se_window=L, head_window=L), pv.state_dict()).eval()
    stream = convert(net)
    g = torch.Generator().manual_seed(args.seed + 1)
    wide = torch.nn.functional.avg_pool2d(torch.randn(1, 3, S, S + 3 * N, generator=g), 5, 1, 2) * 3
    video = torch.stack([wide[0, :, :, 3 * i: 3 * i + S] for i in range(N)], 1)[None]  # pans 3 px/frame
    ys, refs, mids, state = [], [], [], None
    with torch.no_grad():
        for t in range(N):
            y, state = stream.step(video[:, :, t], state)
            pos = t - stream.delay
            if y is None or pos < L - 1:
                continue
            clip = video[:, :, pos - L + 1: pos + 1]
            ys.append(y.reshape(-1))
            refs.append(pv(clip)[0])
            mids.append(net(clip)[0])
    print(f"x3d, clip {L}, {S} px, delay {stream.delay}, {len(ys)} predictions compared, "
          f"final BN x{args.final_bn_scale}")
    stream_y, ref, mid = torch.stack(ys), torch.stack(refs), torch.stack(mids)
    _compare("stream vs pytorchvideo on the clip     ", stream_y, ref)
    _compare("causal-SE model on the clip vs pytorchvideo", mid, ref)
    _compare("stream vs causal-SE model on the clip  ", stream_y, mid)


if __name__ == "__main__":
    main()
