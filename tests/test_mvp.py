"""MVP: closed-form GSF equals per-sample backward passes, L_CVPT pulls keys to their queries, the
logit masks apply at eval, the use counter is state, and MVP-R stores original class ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")

from clplat.strategies import STRATEGIES, StreamContext  # noqa: E402
from clplat.strategies.mvp import MVP, MVPConfig, cvpt_loss, gsf_weights, gsf_weights_reference  # noqa: E402

C = 8


def _vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=32, depth=4, num_heads=4)


def _ctx(label_index: list[int]) -> StreamContext:
    li = torch.tensor(label_index)
    exposed = sorted((int(c) for c in (li >= 0).nonzero().flatten()), key=lambda c: int(li[c]))
    return StreamContext(n_exposed=len(exposed), exposed_classes=exposed, label_index=li,
                         generator=torch.Generator().manual_seed(0))


def _mvp(**kw) -> MVP:
    torch.manual_seed(0)
    cfg = MVPConfig(g_blocks=[0], e_blocks=[1, 2], e_len=4, pool_size=4, **kw)
    return MVP(cfg, _vit(), C, (3, 16, 16))


def test_closed_form_gsf_equals_per_sample_backward() -> None:
    torch.manual_seed(1)
    ctx = _ctx([0, 1, 2, 3, 4, -1, -1, -1])
    head = torch.nn.Linear(24, C)
    f, m = torch.randn(32, 24), 2 * torch.sigmoid(torch.randn(32, C))
    y = torch.randint(0, 5, (32,))
    logits = ctx.mask_logits(m * head(f))
    for gamma in (2.0, 1.0):
        ours = gsf_weights(f, y, logits, m, gamma)
        ref = gsf_weights_reference(f, y, m, head, ctx, gamma)
        assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert ours.shape == (32,) and (ours >= 0).all() and (ours <= 2 ** gamma + 1e-6).all()


@pytest.mark.parametrize("variant", ["per_sample", "release"])
def test_cvpt_decreases_when_key_moves_toward_queries(variant: str) -> None:
    torch.manual_seed(0)
    keys = torch.randn(4, 16)
    direction = torch.randn(16)
    queries = direction + 0.3 * torch.randn(6, 16)
    idx = torch.zeros(6, dtype=torch.long)
    tau = torch.tensor([1.0, 1, 1, 3, 3, 3])

    def loss(k: torch.Tensor) -> torch.Tensor:
        d = 1 - F.cosine_similarity(queries, k[idx], dim=1)
        return cvpt_loss(d, k, idx, tau, variant)

    before = loss(keys)
    moved = keys.clone()
    moved[0] = 0.5 * keys[0] + 0.5 * direction * keys[0].norm() / direction.norm()
    assert loss(moved) < before
    k = keys.clone().requires_grad_(True)  # and one gradient step moves the key the same way
    loss(k).backward()
    assert loss(keys - 0.1 * k.grad) < before


def test_logit_mask_and_unexposed_mask_apply_at_eval() -> None:
    model = _mvp().eval()
    ctx = _ctx([0, 1, 2, 3, -1, -1, -1, -1])
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        base = model.predict(x, ctx)
        model.logit_mask[:, 2] = -30.0  # every key's mask switches class 2 off
        masked = ctx.mask_logits(model.predict(x, ctx))
    assert torch.allclose(masked[:, 2], torch.zeros(5), atol=1e-6)
    assert torch.isinf(masked[:, 4:]).all() and (masked[:, 4:] < 0).all()
    assert torch.allclose(masked[:, :2], base[:, :2])
    assert not masked.argmax(1).ge(4).any()
    with torch.no_grad():  # the instance mask multiplies logits: 2 sigmoid(-1) at init
        plain = model.head(model.features(model.backbone.embed(x), model.select(model.backbone.embed(x))[1]))
    assert torch.allclose(base, plain * 2 * torch.sigmoid(torch.tensor(-1.0)), atol=1e-5)


def test_count_updates_in_training_only_and_steers_eval_selection() -> None:
    model = _mvp()
    ctx = _ctx([0, 1, 2, 3, -1, -1, -1, -1])
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
    model.train()
    model.training_loss(x, y, ctx)
    assert int(model.count.sum()) == 6
    model.eval()
    with torch.no_grad():
        model.predict(x, ctx)
        _, idx = model.select(model.backbone.embed(x))
    assert int(model.count.sum()) == 6
    model.count[idx[0]] += 1e6  # an over-used key is avoided at eval too
    with torch.no_grad():
        _, idx2 = model.select(model.backbone.embed(x))
    assert idx2[0] != idx[0]
    assert "count" in model.state_dict()


def test_components_switch_off_and_gradients_reach_only_trainables() -> None:
    ctx = _ctx([0, 1, 2, 3, -1, -1, -1, -1])
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
    losses = {}
    for flags in [{}, {"use_mask": False}, {"use_cvpt": False}, {"use_afs": False}, {"use_gsf": False},
                  {"gsf_weighting": "batch", "cvpt_tau": "release"}]:
        model = _mvp(**flags).train()
        out = model.training_loss(x, y, ctx)
        out["loss"].backward()
        losses[str(flags)] = out["loss"].item()
        assert model.keys.grad is not None and model.e_prompts.grad is not None
        assert model.g_prompt.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0
        assert (model.logit_mask.grad is not None) == model.cfg.use_mask
        assert all(p.grad is None for p in model.backbone.parameters())
        assert "gsf_weight" in out or not model.cfg.use_gsf
    assert len(set(round(v, 6) for v in losses.values())) == len(losses)


def test_mvp_r_memory_stores_original_ids_and_maps_once() -> None:
    model = _mvp(memory_size=10, memory_batch=4).train()
    # original classes 6 and 3 were exposed first: exposure indices 0 and 1
    ctx = _ctx([-1, -1, -1, 1, -1, -1, 0, -1])
    calls: list[torch.Tensor] = []
    to_index = ctx.to_index

    def spy(y_orig: torch.Tensor) -> torch.Tensor:
        calls.append(y_orig.clone())
        return to_index(y_orig)

    ctx.to_index = spy  # type: ignore[method-assign]
    x, y_orig = torch.randn(4, 3, 16, 16), torch.tensor([6, 3, 6, 3])
    model.on_stream_batch(x, y_orig, ctx)
    assert sorted(model.memory.y[: len(model.memory)].tolist()) == [3, 3, 6, 6]
    out = model.training_loss(x, ctx.label_index[y_orig], ctx)
    assert len(calls) == 1 and set(calls[0].tolist()) <= {3, 6}  # original ids, mapped exactly once
    assert torch.isfinite(out["loss"])
    assert int(model.count.sum()) == 8  # 4 stream + 4 replay samples went through the model
    state = model.state_dict()
    assert "memory.x" in state and "memory.y" in state and "memory.n_seen" in state


def test_registered_and_config_validates() -> None:
    assert STRATEGIES.get("mvp") is MVP
    with pytest.raises(ValueError):
        MVPConfig(g_blocks=[0, 0])
    with pytest.raises(ValueError):
        MVPConfig(use_bogus=True)


@pytest.mark.slow
def test_short_headline_run_beats_chance(tmp_path) -> None:
    """The digits check, reduced (one update per batch, sparse evals), end to end through clplat.run."""
    import json
    from pathlib import Path

    from clplat.run import main

    root = Path(__file__).resolve().parents[1]
    if not (root / "clplat" / "weights" / "vit_glyphs32.safetensors").is_file():
        pytest.skip("shipped weights not built")
    code = main([str(root / "experiments" / "si_blurry_mvp_digits.yaml"), "online.online_iter=1",
                 "online.stream_batch=32", "online.eval_period=400", "logging.wandb=disabled",
                 "logging.progress=false", f"logging.runs_dir={tmp_path}", "name=short",
                 f"backbone.pretrained_file={root / 'clplat/weights/vit_glyphs32.safetensors'}"])
    assert code == 0
    metrics = json.loads((tmp_path / "short" / "results.json").read_text())["metrics"]
    assert metrics["A_last"] > 0.15 and metrics["A_auc"] > 0.2  # chance: 0.10 over 10 classes
