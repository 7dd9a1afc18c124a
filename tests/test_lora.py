"""LoRA on a timm ViT through peft: the q/v split is exact, adapters land only where configured,
a fresh (B = 0) adapter changes nothing, and a bad target is one clear error."""

from __future__ import annotations

import copy

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("peft")

from clplat.backbones.lora import LoraSpec, SplitQKV, add_lora, block_index, is_lora, split_qkv  # noqa: E402
from clplat.errors import UserError  # noqa: E402


def _vit(depth: int = 4, dim: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=dim, depth=depth, num_heads=4)


def test_split_qkv_equals_fused_qkv_exactly() -> None:
    fused = torch.nn.Linear(32, 96)
    split = SplitQKV(fused)
    x = torch.randn(3, 17, 32)
    assert torch.equal(split(x), fused(x))
    vit = _vit()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = vit(x)
        out = split_qkv(copy.deepcopy(vit))(x)
    assert torch.equal(out, ref)


def test_lora_only_in_configured_blocks_and_modules() -> None:
    vit = add_lora(_vit(), LoraSpec(rank=4, blocks=[1, 3]))
    lora = {n for n, _ in vit.named_parameters() if is_lora(n)}
    where = {(block_index(n), n.split(".attn.qkv.")[1].split(".")[0]) for n in lora}
    assert where == {(1, "q"), (1, "v"), (3, "q"), (3, "v")}
    assert len(lora) == 8  # A and B of each
    n_lora = sum(p.numel() for n, p in vit.named_parameters() if is_lora(n))
    assert n_lora == 2 * 2 * 4 * (32 + 32)  # blocks x (q, v) x r x (in + out)
    assert {n for n, p in vit.named_parameters() if p.requires_grad} == lora


def test_zero_b_leaves_outputs_unchanged_and_nonzero_b_changes_them() -> None:
    plain = split_qkv(_vit())
    adapted = add_lora(copy.deepcopy(plain), LoraSpec(rank=4, dropout=0.1))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = _vit()(x)
        for mode in (False, True):  # train mode: dropout acts on the adapter path only
            adapted.train(mode)
            assert torch.equal(adapted(x), ref)
        for n, p in adapted.named_parameters():
            if ".lora_B." in n:
                p.normal_()
        adapted.eval()
        assert not torch.allclose(adapted(x), ref, atol=1e-4)


def test_vit_b16_adapter_is_under_one_percent() -> None:
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        total = sum(p.numel() for p in vit.parameters())
        add_lora(vit, LoraSpec())
    n_lora = sum(p.numel() for n, p in vit.named_parameters() if is_lora(n))
    assert n_lora == 589_824  # 16 * (768 + 768) * 2 * 12, spec A.4
    assert n_lora / total < 0.01


@pytest.mark.parametrize("spec, needle", [
    (LoraSpec(targets=["query", "v"]), "'query' matches no linear layer"),
    (LoraSpec(blocks=[0, 9]), "lora.blocks [0, 9]"),
])
def test_bad_lora_spec_is_one_user_error(spec: LoraSpec, needle: str) -> None:
    with pytest.raises(UserError) as err:
        add_lora(_vit(), spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_lora_needs_a_vit() -> None:
    with pytest.raises(UserError, match="VisionTransformer"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(3, 3)), LoraSpec())
