"""Backend choice shared by every kernel dispatcher: Triton on CUDA, the PyTorch reference elsewhere.

``CLPLAT_KERNELS`` (or a ``backend=`` argument) forces a side: ``"triton"``, ``"reference"`` or
``"auto"`` (default). Forcing Triton on CPU tensors only works under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "reference")
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_TRACING = [False]


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """While a step is recorded for a compiler (``clplat.streaming.compile_step``): dispatchers pick
    the PyTorch reference (a compiler fuses it itself, and a hand-written kernel launch cannot be
    traced) and fast paths pick their out-of-place formulations."""
    previous, _TRACING[0] = _TRACING[0], True
    try:
        yield
    finally:
        _TRACING[0] = previous


def is_tracing() -> bool:
    return _TRACING[0]


def triton_available() -> bool:
    return _HAS_TRITON


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (read at launch, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_forced(backend: str | None = None) -> bool:
    """True when Triton is forced (``backend="triton"`` or ``CLPLAT_KERNELS=triton``). Fast paths
    that bypass the kernels (the CPU channels-last step) stand aside then, so forcing Triton runs
    the kernels wherever the dispatcher is reached (tests use this to put a kernel in a stream)."""
    return (backend or os.environ.get("CLPLAT_KERNELS", "auto")).lower() == "triton" and not _TRACING[0]


def choose_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """Resolve ``backend`` (argument, else ``CLPLAT_KERNELS``, else auto) to triton or reference."""
    choice = (backend or os.environ.get("CLPLAT_KERNELS", "auto")).lower()
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {choice!r}")
    if _TRACING[0]:
        return "reference"
    if choice == "auto":
        return "triton" if (_HAS_TRITON and tensor.is_cuda) else "reference"
    if choice == "triton":
        if not _HAS_TRITON:
            raise RuntimeError("backend='triton' requested but triton is not installed")
        if not tensor.is_cuda and not interpret_mode():
            raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1")
    return choice
