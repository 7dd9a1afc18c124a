"""CutMix: the pasted box, the exact label share, the mixed loss, the per-update probability, and
which strategies mix which batch (ER: stream + replay; MVP: never, as the release)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clplat.config import AugmentConfig
from clplat.engine.augment import MixedLabels, build_augment, cutmix, mix_batch, mixed_cross_entropy
from clplat.strategies import StreamContext
from clplat.strategies.er import ERConfig, ExperienceReplay
from clplat.strategies.finetune import Finetune, FinetuneConfig


def _const_batch(n: int = 6, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i is the constant image i, label i: a pasted pixel says where it came from."""
    y = torch.arange(n)
    return y.float().view(n, 1, 1, 1).expand(n, 2, size, size).clone(), y


def test_cutmix_pastes_one_box_and_lam_is_the_kept_share() -> None:
    g = torch.Generator().manual_seed(3)
    mixed_any = False
    for _ in range(20):
        x, y = _const_batch()
        out, t = cutmix(x, y, 1.0, g)
        assert torch.equal(t.y_a, y)
        for i in range(len(y)):
            own = out[i, 0] == float(y[i])
            pasted = out[i, 0] == float(t.y_b[i])
            assert bool((own | pasted).all())  # every pixel is the sample's own or its partner's
            if t.y_b[i] != y[i]:
                assert own.float().mean().item() == pytest.approx(t.lam, abs=1e-6)
                rows, cols = (~own).nonzero(as_tuple=True)
                if len(rows):  # the pasted region is one axis-aligned box, the same for all samples
                    box = torch.zeros_like(own)
                    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
                    assert torch.equal(box, ~own)
                    mixed_any = True
        assert torch.equal(out[:, 0] != x[:, 0], out[:, 1] != x[:, 1])  # channels move together
    assert mixed_any


def test_mixed_cross_entropy_is_lam_weighted() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    a, b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 0, 2, 3])
    want = 0.3 * F.cross_entropy(logits, a) + 0.7 * F.cross_entropy(logits, b)
    assert torch.allclose(mixed_cross_entropy(logits, MixedLabels(a, b, 0.3)), want)
    assert torch.allclose(mixed_cross_entropy(logits, a), F.cross_entropy(logits, a))


def test_probability_one_draw_per_update_and_reproducible() -> None:
    x, y = _const_batch()
    never = build_augment(AugmentConfig(cutmix_prob=0.0), torch.Generator().manual_seed(0))
    always = build_augment(AugmentConfig(cutmix_prob=1.0), torch.Generator().manual_seed(0))
    assert mix_batch(never, x, y)[1] is y
    assert isinstance(mix_batch(always, x, y)[1], MixedLabels)
    half = build_augment(AugmentConfig(cutmix_prob=0.5), torch.Generator().manual_seed(0))
    hits = sum(isinstance(mix_batch(half, x, y)[1], MixedLabels) for _ in range(400))
    assert 160 < hits < 240
    # Beta(1, 1) box shares, shrunk where the box is clipped at the border: kept share above 1/2
    lams = [mix_batch(always, x, y)[1].lam for _ in range(400)]
    assert all(0.0 <= v <= 1.0 for v in lams) and len(set(lams)) > 10
    assert 0.5 < sum(lams) / len(lams) < 0.9
    a = build_augment(AugmentConfig(cutmix_prob=0.5), torch.Generator().manual_seed(7))
    b = build_augment(AugmentConfig(cutmix_prob=0.5), torch.Generator().manual_seed(7))
    for _ in range(10):
        (xa, ta), (xb, tb) = mix_batch(a, x, y), mix_batch(b, x, y)
        assert torch.equal(xa, xb) and type(ta) is type(tb)
    assert mix_batch(lambda v: v, x, y)[1] is y  # a bare augment function has no batch step


class _Flat(nn.Module):
    num_features = 2 * 8 * 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _ctx(augment, n_exposed: int = 6) -> StreamContext:
    return StreamContext(n_exposed=n_exposed, exposed_classes=list(range(n_exposed)),
                         label_index=torch.arange(n_exposed), generator=augment.generator, augment=augment)


def test_finetune_loss_is_the_mixed_loss_on_the_mixed_batch() -> None:
    torch.manual_seed(0)
    model = Finetune(FinetuneConfig(), _Flat(), 6, (2, 8, 8))
    x, y = _const_batch()
    aug = build_augment(AugmentConfig(cutmix_prob=1.0), torch.Generator().manual_seed(5))
    loss = model.training_loss(x, y, _ctx(aug))
    xm, t = cutmix(x, y, 1.0, _after_prob_draw(5))
    assert torch.allclose(loss, mixed_cross_entropy(model.logits(xm), t))
    plain = build_augment(AugmentConfig(cutmix_prob=0.0), torch.Generator().manual_seed(5))
    assert torch.allclose(model.training_loss(x, y, _ctx(plain)), F.cross_entropy(model.logits(x), y))


def _after_prob_draw(seed: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    torch.rand((), generator=g)  # TrainAugment.mix draws the per-update coin first
    return g


def test_er_mixes_stream_and_replay_together(monkeypatch) -> None:
    import clplat.strategies.finetune as ft

    seen: list[int] = []
    real = ft.mix_batch
    monkeypatch.setattr(ft, "mix_batch", lambda aug, x, y: (seen.append(x.shape[0]), real(aug, x, y))[1])
    model = ExperienceReplay(ERConfig(memory_size=10, memory_batch=4), _Flat(), 6, (2, 8, 8))
    x, y = _const_batch()
    aug = build_augment(AugmentConfig(cutmix_prob=1.0), torch.Generator().manual_seed(0))
    ctx = _ctx(aug)
    model.on_stream_batch(x, y, ctx)
    model.training_loss(x, y, ctx)
    assert seen == [6 + 4]


def test_mvp_ignores_cutmix_like_the_release() -> None:
    timm = pytest.importorskip("timm")
    from clplat.strategies.mvp import MVP, MVPConfig

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=8,
                            patch_size=4, embed_dim=16, depth=2, num_heads=2, in_chans=2)
    torch.manual_seed(0)
    model = MVP(MVPConfig(g_blocks=[0], e_blocks=[1], e_len=2, pool_size=3), vit, 6, (2, 8, 8))
    x, y = _const_batch()
    aug = build_augment(AugmentConfig(cutmix_prob=1.0), torch.Generator().manual_seed(0))
    state = aug.generator.get_state()
    model.training_loss(x, y, _ctx(aug))
    assert torch.equal(aug.generator.get_state(), state)  # no CutMix draw happened
