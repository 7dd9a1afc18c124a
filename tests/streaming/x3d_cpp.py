"""Shared pieces of the X3D C++ step tests (``test_x3d_fused.py``, ``test_x3d_stem_fast.py``)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from clplat.kernels import x3d_block_cpu

RTOL = 1e-5


def extension() -> ModuleType:
    """The built extension, or a skip (which CI turns into a failure: ``tests/conftest.py``)."""
    if not x3d_block_cpu.available():
        pytest.skip("the C++ extension cannot be built here (no compiler)")
    return x3d_block_cpu


def count_calls(monkeypatch: pytest.MonkeyPatch, module: ModuleType, names: list[str]) -> dict[str, int]:
    """Counts calls of ``module.<name>`` (so a test cannot pass on the Python path alone)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to ``RTOL`` of the reference's largest magnitude (which must not be ~0)."""
    assert want.abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))
