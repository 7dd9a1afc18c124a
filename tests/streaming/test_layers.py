"""Streaming layers: stepping a clip frame by frame gives the offline forward (after the delay).

Clips are 60+ frames (tiny channels and maps), so every stride phase recurs many times and every
emitted output is compared (``tests.streaming.stepping.assert_steps_match``).

References are independent of the streaming code wherever one exists: ``nn.Conv3d``,
``nn.AvgPool3d`` / ``nn.MaxPool3d``, ``nn.LSTM``, and hand-written sums.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from clplat.streaming import (
    ContinualConv3d,
    Delay,
    FrameLocal,
    Parallel,
    Residual,
    StreamSequential,
    WindowAvgPool,
    convert,
)
from clplat.streaming.models.x3d import TemporalWindowAvg
from tests.streaming.stepping import MIN_FRAMES, assert_steps_match, one_thread

ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


CONV_CASES = list(
    itertools.product(
        ["partial", "ring"],
        [(3, 1, 1), (3, 2, 0), (3, 0, 0), (5, 2, 2), (2, 1, 0), (1, 0, 0)],
        [1, 2],
        [1, 2],
        ["zeros", "replicate"],
    )
)


@pytest.mark.parametrize("layout,kpad,t_stride,groups,fill", CONV_CASES)
@torch.no_grad()
def test_conv_steps_match_forward(layout, kpad, t_stride, groups, fill):
    k, left, right = kpad
    torch.manual_seed(0)
    conv = ContinualConv3d(
        4,
        6,
        (k, 3, 3),
        stride=(t_stride, 2, 1),
        padding=(0, 1, 1),
        groups=groups,
        temporal_padding=(left, right),
        temporal_fill=fill,
        layout=layout,
        activation="silu",
    )
    clip = torch.randn(2, 4, MIN_FRAMES, 5, 4)
    ref = conv(clip)
    out = assert_steps_match(conv, clip, ref, atol=ATOL, grad=True)
    # emitted for every position whose window ends inside the clip (the offline count, by hand)
    assert out.shape[2] == (clip.shape[2] + left - k) // t_stride + 1


@pytest.mark.parametrize(
    "kernel,padding,stride",
    [
        ((3, 3, 3), 1, (1, 2, 2)),
        ((5, 1, 1), (2, 0, 0), 2),
        ((1, 3, 3), (0, 1, 1), 1),
        ((4, 3, 3), (3, 1, 1), (2, 1, 1)),
    ],
)
@torch.no_grad()
def test_converted_conv_matches_nn_conv3d(kernel, padding, stride):
    torch.manual_seed(1)
    ref_conv = nn.Conv3d(5, 7, kernel, stride=stride, padding=padding)
    conv = convert(ref_conv)
    assert isinstance(conv, ContinualConv3d)
    clip = torch.randn(1, 5, MIN_FRAMES, 9, 9)
    ref = ref_conv(clip)
    torch.testing.assert_close(conv(clip), ref, atol=ATOL, rtol=0)
    assert_steps_match(conv, clip, ref, atol=ATOL, grad=True)
    assert conv.delay == kernel[0] - 1 - (padding if isinstance(padding, int) else padding[0])


@torch.no_grad()
def test_layouts_agree_and_state_is_pure():
    torch.manual_seed(2)
    a = ContinualConv3d(3, 3, (3, 3, 3), padding=(0, 1, 1), temporal_padding=(1, 1), layout="partial")
    b = ContinualConv3d(3, 3, (3, 3, 3), padding=(0, 1, 1), temporal_padding=(1, 1), layout="ring")
    b.load_state_dict(a.state_dict())
    clip = torch.randn(2, 3, 5, 6, 6)
    ya, sa = a.forward_steps(clip)
    yb, _ = b.forward_steps(clip)
    torch.testing.assert_close(ya, yb, atol=ATOL, rtol=0)
    # a step never mutates its input state: replaying from a saved state gives the same result
    frame = torch.randn(2, 3, 6, 6)
    saved = [t.clone() for t in sa]
    y1, _ = a.step(frame, sa)
    y2, _ = a.step(frame, sa)
    assert all(torch.equal(s, c) for s, c in zip(sa, saved))
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)


@torch.no_grad()
def test_state_resumes_and_batches_across_streams():
    torch.manual_seed(3)
    net = convert(nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, (2, 1, 1))).eval())
    clip = torch.randn(2, 2, MIN_FRAMES, 5, 5)
    whole, _ = net.forward_steps(clip)
    for cut in (3, 37):
        first, state = net.forward_steps(clip[:, :, :cut])
        rest, _ = net.forward_steps(clip[:, :, cut:], state)
        torch.testing.assert_close(torch.cat([first, rest], 2), whole, atol=0, rtol=0)
    one, _ = net.forward_steps(clip[1:])
    torch.testing.assert_close(whole[1:], one, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(
    "kernel,stride,padding,cip",
    [
        ((3, 2, 2), (1, 2, 2), (1, 1, 1), True),
        ((4, 3, 3), (1, 1, 1), (2, 1, 1), False),
        ((2, 2, 2), (2, 2, 2), (0, 0, 0), True),
        ((3, 3, 3), (2, 1, 1), (1, 1, 1), False),
    ],
)
@torch.no_grad()
def test_temporal_pool_matches_nn_pool(mode, kernel, stride, padding, cip):
    if mode == "max":
        ref_pool = nn.MaxPool3d(kernel, stride, padding)
    else:
        ref_pool = nn.AvgPool3d(kernel, stride, padding, count_include_pad=cip)
    pool = convert(ref_pool)
    clip = torch.randn(2, 3, MIN_FRAMES, 8, 7)
    assert_steps_match(pool, clip, ref_pool(clip), atol=ATOL)


@pytest.mark.parametrize("window", [None, 1, 4])
@torch.no_grad()
def test_window_avg_pool(window):
    clip = torch.randn(2, 3, MIN_FRAMES, 4, 5)
    ref = TemporalWindowAvg(window)(clip)
    pool = WindowAvgPool(window)
    torch.testing.assert_close(pool(clip), ref, atol=ATOL, rtol=0)
    out = assert_steps_match(pool, clip, ref, atol=ATOL)
    assert out.shape[2] == MIN_FRAMES
    if window is None:  # the running mean at the last frame is the global average
        torch.testing.assert_close(out[:, :, -1, 0, 0], clip.mean(dim=(2, 3, 4)), atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@torch.no_grad()
def test_lstm_matches_nn_lstm(batch_first, num_layers):
    torch.manual_seed(4)
    lstm = nn.LSTM(6, 5, num_layers=num_layers, batch_first=batch_first).eval()
    stream = convert(lstm)
    x = torch.randn(3, 6, MIN_FRAMES)  # (B, F, T)
    seq = x.transpose(1, 2) if batch_first else x.permute(2, 0, 1)
    ref, _ = lstm(seq)
    ref = ref.transpose(1, 2) if batch_first else ref.permute(1, 2, 0)
    assert_steps_match(stream, x, ref, atol=ATOL)
    assert stream.receptive_field is None
    with pytest.raises(NotImplementedError):
        convert(nn.LSTM(6, 5, bidirectional=True))


def test_delay_ring():
    d = Delay(3)
    frames = [torch.full((1, 2), float(i)) for i in range(6)]
    state, outs = None, []
    for f in frames:
        y, state = d.step(f, state)
        outs.append(None if y is None else y[0, 0].item())
    assert outs == [None, None, None, 0.0, 1.0, 2.0]


@torch.no_grad()
def test_residual_aligns_branch_delays():
    """main: conv k=3 pad (1,1) (delay 1); shortcut: identity, delayed by one frame."""
    torch.manual_seed(5)
    conv = ContinualConv3d(3, 3, (3, 1, 1), temporal_padding=(1, 1))
    block = Residual([("conv", conv)], post=[("act", FrameLocal(nn.ReLU(), fold=False))])
    clip = torch.randn(1, 3, MIN_FRAMES, 2, 2)
    ref = torch.relu(nn.functional.conv3d(clip, conv.weight, conv.bias, padding=(1, 0, 0)) + clip)
    assert block.delay == 1
    out = assert_steps_match(block, clip, ref, atol=ATOL)
    assert out.shape[2] == MIN_FRAMES - 1


@torch.no_grad()
def test_parallel_concat_and_strided_residual():
    torch.manual_seed(6)
    fast = ContinualConv3d(2, 2, (1, 1, 1))
    slow = ContinualConv3d(2, 3, (5, 1, 1), temporal_padding=(2, 2))
    par = Parallel(OrderedDict(fast=fast, slow=slow), reduce="concat")
    clip = torch.randn(1, 2, MIN_FRAMES, 3, 3)
    ref = torch.cat([fast(clip), slow(clip)], 1)
    assert par.delay == 2
    assert_steps_match(par, clip, ref, atol=ATOL)
    # a residual whose branches both stride time by 2 but lag differently (as in r3d_18)
    main = [
        ("a", ContinualConv3d(2, 2, 3, stride=(2, 1, 1), padding=(0, 1, 1), temporal_padding=(1, 1))),
        ("b", ContinualConv3d(2, 2, 3, padding=(0, 1, 1), temporal_padding=(1, 1))),
    ]
    res = Residual(main, [("down", ContinualConv3d(2, 2, 1, stride=(2, 1, 1)))])
    ref = main[1][1](main[0][1](clip)) + res.down(clip)
    assert (res.delay, res.temporal_stride) == (3, 2)
    out = assert_steps_match(res, clip, ref, atol=ATOL)  # emitted at steps 3, 5, 7, ...
    assert out.shape[2] == (MIN_FRAMES - 1 - 3) // 2 + 1


def test_sequential_timing_bookkeeping():
    a = ContinualConv3d(1, 1, (3, 1, 1), stride=(2, 1, 1), temporal_padding=(1, 1))  # d 1, s 2, rf 3
    b = ContinualConv3d(1, 1, (3, 1, 1), temporal_padding=(0, 0))  # d 2, s 1, rf 3
    seq = StreamSequential(a, b)
    assert (seq.delay, seq.temporal_stride, seq.receptive_field) == (1 + 2 * 2, 2, 3 + 2 * 2)
    # spec §1.4: delay = receptive_field - 1 - accumulated left padding (1 + 0 * 2)
    assert seq.delay == seq.receptive_field - 1 - 1


@torch.no_grad()
def test_convert_folds_bn_fuses_act_and_keeps_offline_names():
    torch.manual_seed(7)
    offline = nn.Sequential(
        nn.Conv3d(3, 8, (3, 3, 3), padding=(1, 1, 1), bias=False),
        nn.BatchNorm3d(8),
        nn.ReLU(inplace=True),
        nn.ConstantPad3d((0, 0, 0, 0, 2, 0), 0.0),
        nn.Conv3d(8, 8, (3, 1, 1), groups=8),
        nn.BatchNorm3d(8),
        nn.Dropout(0.1),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(1),
        nn.Linear(8, 4),
    )
    offline.train()
    for _ in range(3):
        offline(torch.randn(4, 3, 6, 8, 8))
    offline.eval()
    before = {k: v.clone() for k, v in offline.state_dict().items()}
    clip = torch.randn(2, 3, MIN_FRAMES, 8, 8)

    folded = convert(offline)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in folded.modules()) == 0
    assert folded[0].activation == "relu"
    assert folded.delay == 1  # the 3x3x3 conv looks one frame ahead; the padded one is causal

    plain = convert(offline, fold_bn=False)
    assert list(plain.state_dict()) == list(offline.state_dict())
    fresh = convert(offline, fold_bn=False)
    for p in fresh.parameters():
        p.data.zero_()
    fresh.load_state_dict(offline.state_dict())  # strict: offline checkpoints load unchanged

    # offline reference: the nn layers up to the pool, then a causal running mean per position
    feats = offline[:7](clip).mean(dim=(3, 4))
    running = feats.cumsum(-1) / torch.arange(1, feats.shape[-1] + 1)
    ref = offline[9](running.transpose(1, 2)).transpose(1, 2)
    for net in (folded, plain, fresh):
        torch.testing.assert_close(net(clip), ref, atol=ATOL, rtol=0)
        out = assert_steps_match(net, clip, ref, atol=ATOL)
        assert out.shape[2] == MIN_FRAMES - 1
    # the input module is untouched (convert works on a copy)
    assert all(torch.equal(v, before[k]) for k, v in offline.state_dict().items())
    assert offline[2].inplace


def test_unsupported_modules_fail_clearly():
    with pytest.raises(NotImplementedError, match="no streaming converter"):
        convert(nn.TransformerEncoderLayer(8, 2))
    with pytest.raises(NotImplementedError, match="dilation"):
        ContinualConv3d(2, 2, 3, dilation=(2, 1, 1))
    with pytest.raises(ValueError, match="temporal padding"):
        ContinualConv3d(2, 2, 3, temporal_padding=(3, 0))


# ----- CPU fast path (no grad) vs generic path (autograd): same outputs, interchangeable state -----

FAST_CASES = {
    "dw_partial": dict(cin=6, cout=6, kernel=(3, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), groups=6),
    "dw_1x1": dict(cin=5, cout=5, kernel=(5, 1, 1), stride=1, padding=0, groups=5, tpad=(2, 2)),
    "dwconv_partial": dict(cin=6, cout=6, kernel=(3, 3, 3), stride=1, padding=(0, 1, 1), groups=6, big=True),
    "pw_partial": dict(cin=4, cout=3, kernel=(3, 1, 1), stride=(1, 2, 2), padding=0, layout="partial"),
    "conv_partial": dict(cin=4, cout=3, kernel=(3, 3, 3), stride=1, padding=(0, 1, 1), layout="partial"),
    "pw_ring": dict(cin=3, cout=5, kernel=(3, 1, 1), stride=(2, 1, 1), padding=0, tpad=(1, 1)),
    "ring": dict(cin=4, cout=6, kernel=(3, 3, 3), stride=(2, 2, 1), padding=(0, 1, 1), groups=2),
    "pointwise": dict(cin=4, cout=6, kernel=1, stride=(2, 2, 2), padding=0),
    "conv": dict(cin=4, cout=6, kernel=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
}


def _fast_case(name: str, fill: str) -> ContinualConv3d:
    c = FAST_CASES[name]
    torch.manual_seed(7)
    return ContinualConv3d(
        c["cin"], c["cout"], c["kernel"], stride=c["stride"], padding=c["padding"], groups=c.get("groups", 1),
        temporal_padding=c.get("tpad", (1, 1) if c["kernel"] not in (1, (1, 3, 3)) else (0, 0)), temporal_fill=fill,
        layout=c.get("layout", "auto"), activation="silu",
    )


def _run(conv, clip, state, grad):
    outs = []
    with torch.set_grad_enabled(grad):
        for t in range(clip.shape[2]):
            y, state = conv.step(clip[:, :, t], state)
            if y is not None:
                outs.append(y.detach())
    return outs, state


@pytest.mark.parametrize("fill", ["zeros", "replicate"])
@pytest.mark.parametrize("name", list(FAST_CASES))
def test_fast_and_generic_steps_agree_and_share_state(name, fill, monkeypatch):
    import clplat.streaming.conv as conv_mod

    if FAST_CASES[name].get("big"):  # take oneDNN's grouped conv instead of shifted multiply-adds
        monkeypatch.setattr(conv_mod, "_SHIFT_MAX_WORK", 0)
    conv = _fast_case(name, fill)
    clip = torch.randn(2, conv.in_channels, MIN_FRAMES, 7, 6)
    with torch.no_grad():
        ref = conv(clip)
    fast, _ = _run(conv, clip, None, grad=False)
    assert conv._plan is not None and conv._plan.kind == name.replace("dw_1x1", "dw_partial")
    generic, _ = _run(conv, clip, None, grad=True)
    n = (MIN_FRAMES - 1 - conv.delay) // conv.temporal_stride + 1  # every position in the clip
    assert n == len(fast) == len(generic) >= 20
    torch.testing.assert_close(torch.stack(fast, 2), ref[:, :, :n], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.stack(generic, 2), ref[:, :, :n], atol=ATOL, rtol=0)
    # a state made by one path continues on the other (either way round), early and late
    for first_grad, cut in ((False, 4), (True, 4), (False, 33), (True, 33)):
        head, state = _run(conv, clip[:, :, :cut], None, grad=first_grad)
        tail, _ = _run(conv, clip[:, :, cut:], state, grad=not first_grad)
        torch.testing.assert_close(torch.stack(head + tail, 2), ref[:, :, :n], atol=ATOL, rtol=0)


def test_fast_step_state_has_the_documented_shapes():
    conv = _fast_case("dw_partial", "zeros")
    frame = torch.randn(2, 6, 7, 6)
    with torch.no_grad():
        _, (acc, _) = conv.step(frame)
    assert acc.shape == conv.init_state(frame)[0].shape == (2, 6, 2, 4 * 3)
    ring = _fast_case("ring", "zeros")
    with torch.no_grad():
        _, (buf, _) = ring.step(torch.randn(2, 4, 7, 6))
    assert buf.shape == ring.init_state(torch.randn(2, 4, 7, 6))[0].shape == (2, 2, 2, 2, 7, 6)


def test_weight_change_invalidates_the_fast_plan():
    conv = _fast_case("dw_partial", "zeros")
    clip = torch.randn(1, 6, 5, 7, 6)
    with torch.no_grad():
        conv.forward_steps(clip)
        conv.weight.mul_(2)
        out, _ = conv.forward_steps(clip)
        ref = conv(clip)
    torch.testing.assert_close(out, ref[:, :, : out.shape[2]], atol=ATOL, rtol=0)


def test_convert_inside_inference_mode_then_step():
    """Regression: convert() under inference_mode gave inference-tensor weights, and every later
    step failed in the weight cache with 'Inference tensors do not track version counter'."""
    from clplat.streaming import X3DS

    torch.manual_seed(5)
    net = X3DS(4, width=8, depths=(1, 1, 1, 1)).eval()
    clip = torch.randn(1, 3, 10, 32, 32)
    with torch.no_grad():
        ref = net.forward_frames(clip)
    with torch.inference_mode():
        stream = convert(net)
        in_inference, _ = stream.forward_steps(clip)
    assert not any(p.is_inference() for p in stream.parameters())
    with torch.no_grad():
        no_grad, _ = stream.forward_steps(clip)
    with_grad, _ = stream.forward_steps(clip)  # autograd path, outside any context
    n = in_inference.shape[2]
    for out in (in_inference, no_grad, with_grad.detach()):
        torch.testing.assert_close(out, ref[:, :, :n], atol=ATOL, rtol=0)
    # a layer built inside inference_mode (its weights are inference tensors) steps too
    with torch.inference_mode():
        conv = ContinualConv3d(3, 3, (3, 3, 3), padding=(0, 1, 1), groups=3, temporal_padding=(1, 1))
        out, _ = conv.forward_steps(clip[:, :, :, :8, :8])
        torch.testing.assert_close(out, conv(clip[:, :, :, :8, :8])[:, :, : out.shape[2]], atol=ATOL, rtol=0)


@pytest.mark.parametrize("delay,stride", [(0, 1), (3, 1), (0, 2), (2, 3), (5, 8)])
def test_counters_emit_on_schedule_and_stay_bounded(delay: int, stride: int) -> None:
    """``tick`` saturates (stride 1) or cycles with the stride's period, so steady streams repeat
    their phases (what ``compile_step`` keys on) and a counter never grows with the stream."""
    from clplat.streaming.module import new_counter, should_emit, tick

    count, emitted, seen = new_counter(), [], []
    for t in range(60):
        if should_emit(count, delay, stride):
            emitted.append(t)
        seen.append(int(count))
        count = tick(count, delay, stride)
    assert emitted == list(range(delay, 60, stride))
    assert max(seen) <= delay + stride and min(seen[1:], default=1) >= 1
    steady = seen[delay + 1 :]
    assert all(steady[i] == steady[i + stride] for i in range(len(steady) - stride))
