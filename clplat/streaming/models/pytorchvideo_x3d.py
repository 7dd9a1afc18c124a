"""pytorchvideo's Kinetics-400 X3D checkpoints (``x3d_xs``, ``x3d_s``, ``x3d_m``) on clplat's ``X3DS``.

pytorchvideo is not imported: its state dict layout (``create_x3d``'s ``blocks.0`` stem,
``blocks.1-4.res_blocks.j`` bottlenecks, ``blocks.5`` head) is mapped key by key onto
:class:`~clplat.streaming.models.x3d.X3DS`. The three hub sizes share one network (depth factor
2.2, width factor 2.0: stages of 3/5/11/7 blocks, widths 24-192); they differ only in the clip
they were evaluated on (``X3D_PRESETS``: pytorchvideo's hub recipe, 30 frames/s sources).

Two differences from pytorchvideo's modules, both exact up to float rounding:

- its stage-1 shortcut is a strided 1x1x1 conv with no BatchNorm (widths equal); ours has one,
  set to the identity;
- its head's ``post_conv`` (1x1x1, no bias) after the pool is our ``head.proj`` (Linear, bias 0).

One that is not: pytorchvideo's squeeze-excite averages each block's features over the whole
clip (T, H, W). Offline, :func:`build_x3d` with ``se_window=None`` reproduces that
(:class:`ClipSqueezeExcite`, not streamable); a stream can only average the last ``se_window``
positions (X3DS's causal SE), so the streamed model is close to, not equal to, the clip model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clplat.streaming.convert import ConvertOptions, register_converter
from clplat.streaming.models.x3d import X3DS, X3DSqueezeExcite
from clplat.streaming.module import StreamModule

__all__ = ["X3D_PRESETS", "ClipSqueezeExcite", "X3DPreset", "build_x3d", "expected_pytorchvideo_shapes",
           "from_pytorchvideo_state"]


@dataclass(frozen=True)
class X3DPreset:
    """pytorchvideo hub evaluation of one X3D size: ``num_frames`` frames taken every
    ``sampling_rate``-th frame of a 30 frames/s video, short side scaled to ``side``, centre crop
    ``crop``, mean/std 0.45/0.225."""

    num_frames: int
    sampling_rate: int
    side: int
    crop: int
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    source_fps: float = 30.0

    @property
    def frame_rate(self) -> float:
        """Frames per second the model sees (30 / sampling rate)."""
        return self.source_fps / self.sampling_rate


# x3d_l is left out: the hub gives no evaluation recipe for it (see docs/streaming_demo.md)
X3D_PRESETS: dict[str, X3DPreset] = {
    "x3d_xs": X3DPreset(num_frames=4, sampling_rate=12, side=182, crop=182),
    "x3d_s": X3DPreset(num_frames=13, sampling_rate=6, side=182, crop=182),
    "x3d_m": X3DPreset(num_frames=16, sampling_rate=5, side=256, crop=256),
}
DEPTHS = (3, 5, 11, 7)  # ceil(2.2 x (1, 2, 5, 3)): pytorchvideo's round_repeats at depth factor 2.2


def _pv_round_width(width: float, divisor: int = 8) -> int:
    """pytorchvideo's ``round_width``: nearest multiple of 8, one more step if that lost > 10%."""
    out = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * width else out


class ClipSqueezeExcite(X3DSqueezeExcite):
    """pytorchvideo's squeeze-excite: the squeeze is the mean over the whole clip (T, H, W).
    Offline only (it needs frames that have not arrived yet); conversion refuses it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean(dim=(2, 3, 4), keepdim=True)))))


@register_converter(ClipSqueezeExcite)
def _refuse_clip_se(m: ClipSqueezeExcite, opts: ConvertOptions) -> StreamModule:
    raise NotImplementedError("a squeeze-excite over the whole clip has no causal step; "
                              "build the model with a causal se_window")


def build_x3d(num_classes: int = 400, se_window: int | None = None, head_window: int | None = None) -> X3DS:
    """X3D-XS/S/M (one network) in pytorchvideo's sizes. ``se_window=None``: SE over the whole clip
    (pytorchvideo's offline model); an int: SE over the last ``se_window`` positions (streamable)."""
    net = X3DS(num_classes, width=24, depths=DEPTHS, expansion=2.25, fc_width=2048, se_ratio=0.0625,
               se_window=se_window or 1, head_window=head_window, causal=False, dropout=0.0)
    for block in net.stages.modules():
        if isinstance(getattr(block, "se", None), X3DSqueezeExcite):
            channels = block.conv_b.out_channels
            hidden = _pv_round_width(channels * 0.0625)  # X3DS rounds 27 to 24, pytorchvideo to 32
            cls = ClipSqueezeExcite if se_window is None else X3DSqueezeExcite
            block.se = cls(channels, hidden, se_window or 1)
    return net


def _module_pairs(net: X3DS) -> list[tuple[str, str]]:
    """(pytorchvideo module path, X3DS module path) for every module holding weights."""
    pairs = [("blocks.0.conv.conv_t", "stem.0"), ("blocks.0.conv.conv_xy", "stem.2"), ("blocks.0.norm", "stem.3")]
    for s, stage in enumerate(net.stages):
        for j, block in enumerate(stage):
            pv, ours, b = f"blocks.{s + 1}.res_blocks.{j}", f"stages.{s}.{j}", f"blocks.{s + 1}.res_blocks.{j}.branch2"
            if block.shortcut is not None:
                pairs.append((f"{pv}.branch1_conv", f"{ours}.shortcut.0"))
                if block.shortcut[0].in_channels != block.shortcut[0].out_channels:
                    pairs.append((f"{pv}.branch1_norm", f"{ours}.shortcut.1"))
            se = isinstance(block.se, X3DSqueezeExcite)  # norm_b is a Sequential even without SE
            pairs += [(f"{b}.conv_a", f"{ours}.conv_a"), (f"{b}.norm_a", f"{ours}.bn_a"),
                      (f"{b}.conv_b", f"{ours}.conv_b"), (f"{b}.norm_b.0", f"{ours}.bn_b")]
            if se:
                pairs += [(f"{b}.norm_b.1.block.0", f"{ours}.se.fc1"), (f"{b}.norm_b.1.block.2", f"{ours}.se.fc2")]
            pairs += [(f"{b}.conv_c", f"{ours}.conv_c"), (f"{b}.norm_c", f"{ours}.bn_c")]
    head = f"blocks.{len(net.stages) + 1}"
    return pairs + [(f"{head}.pool.pre_conv", "head.conv"), (f"{head}.pool.pre_norm", "head.bn"),
                    (f"{head}.pool.post_conv", "head.proj"), (f"{head}.proj", "head.fc")]


def _key_map(net: X3DS) -> dict[str, str]:
    """pytorchvideo state dict key -> X3DS key (``post_conv`` has no bias: ours stays 0)."""
    own = net.state_dict()
    out = {}
    for pv, ours in _module_pairs(net):
        for key in own:
            if key.startswith(ours + "."):
                name = key[len(ours) + 1:]
                if not (pv.endswith("post_conv") and name == "bias"):
                    out[f"{pv}.{name}"] = key
    return out


def expected_pytorchvideo_shapes(net: X3DS) -> dict[str, tuple[int, ...]]:
    """Every key of a pytorchvideo state dict for ``net``, with its shape."""
    own = net.state_dict()
    shapes = {pv: tuple(own[ours].shape) for pv, ours in _key_map(net).items()}
    for pv, ours in _key_map(net).items():
        if ours == "head.proj.weight":
            shapes[pv] = (*shapes[pv], 1, 1, 1)  # a 1x1x1 conv in pytorchvideo
    return shapes


def state_mismatch(net: X3DS, state: Mapping[str, Tensor], limit: int = 3) -> str | None:
    """What keeps ``state`` (pytorchvideo layout) from loading into ``net``, in its own key names."""
    want = expected_pytorchvideo_shapes(net)
    shapes = [f"{k} {list(state[k].shape)} in file vs {list(v)} expected" for k, v in want.items()
              if k in state and tuple(state[k].shape) != v]
    parts = []
    for label, items in (("shape mismatch: ", shapes), ("missing keys: ", [k for k in want if k not in state]),
                         ("unexpected keys: ", [k for k in state if k not in want])):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(label + ", ".join(items[:limit]) + more)
    return "; ".join(parts) or None


def from_pytorchvideo_state(net: X3DS, state: Mapping[str, Tensor]) -> X3DS:
    """Load a pytorchvideo X3D state dict into ``net`` (built by :func:`build_x3d`). Raises
    ``ValueError`` naming the first mismatching keys when ``state`` does not fit."""
    problem = state_mismatch(net, state)
    if problem:
        raise ValueError(problem)
    ours = net.state_dict()
    for pv, key in _key_map(net).items():
        ours[key] = state[pv].reshape(ours[key].shape).to(ours[key].dtype)
    for block in net.stages.modules():  # pytorchvideo's BN-less shortcut: an identity BatchNorm
        short = getattr(block, "shortcut", None)
        if short is not None and short[0].in_channels == short[0].out_channels:
            prefix = next(n for n, m in net.named_modules() if m is short[1])
            bn = short[1]
            ours[f"{prefix}.running_mean"] = torch.zeros_like(bn.running_mean)
            ours[f"{prefix}.running_var"] = torch.ones_like(bn.running_var)
            ours[f"{prefix}.weight"] = torch.full_like(bn.weight, (1.0 + bn.eps) ** 0.5)
            ours[f"{prefix}.bias"] = torch.zeros_like(bn.bias)
    ours["head.proj.bias"] = torch.zeros_like(ours["head.proj.bias"])
    net.load_state_dict(ours)
    return net


def clip_model(num_classes: int, state: Mapping[str, Tensor]) -> nn.Module:
    """pytorchvideo's offline X3D (SE over the whole clip) with ``state``: the reference a stream
    approximates."""
    return from_pytorchvideo_state(build_x3d(num_classes, se_window=None), state).eval()
