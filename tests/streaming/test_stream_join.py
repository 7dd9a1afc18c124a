"""Streams joining a running batch (``--slots``, ``--join-at``): a stream that joins at frame k,
into a fresh slot or into one an ended stream left, gives exactly the outputs it gives alone; the
other streams' outputs do not change; the step's graphs are neither recaptured nor reallocated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clplat.stream import main, parse_args
from clplat.streaming import X3DS
from clplat.streaming.apps._slots import counter_key, splice_rows
from clplat.streaming.compiled import CompiledStep
from clplat.streaming.containers import Delay, StreamSequential
from clplat.streaming.conv import ContinualConv3d
from clplat.streaming.sources import FrameSpec
from clplat.streaming.training.weights import FORMAT, save_trained
from tests.streaming.test_stream_apps import tiny_predictor, write_video  # noqa: F401  (fixture)
from tests.streaming.test_stream_multi import _assert_same, _EmulatedGraphStep, _recorded_run, _recorded_run_app

# symmetric temporal padding: a 4-frame delay, so a joining stream has to warm up by itself
TINY = dict(width=4, depths=(1, 1), fc_width=8, expansion=1.0, head_window=4, causal=False)


@pytest.fixture
def late_x3d(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    meta = {"format": FORMAT, "name": "tiny", "arch": "x3d", "model": TINY, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "input": FrameSpec(size=(32, 32)).to_dict(),
            "data": {"canvas": 32, "digit_size": 16, "label": "digit"}}
    return save_trained(tmp_path / "late.safetensors", X3DS(10, **TINY).eval(), meta)[0]


def _videos(tmp_path: Path, lengths: list[int]) -> list[Path]:
    return [write_video(tmp_path / f"v{i}.mp4", n, seed=i) for i, n in enumerate(lengths)]


def _alone(model: str, video: Path, tmp_path: Path, extra: list[str]) -> list[torch.Tensor | None]:
    records, _ = _recorded_run(["--model", model, "--source", str(video), "--out", str(tmp_path / "alone.mp4"),
                                *extra])
    return records[0]


@pytest.mark.parametrize("kind", ["x3d", pytest.param("predictor", marks=pytest.mark.slow)])
def test_joining_streams_equal_each_stream_alone(kind: str, late_x3d: Path, tiny_predictor: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    """Three slots: a and b start at frame 0, c joins the running batch at frame 3 into the
    unused slot, d (queued from frame 4, no slot free) takes b's slot when b ends. Every stream's
    outputs equal the same source played alone."""
    model = str(late_x3d if kind == "x3d" else tiny_predictor)
    extra = ["--context", "3", "--horizon", "2"] if kind == "predictor" else []
    videos = _videos(tmp_path, [14, 5, 11, 10])
    records, summary = _recorded_run(["--model", model, "--source", ",".join(map(str, videos)), "--slots", "3",
                                      "--join-at", "0,0,3,4", "--out", str(tmp_path / "j.mp4"), *extra])
    streams = summary["streams"]
    assert summary["batch"] == 3 and [s["frames"] for s in streams] == [14, 5, 11, 10]
    assert [(s["slot"], s["start_tick"]) for s in streams] == [(0, 0), (1, 0), (2, 3), (1, 5)]
    for i, video in enumerate(videos):
        _assert_same(records[i], _alone(model, video, tmp_path, extra))
    if kind == "x3d":  # warmed up alone (4-frame delay), then spliced into the batch
        settle = _steps_to_steady(parse_args(["--model", model])[0], model)
        assert settle > 4 and [s["stepped_alone"] for s in streams] == [0, 0, settle, settle]
        assert sum(r is not None for r in records[2]) == 11 - 4
    else:  # no counters: a fresh predictor's rows go straight into the batch
        assert [s["stepped_alone"] for s in streams] == [0, 0, 0, 0]


@torch.no_grad()
def _steps_to_steady(app_cls, model: str) -> int:
    """Fresh steps until the network's counters stop changing (stride 1: they saturate)."""
    app_cls, ref, args = parse_args(["--model", model])
    net = app_cls(ref, args).stream
    frame, state, keys = torch.zeros(1, 3, 32, 32), None, []
    for _ in range(40):
        state = net.step(frame, state)[1]
        keys.append(counter_key(state))
    return keys.index(keys[-1]) + 1


def test_a_queue_longer_than_the_slots(late_x3d: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--slots 1``: sources play one after another in the one slot (each from a fresh state)."""
    videos = _videos(tmp_path, [6, 4, 5])
    out = tmp_path / "q.mp4"
    assert main(["--model", str(late_x3d), "--source", ",".join(map(str, videos)), "--slots", "1",
                 "--out", str(out)]) == 0
    assert "3 streams in one batch of 1 slots: 15 frames" in capsys.readouterr().out
    stats = json.loads(out.with_suffix(".json").read_text())
    assert [(s["slot"], s["start_tick"], s["frames"]) for s in stats["streams"]] == [(0, 0, 6), (0, 6, 4), (0, 10, 5)]
    assert stats["step_latency"]["frames"] == 15 and [s["stepped_alone"] for s in stats["streams"]] == [0, 0, 0]


def test_no_recapture_and_no_new_buffers_when_streams_join(late_x3d: Path, tmp_path: Path) -> None:
    """The CUDA-graph step (emulated on the CPU): a stream joining after the steady phase was
    captured, and another taking an ended stream's slot, capture nothing new, keep the static
    buffers, and give the eager outputs."""
    videos = _videos(tmp_path, [24, 7, 10, 10])
    argv = ["--model", str(late_x3d), "--source", ",".join(map(str, videos)), "--slots", "3",
            "--join-at", "0,0,12,13", "--out", str(tmp_path / "g.mp4")]
    eager, _ = _recorded_run(argv)
    app_cls, ref, args = parse_args(argv)
    app = app_cls(ref, args)
    graph = _EmulatedGraphStep(app.stream)
    seen: list[tuple[int, list[int]]] = []

    def stepping(x, state):
        out = graph(x, state)
        seen.append((graph.captures, [b.data_ptr() for b in graph._data]))
        return out

    stepping.module = graph.module  # type: ignore[attr-defined]
    app.step_fn = stepping
    graphed, summary = _recorded_run_app(app, args)
    for b, a in zip(graphed, eager):
        _assert_same(b, a)
    for i in (2, 3):
        _assert_same(graphed[i], _alone(str(late_x3d), videos[i], tmp_path, []))
    starts = [s["start_tick"] for s in summary["streams"]]
    # c takes the slot b left, d the unused one
    assert starts == [0, 0, 12, 13] and [s["slot"] for s in summary["streams"]] == [0, 1, 1, 2]
    assert summary["streams"][2]["stepped_alone"] > 0
    captures_before_join = seen[11][0]
    assert captures_before_join >= 1 and seen[-1][0] == captures_before_join
    assert all(ptrs == seen[0][1] for _, ptrs in seen)


@pytest.mark.slow
def test_no_recompilation_when_streams_join(late_x3d: Path, tmp_path: Path) -> None:
    """The same with ``compile_step`` (a cheap backend): no phase is compiled after the join."""
    videos = _videos(tmp_path, [18, 9])
    argv = ["--model", str(late_x3d), "--source", ",".join(map(str, videos)), "--join-at", "0,11",
            "--out", str(tmp_path / "c.mp4")]
    eager, _ = _recorded_run(argv)
    app_cls, ref, args = parse_args(argv)
    app = app_cls(ref, args)
    app.compiled = compiled = CompiledStep(app.stream, backend="eager")
    counts: list[int] = []

    def stepping(x, state):
        out = compiled(x, state)
        counts.append(compiled.compilations)
        return out

    app.step_fn = stepping
    got, _ = _recorded_run_app(app, args)
    for b, a in zip(got, eager):
        _assert_same(b, a)
    _assert_same(got[1], _alone(str(late_x3d), videos[1], tmp_path, []))
    assert counts[10] >= 1 and counts[-1] == counts[10]


def _strided_net() -> StreamSequential:
    """Delay (symmetric and replicate padding), a temporal stride of 2 and a pure delay line."""
    torch.manual_seed(3)
    return StreamSequential(
        ContinualConv3d(2, 3, (3, 3, 3), padding=(0, 1, 1), temporal_padding=(1, 1), temporal_fill="replicate"),
        ContinualConv3d(3, 3, (2, 1, 1), stride=(2, 1, 1)),
        Delay(2),
    ).eval()


@torch.no_grad()
def test_splice_after_a_lone_warm_up_is_exact_and_fresh_rows_are_not() -> None:
    """The primitive on a net whose counters matter: stream B joins a batch at step 4 (a stride
    phase 0), steps alone until ``counter_key`` matches, and is spliced into row 1: its outputs
    equal B alone and row 0's equal A alone. Giving B fresh rows at the join instead (what a
    per-row reset would do under the batch's shared counters) is wrong, so the lone warm-up
    is needed; a splice at another phase is refused."""
    net = _strided_net()
    a, b = torch.randn(16, 1, 2, 5, 5), torch.randn(12, 1, 2, 5, 5)
    alone_a = [net.step(f, s)[0] for f, s in _states(net, a)]
    alone_b = [net.step(f, s)[0] for f, s in _states(net, b)]
    state, lone, got_a, got_b, spliced_at = None, None, [], [], None
    for t in range(16):
        row1 = b[t - 4] if t >= 4 else torch.zeros_like(a[0])
        if t >= 4 and spliced_at is None:
            lone = net.init_state(row1) if lone is None else lone
            if counter_key(lone) == counter_key(state):
                state, spliced_at = splice_rows(state, 1, lone), t
        y, state = net.step(torch.cat([a[t], row1]), state)
        got_a.append(None if y is None else y[:1])
        if t >= 4:
            if spliced_at is None:
                yb, lone = net.step(row1, lone)
                got_b.append(yb)
            else:
                got_b.append(None if y is None else y[1:])
    assert spliced_at is not None and 4 < spliced_at < 16
    _assert_same(got_a, alone_a)
    _assert_same(got_b, alone_b)
    with pytest.raises(ValueError, match="another step phase"):
        splice_rows(state, 1, net.init_state(b[0]))
    # the naive join: fresh rows (counters kept from the batch) at step 4
    state, naive = None, []
    for t in range(16):
        row1 = b[t - 4] if t >= 4 else torch.zeros_like(a[0])
        if t == 4:
            state = _flat_fresh(net, state, row1)
        y, state = net.step(torch.cat([a[t], row1]), state)
        if t >= 4:
            naive.append(None if y is None else y[1:])
    with pytest.raises(AssertionError):
        _assert_same(naive, alone_b)


def _states(net: StreamSequential, clip: torch.Tensor):
    state = None
    for f in clip:
        yield f, state
        state = net.step(f, state)[1]


def _flat_fresh(net: StreamSequential, state, row: torch.Tensor):
    """``state`` with row 1 of every data leaf set to a fresh stream's, counters left as they are."""
    from clplat.streaming.compiled import _flatten, _is_counter, _unflatten

    leaves, struct = _flatten(state)
    fresh, _ = _flatten(net.init_state(row))
    out = []
    for leaf, f in zip(leaves, fresh):
        if not _is_counter(leaf):
            leaf = leaf.clone()
            leaf[1] = f[0]
        out.append(leaf)
    return _unflatten(struct, out)


def test_bad_slots_and_join_at_are_one_line(late_x3d: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_video(tmp_path / "a.mp4", 3)
    src = f"{a},{a}"
    for flags, words in ((["--slots", "0"], "--slots must be >= 1"),
                         (["--join-at", "0"], "need 2 frame number(s) >= 0, one per source"),
                         (["--join-at", "0,x"], "give whole frame numbers"),
                         (["--join-at", "0,-1"], "one per source")):
        assert main(["--model", str(late_x3d), "--source", src, "--out", str(tmp_path / "o.mp4"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err
    assert not list(tmp_path.glob("o*"))
