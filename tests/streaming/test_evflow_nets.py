"""The event-flow networks: stepping one bin at a time equals the layer-by-layer sequence forward,
state carries across clips, the Triton step kernels run inside a whole stream, gradients reach the
spiking layers through the surrogate, and the registry builds both by name."""

from __future__ import annotations

import importlib

import pytest
import torch

from clplat.errors import UserError
from clplat.streaming.models.evflow_common import EventFlowConfig, build_evflow
from tests.streaming.stepping import one_thread

ARCHS = ["evflow_lstm", "evflow_snn"]


def _bins(t: int, h: int, w: int, seed: int = 0, b: int = 1) -> torch.Tensor:
    """Sparse event counts (B, 2, T, H, W): most pixels empty, a few with 1-4 events."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, 2, t, h, w, generator=g) < 0.15
    return mask * torch.randint(1, 5, (b, 2, t, h, w), generator=g).float()


def _net(arch: str, width: int = 4, downsample: int = 1, seed: int = 0):
    """A net with realistic BatchNorm statistics (two training-mode forwards), then eval()."""
    torch.manual_seed(seed)
    net = build_evflow(EventFlowConfig.model_validate({"arch": arch, "width": width, "downsample": downsample}))
    net.train()
    with torch.no_grad():
        for k in range(2):
            net(_bins(4, 32, 48, seed=100 + k, b=2))
    return net.eval()


def _step_all(net, clip, state=None):
    outs = []
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = net.step(clip[:, :, t], state)
            outs.append(y)
    return torch.stack(outs, 2), state


@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("arch", ARCHS)
def test_step_equals_sequence(arch, downsample):
    """Odd frame size (padding and crop), 16 bins, two streams in a batch: every flow matches."""
    net = _net(arch, downsample=downsample)
    clip = _bins(16, 37, 45, seed=1, b=2)
    with one_thread(), torch.no_grad():
        ref, ref_state = net.forward_sequence(clip)
        out, state = _step_all(net, clip)
    assert ref.shape == clip.shape
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the state matters: the same last bin from a fresh state gives another flow
    with torch.no_grad():
        fresh, _ = net.step(clip[:, :, -1])
    assert (fresh - out[:, :, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_continues_from_a_state(arch):
    """Warm-up then the rest (sequential learning's split) equals one pass over the whole clip."""
    net = _net(arch)
    clip = _bins(16, 32, 32, seed=2)
    with torch.no_grad():
        whole, _ = net.forward_sequence(clip)
        _, warm = net.forward_sequence(clip[:, :, :10])
        rest, _ = net.forward_sequence(clip[:, :, 10:], warm)
    torch.testing.assert_close(rest, whole[:, :, 10:], atol=1e-5, rtol=0)


def test_spiking_layers_spike_sometimes():
    """Neither silent nor saturated layers (else the equality test above would be vacuous)."""
    net = _net("evflow_snn")
    rates = []
    clip = _bins(8, 32, 32, seed=3)
    with torch.no_grad():
        x = net._prepare(clip.movedim(2, 1))
        for block, s in zip(net.encoders, net.init_state(clip[:, :, 0]), strict=False):
            x, _ = block.sequence(x, s)
            rates.append(float(x.mean()))
    assert all(0 < r < 1 for r in rates), rates
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}


def test_surrogate_gradient_reaches_every_spiking_layer():
    net = _net("evflow_snn")
    net.train()
    clip = _bins(6, 32, 32, seed=4, b=2)
    net(clip).pow(2).mean().backward()
    for block in net.layers():
        assert block.input.weight.grad.abs().sum() > 0
        live = block.theta.detach() > 0.01  # a θ clamped at its floor gets no gradient (spec §4)
        assert (block.theta.grad[live] != 0).all() and (block.theta.grad[~live] == 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_inputs_and_registry(arch):
    net = _net(arch)
    with pytest.raises(ValueError, match="2 polarity channels"):
        net.step(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="one event bin"):
        net.step(torch.zeros(1, 2, 4, 16, 16))
    with pytest.raises(UserError, match="unknown event-flow model 'evflow_gru'.*evflow_lstm.*evflow_snn"):
        build_evflow(EventFlowConfig.model_validate({"arch": "evflow_lstm"}).model_copy(update={"arch": "evflow_gru"}))


@pytest.mark.parametrize(("arch", "module", "kernel"), [
    ("evflow_lstm", "clplat.kernels.convlstm_step", "convlstm_step_triton"),
    ("evflow_snn", "clplat.kernels.lif_step", "lif_step_triton"),
])
def test_stream_through_the_triton_step_kernels(monkeypatch, arch, module, kernel):
    """Forced Triton (CPU interpreter): every recurrent layer launches the kernel on every bin, and
    the flows equal the reference stream's, so a broken kernel fails a stream test."""
    pytest.importorskip("triton")
    net = _net(arch)
    clip = _bins(4, 13, 15, seed=5)
    monkeypatch.setenv("CLPLAT_KERNELS", "reference")
    ref, _ = _step_all(net, clip)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CLPLAT_KERNELS", "triton")
    mod = importlib.import_module(module)
    real, calls = getattr(mod, kernel), []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, kernel, counting)
    out, _ = _step_all(net, clip)
    assert len(calls) == clip.shape[2] * len(net.layers())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
