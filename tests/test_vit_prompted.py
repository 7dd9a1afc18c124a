"""The prompted ViT: empty prompts change nothing, prefixes equal extra keys/values, the query path
is the un-prompted CLS at its block, and the frozen model stays frozen and in eval mode."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from clplat.backbones.vit_prompted import PromptedViT, prefix_block_forward  # noqa: E402
from clplat.errors import UserError  # noqa: E402


def _vit(depth: int = 4, dim: int = 32, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=dim, depth=depth, num_heads=4, **kw)


@pytest.fixture
def model() -> PromptedViT:
    return PromptedViT(_vit())


def test_empty_prompts_leave_output_unchanged(model: PromptedViT) -> None:
    x = torch.randn(3, 3, 16, 16)
    ref = model.vit(x)
    assert torch.allclose(model(x), ref, atol=1e-6)
    empty = {b: torch.zeros(3, 0, 32) for b in range(4)}
    assert torch.allclose(model.pool(model.forward_tokens(x, append=empty)), ref, atol=1e-6)
    no_prefix = {b: torch.zeros(3, 2, 0, 32) for b in range(4)}
    assert torch.allclose(model.pool(model.forward_tokens(x, prefix=no_prefix)), ref, atol=1e-6)
    assert torch.allclose(model.pool(model.forward_tokens(x, carry=torch.zeros(3, 0, 32))), ref, atol=1e-6)


def test_prefix_equals_keys_values_of_extra_tokens(model: PromptedViT) -> None:
    """Prefix (k, v) computed from tokens z through the block's own qkv weights must give the same
    outputs for x as running the timm block on [x, z]."""
    block = model.vit.blocks[1]
    x, z = torch.randn(2, 17, 32), torch.randn(2, 5, 32)
    qkv = block.attn.qkv(block.norm1(z)).reshape(2, 5, 3, 32)
    prefix = torch.stack([qkv[:, :, 1], qkv[:, :, 2]], dim=1)  # (B, 2, L, D)
    with torch.no_grad():
        ref = block(torch.cat([x, z], dim=1))[:, :17]
        out = prefix_block_forward(block, x, prefix)
    assert torch.allclose(out, ref, atol=1e-5)


def test_appended_prompts_are_dropped_and_steer_the_output(model: PromptedViT) -> None:
    x = torch.randn(2, 3, 16, 16)
    prompt = torch.randn(2, 5, 32, requires_grad=True)
    tokens = model.forward_tokens(x, append={1: prompt})
    assert tokens.shape == (2, 17, 32)  # CLS + 16 patches: the prompt tokens were dropped
    assert not torch.allclose(model.pool(tokens), model(x))
    model.pool(tokens).pow(2).sum().backward()  # (a plain sum of a LayerNorm output has no gradient)
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vit.parameters())


def test_carry_tokens_are_kept_to_the_end(model: PromptedViT) -> None:
    tokens = model.forward_tokens(torch.randn(2, 3, 16, 16), carry=torch.randn(2, 4, 32))
    assert tokens.shape == (2, 21, 32)


def test_query_is_unprompted_cls_after_block(model: PromptedViT) -> None:
    x = torch.randn(2, 3, 16, 16)
    vit = model.vit
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for depth in range(5):
        ref = h
        for block in vit.blocks[:depth]:
            ref = block(ref)
        assert torch.allclose(model.query(x, depth), ref[:, 0], atol=1e-6)
    assert torch.allclose(model.query(x, final_norm=True), vit.forward_features(x)[:, 0], atol=1e-6)
    with pytest.raises(UserError):
        model.query(x, depth=9)


def test_backbone_frozen_and_always_eval() -> None:
    model = PromptedViT(_vit(drop_rate=0.5, drop_path_rate=0.5))
    model.train()
    assert model.training and not model.vit.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))  # no dropout / drop path


def test_build_by_name_and_reject_non_vit() -> None:
    model = PromptedViT("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, depth=2,
                        num_heads=2)
    assert model.depth == 2 and model.num_features == 16
    with pytest.raises(UserError):
        PromptedViT(torch.nn.Linear(3, 3))
