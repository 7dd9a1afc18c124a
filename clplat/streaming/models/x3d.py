"""X3D-S-like video classifier (offline form), ready to be streamed by ``clplat.streaming.convert``.

The network follows X3D (Feichtenhofer, CVPR 2020; pytorchvideo's layout): a stem with a spatial
(1,3,3) conv and a depthwise temporal (5,1,1) conv, four stages of bottleneck blocks
(1x1x1 -> depthwise 3x3x3 -> SE -> SiLU -> 1x1x1, residual, ReLU), and a head
(1x1x1 conv -> global average pool -> linear -> ReLU -> dropout -> linear).

Constructor (stable; other code builds it by these names)::

    X3DS(num_classes, in_channels=3, width=24, depths=(1, 2, 2, 1), expansion=2.25,
         head_width=None, fc_width=256, se_ratio=0.0625, se_window=1, head_window=None,
         causal=False, dropout=0.0)

- ``width``: channels of the stem and of stage 1; stages use width x (1, 2, 4, 8).
- ``depths``: blocks per stage. The defaults train on 2 CPU cores at 32-64 px;
  ``x3d_s(num_classes)`` gives the real X3D-S sizes (depths (3, 5, 11, 7), fc 2048, 160 px).
- ``se_window``: the squeeze of every SE block averages the last ``se_window`` frames
  (1 = per-frame scope). X3D's clip-wide SE cannot be computed causally, so it is not offered.
- ``head_window``: frames averaged by the per-frame head (None = every frame so far).
- ``causal``: temporal convs pad only on the left (no look-ahead), so a stream has zero delay.

Outputs: ``forward(clip)`` -> ``(B, num_classes)`` logits from the global average over the whole
clip (the usual clip classifier); ``forward_frames(clip)`` -> ``(B, num_classes, T)``, one
prediction per frame position ``t`` from the average of positions ``t-head_window+1 .. t``
(counting only positions >= 0). ``forward_frames`` is what the streaming form emits, one
position per step after the network's delay.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.kernels import triton_forced, x3d_block_cpu
from clplat.streaming.containers import Delay, Residual, StreamSequential, _chain_step
from clplat.streaming.conv import ContinualConv3d
from clplat.streaming.convert import ConvertOptions, convert_chain, convert_module, register_converter
from clplat.streaming.models.x3d_stem import X3DStemStream
from clplat.streaming.module import FrameLocal, State, StreamModule, tick
from clplat.streaming.pool import WindowAvgPool

__all__ = [
    "X3DS", "X3DBlock", "X3DBlockStream", "X3DStemStream", "X3DHead", "X3DSqueezeExcite",
    "TemporalWindowAvg", "x3d_s",
]


def _round_width(width: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never below it), as X3D does for SE."""
    return max(divisor, int(width + divisor / 2) // divisor * divisor)


def _temporal_pad(kernel_t: int, causal: bool) -> nn.Module:
    """Left-only zero padding in time for causal convs; identity when the conv pads itself."""
    if causal and kernel_t > 1:
        return nn.ConstantPad3d((0, 0, 0, 0, kernel_t - 1, 0), 0.0)
    return nn.Identity()


class TemporalWindowAvg(nn.Module):
    """Causal temporal window average of per-frame spatial means.

    ``(B, C, T, H, W) -> (B, C, T, 1, 1)``; output ``t`` averages the spatial means of positions
    ``max(0, t-window+1) .. t`` (``window=None``: all positions ``0 .. t``). Dividing by the number
    of real positions (not the window) keeps the first predictions of a stream unbiased.
    """

    def __init__(self, window: int | None = None) -> None:
        super().__init__()
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(3, 4))  # (B, C, T)
        t = s.shape[-1]
        count = torch.arange(1, t + 1, device=x.device, dtype=s.dtype)
        if self.window is None:
            out = s.cumsum(-1) / count
        else:
            w = self.window
            out = F.pad(s, (w - 1, 0)).unfold(-1, w, 1).sum(-1) / count.clamp(max=w)
        return out[..., None, None]

    def extra_repr(self) -> str:
        return f"window={self.window}"


class X3DSqueezeExcite(nn.Module):
    """Squeeze-excite whose squeeze is a causal window average (``window=1``: per frame)."""

    def __init__(self, channels: int, hidden: int, window: int = 1) -> None:
        super().__init__()
        self.pool = TemporalWindowAvg(window)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv3d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class X3DBlock(nn.Module):
    """X3D bottleneck: 1x1x1 -> depthwise (kt,3,3) -> [SE] -> SiLU -> 1x1x1, plus a residual."""

    def __init__(
        self,
        in_channels: int,
        inner_channels: int,
        out_channels: int,
        spatial_stride: int = 1,
        se_hidden: int | None = None,
        se_window: int = 1,
        causal: bool = False,
        kernel_t: int = 3,
    ) -> None:
        super().__init__()
        s = spatial_stride
        self.conv_a = nn.Conv3d(in_channels, inner_channels, 1, bias=False)
        self.bn_a = nn.BatchNorm3d(inner_channels)
        self.act_a = nn.ReLU()
        self.pad_b = _temporal_pad(kernel_t, causal)
        self.conv_b = nn.Conv3d(
            inner_channels,
            inner_channels,
            (kernel_t, 3, 3),
            stride=(1, s, s),
            padding=(0 if causal else kernel_t // 2, 1, 1),
            groups=inner_channels,
            bias=False,
        )
        self.bn_b = nn.BatchNorm3d(inner_channels)
        self.se = X3DSqueezeExcite(inner_channels, se_hidden, se_window) if se_hidden else nn.Identity()
        self.act_b = nn.SiLU()
        self.conv_c = nn.Conv3d(inner_channels, out_channels, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(out_channels)
        self.shortcut: nn.Module | None = None
        if s != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(1, s, s), bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.act = nn.ReLU()

    def main_path(self) -> list[tuple[str, nn.Module]]:
        """The residual branch as named children, in order (the converter reads this)."""
        names = ["conv_a", "bn_a", "act_a", "pad_b", "conv_b", "bn_b", "se", "act_b", "conv_c", "bn_c"]
        return [(n, getattr(self, n)) for n in names]

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for _, m in self.main_path():
            y = m(y)
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(y + skip)


class X3DHead(nn.Module):
    """1x1x1 conv + BN + ReLU, then temporal pooling, then a two-layer MLP classifier."""

    def __init__(
        self,
        in_channels: int,
        head_width: int,
        fc_width: int,
        num_classes: int,
        window: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, head_width, 1, bias=False)
        self.bn = nn.BatchNorm3d(head_width)
        self.act = nn.ReLU()
        self.pool = TemporalWindowAvg(window)
        self.proj = nn.Linear(head_width, fc_width)
        self.proj_act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(fc_width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def classify(self, pooled: Tensor) -> Tensor:
        """``(..., head_width) -> (..., num_classes)``."""
        return self.fc(self.dropout(self.proj_act(self.proj(pooled))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x).mean(dim=(2, 3, 4)))

    def forward_frames(self, x: Tensor) -> Tensor:
        pooled = self.pool(self.features(x)).flatten(3)[..., 0]  # (B, C, T)
        return self.classify(pooled.transpose(1, 2)).transpose(1, 2)


class X3DS(nn.Module):
    """X3D-S-like classifier; see the module docstring for the constructor and the two outputs."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 24,
        depths: tuple[int, ...] = (1, 2, 2, 1),
        expansion: float = 2.25,
        head_width: int | None = None,
        fc_width: int = 256,
        se_ratio: float = 0.0625,
        se_window: int = 1,
        head_window: int | None = None,
        causal: bool = False,
        dropout: float = 0.0,
        stem_kernel_t: int = 5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.causal = causal
        k = stem_kernel_t
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            _temporal_pad(k, causal),
            nn.Conv3d(
                width, width, (k, 1, 1), padding=(0 if causal else k // 2, 0, 0), groups=width, bias=False
            ),
            nn.BatchNorm3d(width),
            nn.ReLU(),
        )
        stages = []
        c_in = width
        for i, depth in enumerate(depths):
            c_out = width * 2**i
            inner = int(round(c_out * expansion))
            blocks = []
            for j in range(depth):
                se_hidden = _round_width(inner * se_ratio) if (se_ratio > 0 and j % 2 == 0) else None
                blocks.append(X3DBlock(c_in, inner, c_out, 2 if j == 0 else 1, se_hidden, se_window, causal))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        hw = head_width or int(round(c_in * expansion))
        self.head = X3DHead(c_in, hw, fc_width, num_classes, head_window, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def backbone(self, clip: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, C', T, H/32, W/32)`` before the head."""
        return self.stages(self.stem(clip))

    def forward(self, clip: Tensor) -> Tensor:
        """Clip logits ``(B, num_classes)`` from the global average over all positions."""
        return self.head(self.backbone(clip))

    def forward_frames(self, clip: Tensor) -> Tensor:
        """Per-frame logits ``(B, num_classes, T)`` from the causal window head."""
        return self.head.forward_frames(self.backbone(clip))


def x3d_s(num_classes: int = 400, **kwargs) -> X3DS:
    """The real X3D-S sizes (3.8 M parameters at 400 classes; meant for 160 px, 13 frames)."""
    cfg = dict(width=24, depths=(3, 5, 11, 7), fc_width=2048, dropout=0.5)
    cfg.update(kwargs)
    return X3DS(num_classes, **cfg)


# ----- streaming conversion (used by clplat.streaming.convert) --------------------------------


@register_converter(TemporalWindowAvg)
def _convert_window_avg(m: TemporalWindowAvg, opts: ConvertOptions) -> StreamModule:
    return WindowAvgPool(m.window)


@register_converter(X3DSqueezeExcite)
def _convert_se(m: X3DSqueezeExcite, opts: ConvertOptions) -> StreamModule:
    return Residual(convert_chain(list(m.named_children()), opts), reduce="mul")


class X3DBlockStream(Residual):
    """The streaming X3D block: a ``Residual`` whose CPU inference step is one function.

    Why: at batch 1 a block's arithmetic is ~0.1-0.3 ms, and the generic container walk (aligner,
    SE residual, frame-local activations, reduce, post) added ~15 Python calls and ~6 tensor ops
    per block. Here the SE gate, SiLU and the final ReLU are applied without module calls and
    ``conv_c``'s GEMM takes the shortcut as its addend (``ContinualConv3d.step_residual``). State
    and outputs are exactly the generic ones; anything unexpected falls back to ``Residual``.

    ``cpp_step`` (default on; ``CLPLAT_X3D_CPP=0`` turns it off; settable per block): float32
    blocks run the whole step as one C++ call (``clplat.kernels.x3d_block_cpu``; faster than this
    Python step, compare ``fused`` and ``clplat`` in ``benchmarks/stream_step.py``), compiled once
    on first use; same state and outputs, and the Python step takes over if it cannot be built,
    or when Triton kernels are forced (``CLPLAT_KERNELS=triton``).
    """

    cpp_step: bool = os.environ.get("CLPLAT_X3D_CPP", "1") != "0"

    def _fused_parts(self) -> tuple | None:
        """``(conv_a, conv_b, se (fc1, fc2) | None, silu, conv_c)`` if the block has the stock
        layout after conversion (BN folded, activations fused), else None. Cached per children."""
        key = tuple(self._modules.values())
        cache = self.__dict__.get("_fused_cache")
        if cache is None or cache[0] != key:
            cache = self.__dict__["_fused_cache"] = (key, self._match())
        return cache[1]

    def _match(self) -> tuple | None:
        chains, post = self._step_chains()
        main = chains[0]
        if self.reduce != "sum" or len(post) != 1 or not _is_act(post[0], nn.ReLU):
            return None
        if not (isinstance(main[0], Delay) and main[0].frames == 0) or len(main) not in (4, 6):
            return None
        conv_a, conv_b, conv_c = main[1], main[2], main[-1]
        if not all(isinstance(c, ContinualConv3d) for c in (conv_a, conv_b, conv_c)):
            return None
        se = None
        if len(main) == 6:
            squeeze, act = main[3], main[4]
            if not (isinstance(squeeze, Residual) and squeeze.reduce == "mul" and _is_act(act, nn.SiLU)):
                return None
            (gate_path, identity), se_post = squeeze._step_chains()
            if se_post or len(identity) != 1 or len(gate_path) != 5:
                return None
            _, pool, fc1, fc2, gate = gate_path
            if not (
                isinstance(pool, WindowAvgPool) and pool.window == 1 and _is_act(gate, nn.Sigmoid)
                and isinstance(fc1, ContinualConv3d) and isinstance(fc2, ContinualConv3d)
                and fc1.kernel_size[0] == fc2.kernel_size[0] == 1
            ):
                return None
            se = (fc1, fc2)
        if conv_a.kernel_size[0] != 1 or conv_c.kernel_size[0] != 1 or conv_c.activation != "identity":
            return None
        return conv_a, conv_b, se, conv_c

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        parts = self._fused_parts() if frame.device.type == "cpu" and not torch.is_grad_enabled() else None
        if parts is None:
            return super()._step(frame, state)
        conv_a, conv_b, se, conv_c = parts
        (main_state, short_state), post_state = state
        if self.cpp_step and frame.dtype == torch.float32 and not (
            conv_b.temporal_fill == "replicate" and int(main_state[2][1]) == 0
        ) and not triton_forced():
            weights = self._cpp_weights(parts)
            if weights is not None:
                return self._step_cpp(conv_b, weights, frame, state)
        chains, _ = self._step_chains()
        skip, short_state = _chain_step(chains[1], frame, short_state)
        y, _ = conv_a._step(frame, main_state[1])
        y, b_state = conv_b._step(y, main_state[2])
        main_state = (*main_state[:2], b_state, *main_state[3:])
        if y is None or skip is None:  # warming up (aligned branches emit on the same steps)
            return None, ((main_state, short_state), post_state)
        if se is not None:  # per-frame squeeze (window 1): its state never changes
            g, _ = se[0]._step(y.mean(dim=(2, 3), keepdim=True), ())
            g, _ = se[1]._step(g, ())
            y = F.silu(y * g.sigmoid_(), inplace=True)
        out = conv_c.step_residual(y, skip, "relu")
        if out is None:
            out = F.relu(conv_c._step(y, ())[0] + skip)
        return out, ((main_state, short_state), post_state)

    def _step_cpp(self, conv_b: ContinualConv3d, weights: x3d_block_cpu.BlockWeights, frame: Tensor,
                  state: State) -> tuple[Tensor | None, State]:
        """The step as one C++ call; the shortcut's delay ring (and an unrecognised shortcut chain)
        stays in Python, a recognised 1x1 shortcut conv runs inside the call."""
        (main_state, short_state), post_state = state
        acc, count = main_state[2]
        chain = self._step_chains()[0][1]
        n = 1 if weights.ws is not None else len(chain)  # modules stepped here: aligner [+ shortcut]
        skip, head = _chain_step(chain[:n], frame, short_state[:n])
        c, delay = int(count), conv_b.delay
        out, acc = x3d_block_cpu.block_step(frame, acc, skip, weights, c >= delay)
        b_state = (acc, count if c > delay else tick(count, delay, 1))  # tick: the same count once past the delay
        main_state = (*main_state[:2], b_state, *main_state[3:])
        return out, ((main_state, (*head, *short_state[n:])), post_state)

    def _cpp_weights(self, parts: tuple) -> x3d_block_cpu.BlockWeights | None:
        """The C++ step's weights, re-laid-out once per weight version; None where the block is
        outside what it computes (or the extension cannot be built). The check per step reads
        each parameter's identity and version counter only (``_param_key`` on 12 tensors through
        module attributes was ~6 µs a block)."""
        cache = self.__dict__.get("_cpp_cache")
        if cache is not None and cache[0] is parts and _unchanged(cache[1]):
            return cache[2]
        conv_a, conv_b, se, conv_c = parts
        shortcut = self._shortcut_conv()
        convs = [c for c in (conv_a, conv_b, conv_c, *(se or ()), shortcut) if c is not None]
        named = [(c._parameters, n, t) for c in convs for n, t in c._parameters.items() if t is not None]
        versioned = [t for _, _, t in named if not t.is_inference()]
        entries = (named, versioned, [t._version for t in versioned])
        weights = None
        if all(t.dtype == torch.float32 for _, _, t in named) and _cpp_eligible(conv_a, conv_b, se, conv_c, shortcut):
            if x3d_block_cpu.available():
                weights = _pack_weights(conv_a, conv_b, se, conv_c, shortcut)
        self.__dict__["_cpp_cache"] = (parts, entries, weights)
        return weights

    def _shortcut_conv(self) -> ContinualConv3d | None:
        """The shortcut's 1x1 conv if the shortcut branch is (aligner, [Sequential of] that conv)."""
        chain = self._step_chains()[0][1]
        if len(chain) != 2:
            return None
        m = chain[1]
        if isinstance(m, StreamSequential) and len(m) == 1:
            m = m[0]
        if not isinstance(m, ContinualConv3d) or not _is_pointwise(m) or m.activation != "identity":
            return None
        return m


def _unchanged(entries: tuple) -> bool:
    """Whether every cached parameter is still its module's and unmodified (version counter;
    inference tensors have none: they change only by in-place copies inside inference mode)."""
    named, versioned, versions = entries
    for params, name, t in named:
        if params[name] is not t:
            return False
    return [t._version for t in versioned] == versions


def _is_pointwise(c: ContinualConv3d) -> bool:
    """A stateless 1x1x1 conv (groups 1, no padding, temporal stride 1): one GEMM per frame."""
    return (
        c.kernel_size == (1, 1, 1) and c.groups == 1 and c.padding[1:] == (0, 0) and c.stride[0] == 1
        and c.temporal_padding == (0, 0)
    )


def _cpp_eligible(conv_a, conv_b, se, conv_c, shortcut) -> bool:  # noqa: ANN001
    """What ``clplat.kernels.x3d_block_cpu`` computes: pointwise a/c (and SE fcs, and a shortcut
    conv: any spatial stride), a depthwise conv_b with 2-5 temporal taps, temporal stride 1,
    no dilation, partial-sum state, activations identity/relu/silu."""
    acts = x3d_block_cpu.ACTIVATIONS
    k = conv_b.kernel_size[0]
    ok = (
        all(_is_pointwise(c) and c.stride[1:] == (1, 1) for c in (conv_a, conv_c, *(se or ())))
        and conv_b.groups == conv_b.in_channels == conv_b.out_channels and 2 <= k <= 5
        and conv_b.stride[0] == 1 and conv_b.dilation[1:] == (1, 1) and conv_b.resolved_layout() == "partial"
        and all(c.activation in acts for c in (conv_a, conv_b, conv_c, *(se or ())))
    )
    return ok and (shortcut is None or shortcut.stride[1:] == conv_b.stride[1:])


def _pack_weights(conv_a, conv_b, se, conv_c, shortcut) -> x3d_block_cpu.BlockWeights:  # noqa: ANN001
    acts = x3d_block_cpu.ACTIVATIONS

    def pw(c: ContinualConv3d | None) -> tuple[Tensor | None, Tensor | None]:
        if c is None:
            return None, None
        bias = None if c.bias is None else c.bias.detach().contiguous()
        return c._step_weight("pointwise").detach().contiguous(), bias

    (w1, b1), (w2, b2) = pw(se[0] if se else None), pw(se[1] if se else None)
    (wa, ba), (wc, bc), (ws, bs) = pw(conv_a), pw(conv_c), pw(shortcut)
    bb = None if conv_b.bias is None else conv_b.bias.detach().contiguous()
    return x3d_block_cpu.BlockWeights(
        wa, ba, acts[conv_a.activation], conv_b._step_weight("dw_partial").detach().contiguous(), bb,
        acts[conv_b.activation], tuple(conv_b.kernel_size[1:]), tuple(conv_b.stride[1:]),
        tuple(conv_b.padding[1:]), w1, b1, acts[se[0].activation] if se else 0, w2, b2,
        acts[se[1].activation] if se else 0, wc, bc, ws, bs,
        tuple(shortcut.stride[1:]) if shortcut is not None else (1, 1),
    )


def _is_act(m: nn.Module, cls: type) -> bool:
    return isinstance(m, FrameLocal) and type(m.module) is cls


@register_converter(X3DBlock)
def _convert_block(m: X3DBlock, opts: ConvertOptions) -> StreamModule:
    shortcut = [] if m.shortcut is None else [("shortcut", convert_module(m.shortcut, opts))]
    return X3DBlockStream(convert_chain(m.main_path(), opts), shortcut, convert_chain([("act", m.act)], opts))


@register_converter(X3DHead)
def _convert_head(m: X3DHead, opts: ConvertOptions) -> StreamModule:
    chain = [(n, getattr(m, n)) for n in ("conv", "bn", "act", "pool")] + [("flatten", nn.Flatten(1))]
    chain += [(n, getattr(m, n)) for n in ("proj", "proj_act", "dropout", "fc")]
    return StreamSequential(OrderedDict(convert_chain(chain, opts)))


@register_converter(X3DS)
def _convert_x3ds(m: X3DS, opts: ConvertOptions) -> StreamModule:
    """Stream emits ``forward_frames`` positions (delay 0 when ``causal``); the stem becomes an
    ``X3DStemStream`` (same children, same state)."""
    chain = convert_chain(list(m.named_children()), opts)
    chain = [(n, X3DStemStream(OrderedDict(s._modules)) if n == "stem" and type(s) is StreamSequential else s)
             for n, s in chain]
    return StreamSequential(OrderedDict(chain))
