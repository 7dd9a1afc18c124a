"""Minimal reproduction: Inductor ``freezing`` folds an eval BatchNorm into a square transposed conv
along the wrong weight dimension (torch 2.14.1, CPU).

    python benchmarks/freezing_convT_bn.py

Freezing's binary folding (``torch/_inductor/fx_passes/binary_folding.py``) folds the per-channel
multiply of an eval BatchNorm into the preceding convolution's weight along dim 0. A transposed
conv's weight is ``(C_in, C_out / groups, kh, kw)``, so dim 0 is C_in; the broadcast check compares
the BN's channel count with dim 0 and passes only when C_in == C_out, and then the folded conv
computes something else. Non-square transposed convs and ordinary convs are left right. This is
why ``clplat.streaming.compiled`` turns freezing off for steps with a transposed conv (the trained
``evflow_lstm``'s first decoder block is a 64 -> 64 transposed conv + BN: ~1 px of flow error).
Prints the max |compiled - eager| per case; exit code 1 while the bug is present.
"""
from __future__ import annotations

import sys

import torch
import torch._inductor.config as inductor_config
from torch import nn


def max_diff(conv: nn.Module, channels: int, freezing: bool) -> float:
    """Max |compiled - eager| of ``conv -> BatchNorm2d`` (random statistics, eval mode)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    model = nn.Sequential(conv, bn).eval()
    x = torch.randn(1, conv.in_channels, 8, 8)
    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(freezing=freezing):
        return float((torch.compile(model)(x) - model(x)).abs().max())


def main() -> int:
    torch.manual_seed(0)
    cases = {
        "ConvTranspose2d 16->16 (square)": (lambda: nn.ConvTranspose2d(16, 16, 4, 2, 1), 16),
        "ConvTranspose2d 8->16": (lambda: nn.ConvTranspose2d(8, 16, 4, 2, 1), 16),
        "Conv2d 16->16": (lambda: nn.Conv2d(16, 16, 3, 1, 1), 16),
    }
    bad = False
    print(f"torch {torch.__version__}")
    for name, (make, channels) in cases.items():
        diffs = {f: max_diff(make(), channels, f) for f in (False, True)}
        bad |= diffs[True] > 1e-4
        print(f"{name} + BatchNorm2d: max |compiled - eager| freezing off {diffs[False]:.1e}, on {diffs[True]:.1e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
