"""CCT backbone: sizes of the spec's cct_6, the sinusoidal embedding by hand, fused vs separate
q/k/v, sequence pooling, registration and bad kwargs."""

from __future__ import annotations

import math

import pytest
import torch

from clplat.backbones import build_backbone
from clplat.backbones.cct import CCT, sinusoidal_embedding
from clplat.config import BackboneConfig
from clplat.errors import UserError


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_cct6_sizes_match_spec_b1():
    m = build_backbone(BackboneConfig(name="cct_6"), (3, 32, 32))
    assert (len(m.blocks), m.blocks[0].attn.num_heads, m.num_features) == (6, 4, 256)
    assert m.blocks[0].linear1.out_features == 512  # mlp ratio 2
    assert _params(m.tokenizer) == 3 * 256 * 9  # one 3x3 conv, no bias: the spec's ~7 K
    # encoder: 6 x (qkv 3*256^2 + proj 256^2+256 + FFN 2*256*512+512+256 + 2 LN) + final LN + pool
    per_layer = 3 * 256 * 256 + 256 * 256 + 256 + 2 * 256 * 512 + 512 + 256 + 4 * 256
    assert _params(m) - _params(m.tokenizer) == 6 * per_layer + 512 + 257  # ~3.16 M
    assert m.pos_embed.shape == (1, 256, 256)  # 16 x 16 tokens from 32 px
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 256)
    m7 = build_backbone(BackboneConfig(name="cct_7"), (3, 32, 32))
    assert len(m7.blocks) == 7


def test_sinusoidal_embedding_by_hand():
    pe = sinusoidal_embedding(5, 6)[0]
    for p in range(5):
        for i in range(6):
            a = p / 10000 ** (2 * (i // 2) / 6)
            assert pe[p, i].item() == pytest.approx(math.sin(a) if i % 2 == 0 else math.cos(a), abs=1e-6)


def test_fused_and_separate_qkv_compute_the_same():
    torch.manual_seed(0)
    kw = dict(num_layers=2, num_heads=2, mlp_ratio=2.0, embedding_dim=32, n_conv_layers=2)
    fused, sep = CCT((3, 16, 16), **kw, qkv="fused").eval(), CCT((3, 16, 16), **kw, qkv="separate").eval()
    state = fused.state_dict()
    for l in range(2):
        w = state.pop(f"blocks.{l}.attn.qkv.weight")
        for j, name in enumerate("qkv"):
            state[f"blocks.{l}.attn.{name}.weight"] = w[j * 32 : (j + 1) * 32]
    sep.load_state_dict(state)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(sep(x), fused(x))


def test_sequence_pooling_is_a_softmax_weighted_sum_of_tokens():
    torch.manual_seed(0)
    m = CCT((1, 8, 8), num_layers=1, num_heads=1, mlp_ratio=1.0, embedding_dim=8).eval()
    x = torch.randn(2, 1, 8, 8)
    tokens = m.blocks[0](m.tokenizer(x) + m.pos_embed)
    tokens = m.norm(tokens)
    w = torch.softmax(tokens @ m.pool.weight[0] + m.pool.bias, dim=1)
    torch.testing.assert_close(m(x), (w[..., None] * tokens).sum(1))


def test_small_variant_trains_a_step_and_bad_kwargs_are_one_line():
    m = build_backbone(BackboneConfig(name="cct", kwargs={"n_conv_layers": 2}), (3, 32, 32))
    assert _params(m) < 150_000
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(UserError, match="not divisible"):
        build_backbone(BackboneConfig(name="cct", kwargs={"num_heads": 3}), (3, 32, 32))
    with pytest.raises(UserError, match="not accepted"):
        build_backbone(BackboneConfig(name="cct_6", kwargs={"depth": 3}), (3, 32, 32))
