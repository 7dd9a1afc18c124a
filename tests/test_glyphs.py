"""glyphs: ``first_class`` selects unseen figures, relabels them from 0, and stays deterministic."""

from __future__ import annotations

import torch

from clplat.config import build_config
from clplat.data import build_dataset


def _data(**kw):
    cfg = build_config({"data": {"dataset": "glyphs", "image_size": 16, "normalize": False,
                                 "train_per_class": 6, "test_per_class": 2, **kw}}).data
    return build_dataset(cfg, seed=1)


def _class_means(split) -> torch.Tensor:
    return torch.stack([split.x[split.y == c].mean(0).flatten() for c in range(int(split.y.max()) + 1)])


def test_first_class_relabels_and_names():
    d = _data(first_class=100, num_classes=3)
    assert sorted(set(d.train_targets.tolist())) == [0, 1, 2]
    assert sorted(set(d.test_targets.tolist())) == [0, 1, 2]
    assert d.class_names == ["glyph_100", "glyph_101", "glyph_102"]


def test_first_class_is_deterministic_and_independent_of_seed():
    a, b = _data(first_class=100, num_classes=3), _data(first_class=100, num_classes=3)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    cfg = build_config({"data": {"dataset": "glyphs", "image_size": 16, "normalize": False,
                                 "first_class": 100, "num_classes": 3, "train_per_class": 6,
                                 "test_per_class": 2}}).data
    assert torch.equal(build_dataset(cfg, seed=7).train.x, a.train.x)


def test_label_j_is_figure_first_class_plus_j():
    """The class means of first_class=3 match classes 3, 4 of a first_class=0 build (other renders)."""
    base = _class_means(_data(num_classes=5, train_per_class=30).train)
    shifted = _class_means(_data(first_class=3, num_classes=2, train_per_class=30).train)
    dist = torch.cdist(shifted, base)
    assert dist.argmin(dim=1).tolist() == [3, 4]


def test_default_first_class_keeps_the_pretraining_images():
    """first_class=0 must give exactly the data the shipped backbone was pretrained on."""
    import numpy as np

    from clplat.data.glyphs import GLYPH_SEED, make_glyphs

    rng = np.random.default_rng([GLYPH_SEED, 3, 6, 16])
    x, y = make_glyphs(3, 6, 16, rng)
    d = _data(num_classes=3)
    assert torch.equal(d.train.x, x) and torch.equal(d.train.y, y)
