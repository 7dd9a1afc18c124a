"""One streaming X3D block step for CPU inference as one C++ call (source: ``x3d_block_cpu.cpp``).

Why: at batch 1 an X3D block's arithmetic is 0.1-0.3 ms, and the eager step spends about as
much again on ~25 dispatched tensor ops per block plus depthwise taps running as strided
multiply-adds over whole maps (4-8 GMAC/s). The C++ step keeps the GEMMs (conv_a, conv_c, the
shortcut's 1x1) in MKL through ATen and does everything else in one cache-resident pass per stage:
bias + activation after conv_a; the depthwise ``(kh, kw)`` taps of every temporal slot added onto
the partial sums with each channel block's accumulators in registers (slot 0 finished with bias,
activation and the SE channel sums); the SE gate; scale + SiLU in place; conv_c with the
shortcut as its GEMM addend, then bias + ReLU.

Two smaller ops serve the X3D stem (``X3DStemStream``): ``conv_small``, a direct conv for few
inputs per output (the 3-channel 3x3, which oneDNN runs far below its peak), and ``taps_step``,
the depthwise taps alone (the stem's (5,1,1) temporal conv in one pass instead of three).

State: exactly ``clplat.kernels.conv_step_cpu``'s partial-sum register, the buffer
``(B, H'W', k, C)`` handed out as the view ``(B, C, k-1, H'W')`` of its slots 1..k-1, so the
Python step and this one continue each other's states.

The extension is compiled on first use (``torch.utils.cpp_extension.load``, ``-O3
-march=native``; cached under ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``,
one build per source and CPU model) and registered as the torch op
``torch.ops.clplat_x3d.block_step``, with a fake (shape) implementation, so a step recorded for
a compiler (``clplat.streaming.compile_step``) holds it as one extern kernel; eager calls go
through the extension module's direct bindings of the same functions (the dispatcher's argument
boxing was a few µs per call, 28 calls a frame). Without a C++
compiler (or if the build fails) ``available()`` is False, one warning says why, and callers
keep the Python step. float32, CPU, inference only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from clplat.kernels._backend import is_tracing

__all__ = ["ACTIVATIONS", "BlockWeights", "available", "block_step", "conv_small", "load", "taps_step"]

SOURCE = Path(__file__).with_name("x3d_block_cpu.cpp")
ACTIVATIONS = {"identity": 0, "relu": 1, "silu": 2}
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast"]
_LOCK = threading.Lock()
_STATE: dict[str, object] = {"tried": False, "ok": False}


class BlockWeights(NamedTuple):
    """Everything but the per-frame tensors, in the op's argument order (after frame, acc, skip).

    Pointwise weights are ``(Cin, Cout)`` (``ContinualConv3d``'s "pointwise" layout), the
    depthwise one ``(kh*kw, k, C)`` with slot ``m`` = temporal tap ``k-1-m`` ("dw_partial");
    activations are codes from ``ACTIVATIONS``; ``w1 is None``: no squeeze-excite; ``ws is None``:
    ``skip`` is added as it is, else it is the shortcut conv's input (spatial ``skip_stride``).
    """

    wa: Tensor
    ba: Tensor | None
    act_a: int
    wb: Tensor
    bb: Tensor | None
    act_b: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    w1: Tensor | None
    b1: Tensor | None
    act_1: int
    w2: Tensor | None
    b2: Tensor | None
    act_2: int
    wc: Tensor
    bc: Tensor | None
    ws: Tensor | None
    bs: Tensor | None
    skip_stride: tuple[int, int]


def _build_name() -> str:
    """Extension name: changes with the source, the flags and the CPU (``-march=native`` code
    must not be reused by another CPU sharing the cache directory)."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(ln for ln in f if ln.startswith(("model name", "flags")))[:4096]
    except OSError:
        cpu += platform.processor()
    digest = hashlib.sha1(SOURCE.read_bytes() + " ".join(_FLAGS).encode() + cpu.encode()).hexdigest()[:12]
    return f"clplat_x3d_block_{digest}"


def load() -> bool:
    """Compile (first call in a process; reused from the cache afterwards) and register the op.
    Returns whether it is usable; on failure, warns once with the reason."""
    if _STATE["tried"]:
        return bool(_STATE["ok"])
    with _LOCK:
        if _STATE["tried"]:
            return bool(_STATE["ok"])
        reason = None
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            reason = f"no C++ compiler ({compiler!r} not found on PATH)"
        else:
            try:
                # its "No CUDA runtime is found" notice (logged at import) says nothing useful here
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
                from torch.utils import cpp_extension

                _STATE["module"] = cpp_extension.load(_build_name(), [str(SOURCE)], extra_cflags=_FLAGS,
                                                      is_python_module=True, verbose=False)
                _register_fake()
            except Exception as err:  # a failed build must leave the Python step working
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        if reason is not None:
            warnings.warn(f"clplat: the fused C++ X3D block step is unavailable, using the Python step ({reason})",
                          stacklevel=3)
        _STATE.update(tried=True, ok=reason is None)
    return bool(_STATE["ok"])


def available() -> bool:
    """Whether the op is loaded (compiles it on the first call)."""
    return load()


def _register_fake() -> None:
    """Output shapes and strides for tracing (``make_fx`` / Inductor), mirroring the C++ results."""
    if hasattr(torch.ops.clplat_x3d.block_step.default, "_clplat_fake"):
        return

    @torch.library.register_fake("clplat_x3d::block_step")
    def _fake(frame, acc, skip, wa, ba, act_a, wb, bb, act_b, kernel, stride, padding, w1, b1, act_1,  # noqa: ANN001
              w2, b2, act_2, wc, bc, ws, bs, skip_stride, emit):  # noqa: ANN001, ANN202
        b, _, h, w = frame.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        k, c = wb.shape[1], wa.shape[1]
        nxt = frame.new_empty(b, ho * wo, k, c).narrow(2, 1, k - 1).permute(0, 3, 2, 1)
        if not emit:
            return frame.new_empty(0), nxt
        return frame.new_empty(b, ho, wo, wc.shape[1]).permute(0, 3, 1, 2), nxt

    @torch.library.register_fake("clplat_x3d::taps_step")
    def _fake_taps(frame, acc, wb, bb, act_b, kernel, stride, padding, emit):  # noqa: ANN001, ANN202
        b, c, h, w = frame.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        nxt = frame.new_empty(b, ho * wo, wb.shape[1], c).narrow(2, 1, wb.shape[1] - 1).permute(0, 3, 2, 1)
        if not emit:
            return frame.new_empty(0), nxt
        return frame.new_empty(b, ho, wo, c).permute(0, 3, 1, 2), nxt

    @torch.library.register_fake("clplat_x3d::conv_small")
    def _fake_conv(frame, weight, bias, act, kernel, stride, padding):  # noqa: ANN001, ANN202
        b, _, h, w = frame.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        return frame.new_empty(b, ho, wo, weight.shape[1]).permute(0, 3, 1, 2)

    torch.ops.clplat_x3d.block_step.default._clplat_fake = True


def _fn(name: str):  # noqa: ANN202
    """The function ``name``: the torch op while a step is recorded for a compiler (it must appear
    in the graph), else the module's direct binding (same C++ function, without the dispatcher)."""
    if is_tracing():
        return getattr(torch.ops.clplat_x3d, name)
    return getattr(_STATE["module"], name)


def block_step(frame: Tensor, acc: Tensor, skip: Tensor | None, weights: BlockWeights,
               emit: bool) -> tuple[Tensor | None, Tensor]:
    """One block step: ``(output (B, Cout, H', W') channels-last, or None when not emitting;
    the next partial sums (B, C, k-1, H'W'))``. ``acc``: this step's partial sums (any strides);
    ``skip``: the shortcut branch's input or output (see ``BlockWeights``), None while warming up."""
    out, nxt = _fn("block_step")(frame, acc, frame if skip is None else skip, *weights, emit and skip is not None)
    return (out if emit and skip is not None else None), nxt


def conv_small(frame: Tensor, weight: Tensor, bias: Tensor | None, activation: int,
               spatial: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]) -> Tensor:
    """``act(conv2d(frame) + bias)`` for a conv with few inputs per output (the X3D stem's 3-channel
    3x3): ``(B, Cout, H', W')`` over channels-last memory. ``weight``: ``(kh*kw*Cin, Cout <= 32)``
    rows ``(dy, dx, c)`` (``ContinualConv3d``'s "hwio" layout); ``spatial``: (kernel, stride, padding)."""
    return _fn("conv_small")(frame, weight, bias, activation, *spatial)


def taps_step(frame: Tensor, acc: Tensor, weight: Tensor, bias: Tensor | None, activation: int,
              spatial: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
              emit: bool) -> tuple[Tensor | None, Tensor]:
    """A depthwise partial-sum conv step alone (the X3D stem's temporal conv), same state as
    ``ContinualConv3d``'s: ``(output (B, C, H', W') or None when not emitting; next partial sums)``.
    ``weight``: the "dw_partial" layout; ``spatial``: (kernel, stride, padding)."""
    out, nxt = _fn("taps_step")(frame, acc, weight, bias, activation, *spatial, emit)
    return (out if emit else None), nxt
