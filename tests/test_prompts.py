"""L2P and DualPrompt: registered, train only their prompts/keys/head, mask unexposed classes, and
select prompts as configured."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from clplat.errors import UserError  # noqa: E402
from clplat.strategies import STRATEGIES, StreamContext  # noqa: E402
from clplat.strategies.prompts import (  # noqa: E402
    L2P,
    DualPrompt,
    DualPromptConfig,
    L2PConfig,
    cosine_distance,
    prompts_by_block,
)

C = 6


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=32, depth=4, num_heads=4)


def _ctx(n_exposed: int = 4) -> StreamContext:
    li = torch.tensor([i if i < n_exposed else -1 for i in range(C)])
    return StreamContext(n_exposed=n_exposed, exposed_classes=list(range(n_exposed)), label_index=li)


STRATS = [
    ("l2p", L2PConfig(pool_size=6, top_k=2, prompt_len=3)),
    ("dualprompt", DualPromptConfig(g_blocks=[0], e_blocks=[1, 2], e_len=4, pool_size=5)),
    ("dualprompt", DualPromptConfig(g_blocks=[0, 1], e_blocks=[1, 2], e_len=4, pool_size=5,
                                    prompt_func="prefix_tuning")),
]


@pytest.mark.parametrize("name,cfg", STRATS)
def test_train_step_and_eval(name: str, cfg) -> None:
    strategy = STRATEGIES.get(name)(cfg, _vit(), C, (3, 16, 16)).train()
    x, y = torch.randn(5, 3, 16, 16), torch.randint(0, 4, (5,))
    out = strategy.training_loss(x, y, _ctx())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["pull"] > 0
    assert all(p.grad is None for p in strategy.backbone.parameters())
    trainable = dict(strategy.named_parameters())
    assert strategy.keys.grad is not None and strategy.head.weight.grad is not None
    assert all(n.startswith(("keys", "prompts", "g_prompt", "e_prompts", "head"))
               for n, p in trainable.items() if p.requires_grad)
    strategy.eval()
    with torch.no_grad():
        logits = _ctx().mask_logits(strategy.predict(x, _ctx()))
    assert logits.shape == (5, C) and torch.isinf(logits[:, 4:]).all() and torch.isfinite(logits[:, :4]).all()


def test_l2p_diversified_selection_counts_training_use() -> None:
    strategy = L2P(L2PConfig(pool_size=6, top_k=2, prompt_len=3, diversified_selection=True), _vit(), C,
                   (3, 16, 16)).train()
    strategy.training_loss(torch.randn(5, 3, 16, 16), torch.randint(0, 4, (5,)), _ctx())
    assert float(strategy.frequency.sum()) == 6 + 5 * 2
    strategy.eval()
    with torch.no_grad():
        strategy.predict(torch.randn(5, 3, 16, 16), _ctx())
    assert float(strategy.frequency.sum()) == 16


def test_configs_validate() -> None:
    with pytest.raises(ValueError):
        L2PConfig(pool_size=3, top_k=5)
    with pytest.raises(UserError):
        DualPrompt(DualPromptConfig(e_blocks=[2, 7]), _vit(), C, (3, 16, 16))


def test_shared_pieces() -> None:
    q, k = torch.randn(3, 8), torch.randn(4, 8)
    d = cosine_distance(q, k)
    assert d.shape == (3, 4) and torch.allclose(cosine_distance(k, k).diagonal(), torch.zeros(4), atol=1e-6)
    g, e = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 5, 8)
    by_block = prompts_by_block([([0, 1], g), ([1, 2], e)])
    assert by_block[0].shape == (2, 3, 8) and by_block[1].shape == (2, 8, 8)
    assert by_block[2].shape == (2, 5, 8)
    assert torch.equal(by_block[1][:, :3], g[:, 1])


def test_l2p_selection_is_plain_top_k_by_default_as_the_release() -> None:
    """The release never updates its frequency buffer, so selection is plain top-k distance; the
    paper's diversification (distance x normalised use frequency) is the opt-in."""
    assert L2PConfig().diversified_selection is False
    for diversified in (False, True):
        torch.manual_seed(0)
        s = L2P(L2PConfig(pool_size=6, top_k=2, prompt_len=1, diversified_selection=diversified), _vit(), C,
                (3, 16, 16)).train()
        x = torch.randn(4, 3, 16, 16)
        with torch.no_grad():
            dist = cosine_distance(s.backbone.query(x, final_norm=True), s.keys)
            nearest = dist.topk(2, dim=1, largest=False).indices
            s.frequency.copy_(torch.ones(6))
            s.frequency[nearest.flatten()] = 1000.0  # heavily used: diversification avoids them
            s.training_loss(x, torch.zeros(4, dtype=torch.long), _ctx())
        counts = s.frequency - 1 - 999 * torch.isin(torch.arange(6), nearest.flatten()).float()
        expect = torch.bincount(nearest.flatten(), minlength=6).float()
        assert torch.equal(counts, expect) is (not diversified)
