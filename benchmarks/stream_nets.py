"""The networks of ``benchmarks/stream_step.py``, built once for every contender.

The seeded offline network (BatchNorm with random statistics, unfolded: the reference), the
BN-folded copy every contender runs, its per-position offline outputs (what a stream emits),
the sliding window's last-position output, the same network in continual-inference modules,
and the multiply-add counts behind the arithmetic floor.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEED = 0
NUM_CLASSES = 400
HEAD_WINDOW = {"x3d_s": 8, "r2plus1d_18": 2}  # positions the per-frame head averages


# ---------------------------------------------------------------- the networks (offline form)


def build_offline(name: str) -> nn.Module:
    """Seeded random weights and randomised BN statistics and affines (so folding really changes
    the weights); BatchNorm unfolded: the reference every contender is checked against."""
    torch.manual_seed(SEED)
    if name == "x3d_s":
        from clplat.streaming.models import x3d_s

        model = x3d_s(NUM_CLASSES, head_window=HEAD_WINDOW[name], dropout=0.0)
    elif name == "r2plus1d_18":
        from torchvision.models.video import r2plus1d_18

        model = r2plus1d_18(weights=None, num_classes=NUM_CLASSES)
    else:
        raise ValueError(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every ``Conv3d -> BatchNorm3d`` pair folded into the conv (torch's
    ``fuse_conv_bn_eval``) and the BN replaced by ``nn.Identity``: the network every contender
    runs, so none of them pays for BN at run time. Pairs are found in module order and the result
    is checked against the unfolded network in ``check_outputs``; a BN left over is an error."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for (conv_name, conv), (bn_name, bn) in zip(leaves, leaves[1:]):
        if isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d) and bn.num_features == conv.out_channels:
            model.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
            model.set_submodule(bn_name, nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise RuntimeError(f"BatchNorm not folded: {left}")
    return model


def build_network(name: str) -> nn.Module:
    """What every contender runs: the seeded network with BatchNorm folded."""
    return fold_batchnorm(build_offline(name))


def offline_positions(name: str, model: nn.Module, clip: Tensor) -> Tensor:
    """The offline network's per-position logits ``(B, K, P)``: what a stream emits, position by position.

    x3d_s: ``forward_frames`` (causal window head). r2plus1d_18: the torchvision backbone, then the
    spatial mean, a causal average over the last ``HEAD_WINDOW`` positions, and ``fc``.
    """
    if name == "x3d_s":
        return model.forward_frames(clip)
    s = _r2plus1d_backbone(model, clip).mean(dim=(3, 4))  # (B, C, P)
    w = HEAD_WINDOW[name]
    count = torch.arange(1, s.shape[-1] + 1, dtype=s.dtype, device=s.device).clamp(max=w)
    pooled = F.pad(s, (w - 1, 0)).unfold(-1, w, 1).sum(-1) / count
    return model.fc(pooled.transpose(1, 2)).transpose(1, 2)


def _r2plus1d_backbone(model: nn.Module, clip: Tensor) -> Tensor:
    x = clip
    for part in (model.stem, model.layer1, model.layer2, model.layer3, model.layer4):
        x = part(x)
    return x


def last_position_logits(name: str, model: nn.Module, clip: Tensor) -> Tensor:
    """The sliding window's work per output: the prediction for the newest position of ``clip``
    only, ``(B, K)`` (equal to ``offline_positions(...)[..., -1]``), computing only what it reads.

    x3d_s: the stem on the whole window; then each block only on the positions inside the last
    prediction's receptive cone (the head averages the last ``HEAD_WINDOW`` = 8 positions, and each
    block's 3-tap temporal conv widens the cone by one position towards the past, so with 16
    frames the top 8 of the 26 blocks skip 8, 7, ..., 1 early positions and the rest run on all);
    the 1x1x1 head conv on the last 8 positions; one average, one ``proj``/``fc``.
    r2plus1d_18: the backbone on the whole window (layer4's 2 positions both feed the head, and
    through its stride-2 convs every earlier position feeds them); the average of layer4's last
    ``HEAD_WINDOW`` = 2 positions and ``fc`` once (torchvision's global pool at 16 frames).
    """
    w = HEAD_WINDOW[name]
    if name == "x3d_s":
        feats = _x3d_last_positions(model, clip, w)
        return model.head.classify(model.head.features(feats[:, :, -w:]).mean(dim=(2, 3, 4)))
    return model.fc(_r2plus1d_backbone(model, clip)[:, :, -w:].mean(dim=(2, 3, 4)))


def _x3d_last_positions(model: nn.Module, clip: Tensor, w: int) -> Tensor:
    """x3d_s's backbone output, correct for (at least) its last ``w`` positions, each block run
    only on the input positions those need (symmetric 3-tap temporal convs, per-frame SE)."""
    x = model.stem(clip)
    blocks = [b for stage in model.stages for b in stage]
    assert not model.causal and all(b.conv_b.kernel_size[0] == 3 for b in blocks)
    assert all(isinstance(b.se, nn.Identity) or b.se.pool.window == 1 for b in blocks)
    t, start = x.shape[2], 0  # ``start``: the clip position of x[:, :, 0]
    for i, blk in enumerate(blocks):
        first_read = max(0, t - (w + len(blocks) - 1 - i) - 1)  # this block's output must hold
        if first_read > start:                                   # the last w + (blocks above) positions
            x, start = x[:, :, first_read - start:], first_read
        x = blk(x)
        if start > 0:  # its first output saw zero padding instead of the position before it
            x, start = x[:, :, 1:], start + 1
    return x


def build_clplat(name: str, model: nn.Module) -> nn.Module:
    from clplat.streaming import convert

    return convert(model, temporal_window=HEAD_WINDOW[name]).eval()


# ---------------------------------------------------------------- arithmetic: multiply-adds and the machine's peak


def count_macs(fn: Any, *args: Any) -> float:
    """Multiply-adds of ``fn(*args)`` by torch's FLOP counter (matmuls and convolutions; run on
    the meta device, so nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2


def arithmetic(name: str, size: int, window: int) -> dict[str, float]:
    """Multiply-adds per input frame of the network's steady-state stream (the floor's numerator)
    and of one sliding-window output.

    Per frame = (MACs of the per-position offline network on 64 frames - on 32 frames) / 32: every
    conv output and head position a stream computes once, edge effects cancelled, and a multiple
    of r2plus1d_18's temporal stride 8 so its 1-in-8 deep-layer steps are averaged in.
    """
    model = build_network(name).to("meta")

    def clip(t: int) -> Tensor:
        return torch.empty(1, 3, t, size, size, device="meta")

    per_frame = (count_macs(offline_positions, name, model, clip(64))
                 - count_macs(offline_positions, name, model, clip(32))) / 32
    return {"step_macs": per_frame, "sliding_macs": count_macs(last_position_logits, name, model, clip(window))}


# ---------------------------------------------------------------- continual-inference equivalents


class _PerPositionHead(nn.Module):
    """``(B, C, T, 1, 1) -> (B, K, T)``: a classifier applied at every position (frame-local)."""

    def __init__(self, classify: nn.Module) -> None:
        super().__init__()
        self.classify = classify

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(x.flatten(3).mean(-1).transpose(1, 2)).transpose(1, 2)


def _co_leaf(m: nn.Module) -> nn.Module:
    import continual as co

    if isinstance(m, nn.Conv3d):
        return co.Conv3d.build_from(m, temporal_fill="zeros")
    if isinstance(m, nn.ReLU | nn.SiLU):
        return co.forward_stepping(type(m)())
    return co.forward_stepping(copy.deepcopy(m))  # BN, SE (per-frame scope): frame-local


def _co_chain(mods: list[nn.Module]) -> nn.Module:
    import continual as co

    return co.Sequential(*[_co_leaf(m) for m in mods if not isinstance(m, nn.Identity)])


def _co_residual(main: nn.Module, shortcut: list[nn.Module] | None, act: nn.Module) -> nn.Module:
    """Residual block; a strided shortcut is delayed at the input rate so both branches align."""
    import continual as co

    if not shortcut:
        return co.Sequential(co.Residual(main), _co_leaf(act))
    short = co.Sequential(co.Delay(main.delay), *[_co_leaf(m) for m in shortcut])
    return co.Sequential(co.BroadcastReduce(main, short, reduce="sum", auto_delay=False), _co_leaf(act))


def _kept(seq: nn.Module) -> list[nn.Module]:
    """A shortcut's modules without the identities folding left behind."""
    return [m for m in seq if not isinstance(m, nn.Identity)]


def _leaves(m: nn.Module) -> list[nn.Module]:
    kids = list(m.children())
    if not kids or not isinstance(m, nn.Sequential):
        return [m]
    return [leaf for k in kids for leaf in _leaves(k)]


def build_co(name: str, model: nn.Module) -> nn.Module:
    """The same network and weights in continual-inference modules."""
    import continual as co

    w = HEAD_WINDOW[name]
    if name == "x3d_s":
        layers = [_co_chain(_leaves(model.stem))]
        for stage in model.stages:
            for blk in stage:
                main = _co_chain([m for _, m in blk.main_path()])
                short = None if blk.shortcut is None else _kept(blk.shortcut)
                layers.append(_co_residual(main, short, blk.act))
        h = model.head
        layers += [_co_chain([h.conv, h.bn, h.act]), co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=w)]
        head = nn.Sequential(h.proj, h.proj_act, h.fc)
    else:
        layers = [_co_chain(_leaves(model.stem))]
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for blk in layer:
                main = _co_chain(_leaves(blk.conv1) + _leaves(blk.conv2))
                short = None if blk.downsample is None else _kept(blk.downsample)
                layers.append(_co_residual(main, short, blk.relu))
        layers.append(co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=w))
        head = model.fc
    layers.append(co.forward_stepping(_PerPositionHead(copy.deepcopy(head))))
    return co.Sequential(*layers).eval()
