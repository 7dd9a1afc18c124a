"""``convert(module)``: an offline video network -> its streaming form, with the same weights.

The input module is deep-copied, never modified. Converters are looked up by type (through the
MRO), so ``register_converter(MyBlock)`` teaches ``convert`` a custom block. Built in:
``nn.Sequential`` (and subclasses), ``nn.Conv3d``, temporal-only ``ConstantPad3d`` before a conv
(merged into its temporal padding), pools, ``AdaptiveAvgPool3d``, ``nn.LSTM``, frame-local ops,
and the networks in ``clplat.streaming.models`` plus torchvision's video ResNets.

In a chain, an eval-mode ``BatchNorm3d`` right after a conv is folded into it when ``fold_bn``
(default: when the module is in eval mode), and a ReLU/SiLU right after a conv is fused into
the conv's epilogue. Without folding the streaming module's ``state_dict`` has the offline
names, so ``load_state_dict(offline.state_dict())`` works on it.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from clplat.nn import activation_name
from clplat.streaming.containers import StreamSequential
from clplat.streaming.conv import ContinualConv3d
from clplat.streaming.module import ANY_RANK, FrameLocal, StreamModule
from clplat.streaming.pool import TemporalPool3d, WindowAvgPool
from clplat.streaming.recurrent import StreamLSTM

__all__ = ["ConvertOptions", "convert", "convert_chain", "convert_module", "register_converter"]


@dataclass(frozen=True)
class ConvertOptions:
    """``temporal_window``: frames a global temporal pool averages (None = all so far)."""

    fold_bn: bool = True
    temporal_window: int | None = None
    layout: str = "auto"
    temporal_fill: str = "zeros"


Converter = Callable[[nn.Module, ConvertOptions], StreamModule]
_CONVERTERS: dict[type, Converter] = {}
_BUILTINS_LOADED = False


def register_converter(cls: type) -> Callable[[Converter], Converter]:
    """Decorator: ``@register_converter(MyBlock) def f(module, opts) -> StreamModule``."""

    def deco(fn: Converter) -> Converter:
        _CONVERTERS[cls] = fn
        return fn

    return deco


def _load_builtins() -> None:
    """Model converters live beside their models; importing them registers them."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import clplat.streaming.models.lrcn  # noqa: F401
        import clplat.streaming.models.torchvision_video  # noqa: F401
        import clplat.streaming.models.x3d  # noqa: F401


def convert(
    module: nn.Module,
    *,
    fold_bn: bool | None = None,
    temporal_window: int | None = None,
    layout: str = "auto",
    temporal_fill: str = "zeros",
) -> StreamModule:
    """Streaming form of ``module`` (a copy; the original is untouched), in the same train/eval mode.

    The result's ``forward(clip)`` is the offline computation whose positions ``step`` emits;
    for classifiers that is the per-frame output ``(B, num_classes, T')`` (see docs/streaming.md).
    """
    _load_builtins()
    opts = ConvertOptions(
        fold_bn=(not module.training) if fold_bn is None else fold_bn,
        temporal_window=temporal_window,
        layout=layout,
        temporal_fill=temporal_fill,
    )
    # inference_mode(False): called inside ``torch.inference_mode()``, the copy's parameters would
    # be inference tensors, which have no version counter for the step's weight caches and
    # cannot be used by autograd later. Converting outside it gives ordinary parameters.
    with torch.inference_mode(False), torch.no_grad():
        out = convert_module(copy.deepcopy(module), opts)
    return out.train(module.training)


def convert_module(module: nn.Module, opts: ConvertOptions) -> StreamModule:
    """Convert one (already copied) module; StreamModules pass through unchanged."""
    if isinstance(module, StreamModule):
        return module
    for cls in type(module).__mro__:
        fn = _CONVERTERS.get(cls)
        if fn is not None:
            return fn(module, opts)
    raise NotImplementedError(
        f"no streaming converter for {type(module).__name__}; register one with "
        "clplat.streaming.register_converter, or wrap a per-frame module in FrameLocal"
    )


def _temporal_only_pad(m: nn.Module) -> tuple[int, int] | None:
    """``(left, right)`` for a zero pad that touches only time, else None."""
    if isinstance(m, nn.ConstantPad3d) and m.value == 0:
        w0, w1, h0, h1, t0, t1 = m.padding
        if w0 == w1 == h0 == h1 == 0:
            return t0, t1
    return None


def _last_leaf(m: StreamModule) -> StreamModule:
    while isinstance(m, StreamSequential) and len(m):
        m = m[-1]
    return m


def _fold_bn_into(conv: ContinualConv3d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Rewrite ``conv`` so that ``conv -> bn`` (eval statistics) is one conv."""
    scale = (
        bn.weight / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else 1 / torch.sqrt(bn.running_var + bn.eps)
    )
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    conv.weight.data.mul_(scale.view(-1, 1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias.data * scale + shift
    conv.bias = nn.Parameter(bias.detach().clone())


def convert_chain(named: list[tuple[str, nn.Module]], opts: ConvertOptions) -> list[tuple[str, StreamModule]]:
    """Convert an ordered chain, merging pads into convs and folding BN / activations into them."""
    out: list[tuple[str, StreamModule]] = []
    pad: tuple[int, int] | None = None
    for name, m in named:
        if isinstance(m, nn.Identity):
            continue
        tp = _temporal_only_pad(m)
        if tp is not None:
            pad = (pad[0] + tp[0], pad[1] + tp[1]) if pad else tp
            continue
        prev = _last_leaf(out[-1][1]) if out else None
        if (
            opts.fold_bn
            and isinstance(m, nn.BatchNorm3d)
            and m.track_running_stats
            and isinstance(prev, ContinualConv3d)
            and prev.activation == "identity"
        ):
            _fold_bn_into(prev, m)
            continue
        if (act := activation_name(m)) and isinstance(prev, ContinualConv3d) and prev.activation == "identity":
            prev.activation = act
            continue
        s = convert_module(m, opts)
        if pad is not None:
            if not isinstance(s, ContinualConv3d):
                raise NotImplementedError(
                    f"a temporal pad must be followed by a Conv3d, got {type(m).__name__}"
                )
            left, right = s.temporal_padding
            s.temporal_padding = (left + pad[0], right + pad[1])
            pad = None
        out.append((name, s))
    if pad is not None:
        raise NotImplementedError("a temporal pad at the end of a chain cannot be streamed")
    return out


# ----- built-in converters ---------------------------------------------------------------------


@register_converter(nn.Sequential)
def _sequential(m: nn.Sequential, opts: ConvertOptions) -> StreamModule:
    return StreamSequential(OrderedDict(convert_chain(list(m.named_children()), opts)))


@register_converter(nn.Conv3d)
def _conv3d(m: nn.Conv3d, opts: ConvertOptions) -> StreamModule:
    return ContinualConv3d.from_conv3d(m, layout=opts.layout, temporal_fill=opts.temporal_fill)


@register_converter(nn.LSTM)
def _lstm(m: nn.LSTM, opts: ConvertOptions) -> StreamModule:
    return StreamLSTM.from_lstm(m)


def _pool3d(m: nn.AvgPool3d | nn.MaxPool3d, opts: ConvertOptions) -> StreamModule:
    mode = "max" if isinstance(m, nn.MaxPool3d) else "avg"
    if (
        m.ceil_mode
        or getattr(m, "divisor_override", None)
        or (mode == "max" and m.dilation not in (1, (1, 1, 1)))
    ):
        raise NotImplementedError("ceil_mode, divisor_override and dilation are not supported for pools")
    k = TemporalPool3d(mode, m.kernel_size, m.stride, m.padding, getattr(m, "count_include_pad", True))
    if k.kernel_size[0] == 1 and k.stride[0] == 1 and k.padding[0] == 0:
        return FrameLocal(m, fold=False)
    return k


register_converter(nn.AvgPool3d)(_pool3d)
register_converter(nn.MaxPool3d)(_pool3d)


@register_converter(nn.AdaptiveAvgPool3d)
def _adaptive_avg(m: nn.AdaptiveAvgPool3d, opts: ConvertOptions) -> StreamModule:
    size = (m.output_size,) * 3 if isinstance(m.output_size, int) else tuple(m.output_size)
    if size == (1, 1, 1):
        return WindowAvgPool(opts.temporal_window)
    if size[0] is None:
        return FrameLocal(m, fold=False)
    raise NotImplementedError(f"AdaptiveAvgPool3d{size} mixes frames; use (1, 1, 1) or (None, h, w)")


def _frame_local(fold: bool) -> Converter:
    def fn(m: nn.Module, opts: ConvertOptions) -> StreamModule:
        if getattr(m, "inplace", False):
            m.inplace = False  # a frame may alias a state ring; never overwrite it
        return FrameLocal(m, fold=fold)

    return fn


_ELEMENTWISE = (*ANY_RANK, nn.Softmax, nn.Dropout3d, nn.BatchNorm3d)
for _cls in _ELEMENTWISE:
    register_converter(_cls)(_frame_local(fold=False))
for _cls in (nn.Linear, nn.Flatten, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Conv2d):
    register_converter(_cls)(_frame_local(fold=True))


@register_converter(nn.GroupNorm)
def _group_norm(m: nn.GroupNorm, opts: ConvertOptions) -> StreamModule:
    warnings.warn(
        "GroupNorm on a clip normalises over time as well; the stream normalises each frame alone, "
        "so the converted module's forward is per-frame GroupNorm",
        stacklevel=3,
    )
    return FrameLocal(m, fold=True)
