"""``compile_step`` with Inductor's ``freezing`` on a transposed conv followed by BatchNorm.

torch 2.14's freezing folds the BN into a square transposed conv along the wrong weight dimension
(``benchmarks/freezing_convT_bn.py``); ``clplat.streaming.compiled`` compiles such steps without
freezing. The xfail test pins the torch bug: when a torch release fixes it, it passes, strict
xfail turns that into a failure, and the workaround can go.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from clplat.streaming import compile_step
from clplat.streaming.compiled import CPU_OPTIONS, _has_transposed_conv
from clplat.streaming.module import State, StreamModule

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="Inductor's CPU backend needs a C++ compiler",
)


def _conv_bn(conv: nn.Module) -> nn.Sequential:
    """``conv -> BatchNorm2d`` with random statistics and affine (so folding changes the weights)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(conv.out_channels)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    return nn.Sequential(conv, bn).eval()


class _Upsample(StreamModule):
    """A stateless stream layer: a square 4x4 stride-2 transposed conv + BN (as evflow's decoder)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.net = _conv_bn(nn.ConvTranspose2d(channels, channels, 4, 2, 1))

    def example_output(self, frame: Tensor) -> Tensor:
        return self.net(frame)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        return self.net(frame), state


def test_square_transposed_conv_bn_compiled_step_equals_eager():
    torch.manual_seed(1)
    stream = _Upsample().eval()
    step = compile_step(stream)  # CPU default options: freezing on
    assert CPU_OPTIONS["freezing"]
    frames = torch.randn(4, 1, 8, 6, 6)
    with torch.inference_mode():
        for t in range(4):  # compiled on its second sight; CompiledStep's own check raises if it disagrees
            got, _ = step(frames[t])
            want, _ = stream.step(frames[t])
            assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert step.compilations == 1


def test_transposed_conv_detection():
    x = torch.randn(1, 8, 6, 6)
    up = make_fx(_conv_bn(nn.ConvTranspose2d(8, 8, 4, 2, 1)))(x)
    same = make_fx(_conv_bn(nn.Conv2d(8, 8, 3, 1, 1)))(x)
    assert _has_transposed_conv(up) and not _has_transposed_conv(same)


@pytest.mark.xfail(strict=True, reason="torch 2.14 Inductor freezing folds BN into a square transposed conv "
                                       "along C_in (fx_passes/binary_folding.py); see benchmarks/freezing_convT_bn.py")
def test_torch_freezing_folds_bn_into_square_transposed_conv_correctly():
    import torch._inductor.config as inductor_config

    model = _conv_bn(nn.ConvTranspose2d(8, 8, 4, 2, 1))
    x = torch.randn(1, 8, 6, 6)
    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(freezing=True):
        got = torch.compile(model)(x)
    assert torch.allclose(got, model(x), rtol=0, atol=1e-4)
