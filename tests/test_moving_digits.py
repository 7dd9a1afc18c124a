"""Moving digits: deterministic, labelled, split by digit image, and a labelled endless stream."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from clplat.data.moving_digits import (
    MovingDigits,
    MovingDigitsSpec,
    MovingDigitsStream,
    digit_pool,
    render_video,
)


def test_items_are_uint8_videos_with_balanced_per_frame_labels() -> None:
    ds = MovingDigits("train", n_videos=20, spec=MovingDigitsSpec(canvas=32, frames=6), seed=0)
    video, labels = ds[13]
    assert video.shape == (6, 32, 32, 3) and video.dtype == torch.uint8
    assert labels.shape == (6,) and labels.dtype == torch.int64
    assert torch.all(labels == 13 % 10)
    assert sorted(np.bincount(ds.targets)) == [2] * 10
    assert video.float().std() > 5  # not a blank canvas


def test_same_seed_same_video_other_seed_other_video() -> None:
    spec = MovingDigitsSpec(frames=4)
    a, b = MovingDigits("test", 5, spec, seed=3), MovingDigits("test", 5, spec, seed=3)
    c = MovingDigits("test", 5, spec, seed=4)
    assert torch.equal(a[2][0], b[2][0])
    assert not torch.equal(a[2][0], c[2][0])
    assert torch.equal(a[4][0], a[4][0])  # order independent: item i is a function of (seed, split, i)


def test_train_and_test_use_disjoint_digit_images() -> None:
    tr_img, tr_y = digit_pool("train")
    te_img, te_y = digit_pool("test")
    assert len(tr_y) + len(te_y) == 1797 and len(te_y) == 360
    all_images = load_digits().images / 16.0
    key = {im.tobytes(): i for i, im in enumerate(all_images.astype(np.float32))}
    tr_idx = {key[im.tobytes()] for im in tr_img}
    te_idx = {key[im.tobytes()] for im in te_img}
    assert not tr_idx & te_idx


def test_switch_clips_cut_between_two_labelled_videos() -> None:
    ds = MovingDigits("train", n_videos=40, spec=MovingDigitsSpec(frames=8), seed=0, switch_prob=1.0)
    cuts = 0
    for i in range(len(ds)):
        _, labels = ds[i]
        assert labels[-1] == i % 10
        changes = int((labels[1:] != labels[:-1]).sum())
        assert changes <= 1
        cuts += changes
    assert cuts > 20  # most clips cut (the other video may share the class)


def test_stream_window_clips_cut_like_the_stream() -> None:
    spec = MovingDigitsSpec(frames=24)
    ds = MovingDigits("train", n_videos=30, spec=spec, seed=0, segment_frames=(6, 10))
    again = MovingDigits("train", n_videos=30, spec=spec, seed=0, segment_frames=(6, 10))
    cuts = 0
    for i in range(len(ds)):
        video, labels = ds[i]
        assert video.shape == (24, 32, 32, 3) and labels.shape == (24,)
        assert labels[-1] == i % 10
        starts = [0, *(np.flatnonzero(labels[1:].numpy() != labels[:-1].numpy()) + 1), 24]
        inner = np.diff(starts)[1:-1]  # whole videos (the window cuts the first and last ones);
        assert np.all(inner >= 6)  # two neighbours of one class read as one longer run
        cuts += len(starts) - 2
    assert cuts > 30  # 24-frame windows of 6-10 frame videos cut 2-3 times (same-class neighbours hide a few)
    assert torch.equal(ds[7][0], again[7][0]) and torch.equal(ds[7][1], again[7][1])
    with pytest.raises(ValueError):
        MovingDigits("train", 4, spec, segment_frames=(5, 2))


def test_direction_labels_match_the_motion() -> None:
    spec = MovingDigitsSpec(canvas=32, digit_size=12, frames=3, label="direction", noise=0.0, speed=(2.0, 2.0))
    ds = MovingDigits("test", n_videos=8, spec=spec, seed=1)
    expected = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}  # (dy, dx) per label
    for i in range(len(ds)):
        video, labels = ds[i]
        a, b = video[0].float().numpy().sum(-1), video[2].float().numpy().sum(-1)
        best = max(itertools.product(range(-6, 7), repeat=2),
                   key=lambda s: float((np.roll(a, s, axis=(0, 1)) * b).sum()))
        dy, dx = expected[int(labels[0])]
        along, across = (best[0], best[1]) if dy else (best[1], best[0])
        assert np.sign(along) == dy + dx and abs(along) > abs(across), (i, best)  # small jitter across


def test_render_keeps_the_digit_inside_the_canvas_when_bouncing() -> None:
    rng = np.random.default_rng(0)
    image = np.ones((8, 8), dtype=np.float32)
    spec = MovingDigitsSpec(canvas=24, digit_size=8, noise=0.0, speed=(3.0, 3.0))
    video = render_video(image, 60, rng, spec)
    assert video.shape == (60, 24, 24, 3)
    bright = (video.max(-1) > 100).sum(axis=(1, 2))
    assert np.all(bright == 64)  # the whole 8x8 sprite is visible in every frame


def test_stream_is_deterministic_with_segments_of_constant_label() -> None:
    spec = MovingDigitsSpec(canvas=32)
    s1 = list(itertools.islice(MovingDigitsStream("test", spec, seed=2, segment_frames=(5, 9)), 60))
    s2 = list(itertools.islice(MovingDigitsStream("test", spec, seed=2, segment_frames=(5, 9)), 60))
    assert all(np.array_equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(s1, s2))
    starts = [i for i, (_, _, start) in enumerate(s1) if start]
    assert starts[0] == 0 and len(starts) >= 60 // 9
    assert all(5 <= b - a <= 9 for a, b in zip(starts, starts[1:]))
    for a, b in zip(starts, starts[1:]):
        assert len({s1[i][1] for i in range(a, b)}) == 1


@pytest.mark.parametrize("bad", [dict(digit_size=4), dict(frames=0), dict(speed=(2.0, 1.0)), dict(label="x")])
def test_bad_spec_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        MovingDigitsSpec(**bad)
