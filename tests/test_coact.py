"""CoACT's pieces against hand computations: the supervised contrastive loss, the EMA update and
streamed class-mean prototypes; then the strategy's hooks and a short digits FSCIL run."""

from __future__ import annotations

import math

import pytest
import torch

from clplat.strategies.base import StreamContext
from clplat.strategies.fscil_common import class_means, ema_update_, supcon_loss, write_prototypes


def test_supcon_equals_hand_computed_value_with_an_anchor_without_positives() -> None:
    """z0 = z2 = (1, 0) share label 0, z1 = (0, 1) is alone in label 1; tau = base_tau = 0.5.
    Anchor 0: its positive z2 has z0.z2/tau = 2, the other candidate z1 has 0, so
    l_0 = -(2 - log(e^0 + e^2)) = log(1 + e^-2); anchor 2 is the same; anchor 1 has no positive
    and is left out. Loss = log(1 + e^-2)."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = supcon_loss(z, torch.tensor([0, 1, 0]), tau=0.5, base_tau=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_supcon_equals_hand_computed_value_with_temperature_factor() -> None:
    """Two pairs: z0 = z1 = (1, 0) label 0, z2 = z3 = (0, 1) label 1; tau 0.5, base_tau 1.
    Every anchor: positive logit 1/0.5 = 2, two negatives at 0, so
    l_i = -(0.5 / 1) * (2 - log(e^2 + 2)) = 0.5 * log(1 + 2 e^-2)."""
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss = supcon_loss(z, torch.tensor([0, 0, 1, 1]), tau=0.5, base_tau=1.0)
    assert loss.item() == pytest.approx(0.5 * math.log(1 + 2 * math.exp(-2)), rel=1e-6)


def test_supcon_two_positives_average_their_log_probabilities() -> None:
    """z0, z1, z2 all label 0 with z0.z1 = 1, z0.z2 = 0 (z2 orthogonal), tau = base_tau = 1,
    anchor 0: denominators e^1 + e^0; log-probs 1 - log(e + 1) and 0 - log(e + 1); their mean
    is 0.5 - log(e + 1). Anchor 1 is the same; anchor 2 sees z0, z1 both at 0:
    log-prob -log 2 each. Loss = [2 (log(e + 1) - 0.5) + log 2] / 3."""
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = supcon_loss(z, torch.tensor([0, 0, 0]), tau=1.0, base_tau=1.0)
    expected = (2 * (math.log(math.e + 1) - 0.5) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ema_update_is_momentum_average_and_keeps_equal_weights_exact() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(5, 3), torch.randn(4)]
    student = [torch.randn(5, 3), teacher[1].clone()]
    before = [t.clone() for t in teacher]
    ema_update_(teacher, student, 0.999)
    assert torch.allclose(teacher[0], 0.999 * before[0] + 0.001 * student[0], atol=1e-7)
    assert not torch.allclose(teacher[0], before[0])
    assert torch.equal(teacher[1], before[1])  # an unchanged (frozen) weight never drifts


def _ctx(order: list[int], num_classes: int) -> StreamContext:
    li = torch.full((num_classes,), -1)
    li[torch.tensor(order)] = torch.arange(len(order))
    return StreamContext(n_exposed=len(order), exposed_classes=order, label_index=li)


def test_prototypes_equal_per_class_means_in_exposure_rows() -> None:
    torch.manual_seed(0)
    x = torch.randn(23, 6)
    y = torch.tensor([3, 1, 3, 0, 1] * 4 + [0, 0, 3])
    ctx = _ctx([3, 0, 1], 5)  # class 3 -> row 0, 0 -> 1, 1 -> 2
    loader = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 23, 4)]
    calls = []

    def extract(b: torch.Tensor) -> torch.Tensor:
        calls.append(len(b))
        return 2 * b

    means, counts = class_means(extract, loader, ctx, num_rows=5, dim=6)
    assert sum(calls) == 23  # one pass over the loader
    for row, cls in enumerate([3, 0, 1]):
        assert counts[row] == int((y == cls).sum())
        assert torch.allclose(means[row], 2 * x[y == cls].mean(0), atol=1e-6)
    weight = torch.full((5, 6), 7.0)
    assert write_prototypes(weight, means, counts) == [0, 1, 2]
    assert torch.equal(weight[3:], torch.full((2, 6), 7.0))  # rows of unseen classes untouched


# --- the strategy's hooks on a tiny ViT --------------------------------------------------------
timm = pytest.importorskip("timm")

from clplat.backbones.lora import is_lora  # noqa: E402
from clplat.errors import UserError  # noqa: E402
from clplat.strategies.coact import Coact, CoactConfig  # noqa: E402


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=32, depth=4, num_heads=4)


def _session_ctx(n_exposed: int, num_classes: int, session: int, epoch: int = 0) -> StreamContext:
    ctx = _ctx(list(range(n_exposed)), num_classes)
    g = torch.Generator().manual_seed(0)
    ctx.generator = g
    ctx.augment = lambda x: x + 0.01 * torch.randn(x.shape, generator=g)
    ctx.session, ctx.epoch = session, epoch  # fields of the sessions regime's context
    return ctx


def _coact(**kw) -> Coact:
    cfg = CoactConfig(**{"lora": {"rank": 4}, **kw})
    return Coact(cfg, _vit(), 6, (3, 16, 16))


def _loader(n_classes: int, per_class: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_classes * per_class, 3, 16, 16, generator=g)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return [(x[i:i + 4], y[i:i + 4]) for i in range(0, len(y), 4)]


def test_session_start_writes_class_mean_prototypes_of_the_student() -> None:
    model = _coact().eval()
    loader = _loader(4)
    model.on_session_start(0, loader, _session_ctx(4, 6, 0))
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    with torch.no_grad():
        f = model.backbone(x)
    for c in range(4):
        assert torch.allclose(model.head.weight[c], f[y == c].mean(0), atol=1e-5)


def test_prototype_refresh_rewrites_base_rows_after_session_zero_only_when_asked() -> None:
    loader = _loader(4)
    for refresh in (False, True):
        model = _coact(prototype_refresh=refresh).eval()
        model.on_session_start(0, loader, _session_ctx(4, 6, 0))
        with torch.no_grad():
            for n, p in model.backbone.named_parameters():
                if ".lora_B." in n:
                    p.normal_()  # "training" moved the features
            tuned = model.backbone(loader[0][0][:3]).mean(0)  # loader[0]: 3 samples of class 0 first
        before = model.head.weight.detach().clone()
        model.on_session_end(0, loader, _session_ctx(4, 6, 0))
        if refresh:
            assert torch.allclose(model.head.weight[0], tuned, atol=1e-5)
        else:
            assert torch.equal(model.head.weight, before)


def test_controlled_ft_unfreezes_from_its_layer_and_epoch() -> None:
    model = _coact(ft_start_layer=2, ft_start_epoch=3)
    model.on_epoch_start(0, 2, _session_ctx(4, 6, 0, 2))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.backbone.named_parameters() if is_lora(n)}
    model.on_epoch_start(0, 3, _session_ctx(4, 6, 0, 3))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad and not is_lora(n)}
    assert any(n.startswith("blocks.2.") for n in trainable) and any(n.startswith("norm.") for n in trainable)
    assert not any(n.startswith(("blocks.0.", "blocks.1.", "patch_embed", "cls_token")) for n in trainable)
    groups = model.optimizer_param_groups(0.1)
    slow = {id(p) for p in groups[1]["params"]}
    assert groups[1]["lr"] == pytest.approx(0.1 * 0.01)
    assert all(id(p) in slow for n, p in model.backbone.named_parameters() if n in trainable)
    model.on_epoch_start(1, 0, _session_ctx(5, 6, 1))  # sessions >= 1: only head + LoRA
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if not is_lora(n))


def test_base_step_updates_the_teacher_by_ema_of_the_students_base_weights() -> None:
    model = _coact(ft_start_layer=-1, ft_start_epoch=0, momentum=0.9)
    ctx = _session_ctx(4, 6, 0)
    model.on_session_start(0, _loader(4), ctx)
    opt = torch.optim.SGD([g for grp in model.optimizer_param_groups(0.5) for g in grp["params"]], lr=0.5)
    x, y = _loader(4)[0]
    model.train()
    opt.zero_grad()
    model.training_loss(x, y, ctx)["loss"].backward()
    opt.step()  # the student's base weights move; the teacher still holds the pretrained ones
    name = "blocks.1.attn.qkv.q.weight"
    student = dict(model.backbone.named_parameters())["blocks.1.attn.qkv.q.base_layer.weight"].detach().clone()
    before = dict(model.teacher.named_parameters())[name].detach().clone()
    assert not torch.equal(student, before)
    out = model.training_loss(x, y, ctx)
    after = dict(model.teacher.named_parameters())[name]
    assert torch.allclose(after, 0.9 * before + 0.1 * student, atol=1e-6)
    assert set(out) >= {"loss", "ce", "supcon"}


def test_state_dict_carries_teacher_copies_and_prototypes() -> None:
    model = _coact()
    ctx0, ctx1 = _session_ctx(4, 6, 0), _session_ctx(6, 6, 1)
    model.on_session_start(0, _loader(4), ctx0)
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if ".lora_B." in n:
                p.normal_()
    model.on_session_start(1, _loader(6, seed=1), ctx1)  # takes the session-0 copies
    assert bool(model.base_taken) and int(model.n_base) == 4
    keys = model.state_dict().keys()
    assert any(k.startswith("teacher.") for k in keys) and any(k.startswith("base_backbone.") for k in keys)
    fresh = _coact()
    fresh.load_state_dict(model.state_dict())
    fresh.on_session_start(1, _loader(6, seed=2), ctx1)  # a resumed session: nothing rewritten
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.predict(x, ctx1), model.predict(x, ctx1))
        assert torch.equal(fresh.base_backbone(x), model.base_backbone(x))


def test_incremental_loss_has_consistency_on_base_logits_only() -> None:
    model = _coact()
    model.on_session_start(0, _loader(4), _session_ctx(4, 6, 0))
    ctx1 = _session_ctx(6, 6, 1)
    model.on_session_start(1, _loader(6), ctx1)
    x, y = _loader(6)[-1]
    model.eval()  # no LoRA dropout: the student equals its session-0 copy right after the copy
    out = model.training_loss(x, y, ctx1)
    assert set(out) == {"loss", "ce", "supcon", "consistency"}
    assert out["consistency"].item() == 0.0
    with torch.no_grad():
        model.head.weight[4:].add_(1.0)  # rows of session-1 classes: not part of the consistency
    assert model.training_loss(x, y, ctx1)["consistency"].item() == 0.0
    with torch.no_grad():
        model.head.weight[:4].add_(0.1)
    out = model.training_loss(x, y, ctx1)
    assert out["consistency"].item() > 0
    out["loss"].backward()
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in model.base_backbone.parameters())


def test_lora_target_matching_no_module_is_a_user_error() -> None:
    with pytest.raises(UserError, match="'query' matches no linear layer"):
        _coact(lora={"targets": ["query", "value"]})


# --- end to end in the sessions regime (digits FSCIL, shipped ViT) -----------------------------
DIGITS = "experiments/fscil_coact_digits.yaml"


def _digits_overrides(tmp_path, *extra: str) -> list[str]:
    return ["threads=1", "logging.wandb=disabled", "logging.progress=false",
            f"logging.runs_dir={tmp_path / 'runs'}", "sessions.base.epochs=2",
            "sessions.incremental.epochs=1", "coact.ft_start_epoch=1", *extra]


@pytest.mark.slow
def test_short_coact_run_beats_chance_on_every_session(tmp_path) -> None:
    from clplat.config import load_config
    from clplat.engine.experiment import run_experiment
    from tests.conftest import REPO

    res = run_experiment(load_config(REPO / DIGITS, _digits_overrides(tmp_path)))
    seen = [4, 6, 8, 10]
    assert len(res["session_acc"]) == 4
    for acc, n in zip(res["session_acc"], seen, strict=True):
        assert acc > 3 * 100 / n, res["session_acc"]  # chance is 100 / n
    # novel classes too: accuracy on their test samples, predicted among all seen classes
    assert all(a > 3 * 100 / n for a, n in zip(res["novel_acc"][1:], seen[1:], strict=True)), res["novel_acc"]


@pytest.mark.slow
def test_coact_killed_mid_base_session_resumes_to_identical_metrics(tmp_path) -> None:
    """Teacher EMA, controlled fine-tuning, session-0 copies and prototypes all survive SIGKILL."""
    import json

    from tests.conftest import REPO, signal_when
    from tests.test_engine import _cli_run

    over = _digits_overrides(tmp_path, "sessions.base.epochs=3")
    ref = _cli_run([str(REPO / DIGITS), *over, "name=ref"])
    assert ref.wait(timeout=900) == 0, ref.stderr.read()
    run_dir = tmp_path / "runs" / "killed"
    p = _cli_run([str(REPO / DIGITS), *over, "name=killed"])
    signal_when(p, run_dir, lambda c: c["session"] == 0 and c["epoch"] >= 1, timeout=600)
    p = _cli_run(["--resume", str(run_dir)])
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    got = json.loads((run_dir / "results.json").read_text())
    want = json.loads((tmp_path / "runs" / "ref" / "results.json").read_text())
    assert got["process"]["resumed"] and got["process"]["start_session"] == 0
    assert got["evals"] == want["evals"] and got["session_acc"] == want["session_acc"]


@pytest.mark.parametrize("strategy, extra", [
    ("lora_finetune", ["sessions.incremental.epochs=0"]),
    ("simplecil", ["sessions.base.epochs=0", "sessions.incremental.epochs=0"]),
])
@pytest.mark.slow
def test_baselines_run_in_the_sessions_regime(tmp_path, strategy: str, extra: list[str]) -> None:
    from clplat.config import load_config
    from clplat.engine.experiment import run_experiment
    from tests.conftest import REPO

    over = [o for o in _digits_overrides(tmp_path) if not o.startswith("coact.")]
    res = run_experiment(load_config(REPO / DIGITS, [*over, f"strategy={strategy}", *extra]))
    assert all(a > 3 * 100 / n for a, n in zip(res["session_acc"], (4, 6, 8, 10), strict=True))


@pytest.mark.slow
def test_coact_with_a_bad_lora_target_exits_2_with_one_line(tmp_path) -> None:
    from tests.conftest import REPO, run_cli

    res = run_cli(["clplat.run", str(REPO / DIGITS), *_digits_overrides(tmp_path), "coact.lora.targets=[query]"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "'query' matches no linear layer" in lines[-1]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("results.json"))


def test_lora_finetune_trains_only_in_session_zero() -> None:
    from clplat.strategies.lora_finetune import LoraFinetune, LoraFinetuneConfig

    model = LoraFinetune(LoraFinetuneConfig(lora={"rank": 4}), _vit(), 6, (3, 16, 16))
    assert model.teacher is None and model.base_backbone is None  # no CoACT machinery
    x, y = _loader(6)[-1]
    out = model.training_loss(x, y, _session_ctx(6, 6, 0))
    assert set(out) == {"loss", "ce"}
    with pytest.raises(UserError, match="lora_finetune trains only in session 0"):
        model.training_loss(x, y, _session_ctx(6, 6, 1))


@pytest.mark.parametrize("strategy, extra", [("lora_finetune", []), ("coact", ["coact.incremental_tuning=false"])])
def test_training_epochs_after_session_zero_are_refused_by_the_config_check(strategy, extra) -> None:
    """Refused when the config is read, before session 0 trains (it used to fail at session 1)."""
    from clplat.config import load_config
    from tests.conftest import REPO

    over = [f"strategy={strategy}", "sessions.incremental.epochs=2", *extra]
    with pytest.raises(UserError, match=f"strategy '{strategy}' trains only in session 0"):
        load_config(REPO / DIGITS, over)
    load_config(REPO / DIGITS, [*over[:1], "sessions.incremental.epochs=0", *extra])  # accepted


def test_pooler_file_gives_hf_tanh_pooler_on_the_final_cls(tmp_path) -> None:
    """HF's pooler_output = tanh(W cls + b) on the CLS after the final LayerNorm (spec A.2)."""
    import numpy as np

    g = np.random.default_rng(0)
    kernel, bias = g.normal(size=(32, 32)).astype(np.float32), g.normal(size=32).astype(np.float32)
    path = tmp_path / "vit.npz"
    np.savez(path, **{"pre_logits/kernel": kernel, "pre_logits/bias": bias})
    model = _coact(pooler_file=str(path)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        cls = _vit()(x)  # the plain ViT's feature: CLS after the final norm
        want = torch.tanh(cls @ torch.from_numpy(kernel) + torch.from_numpy(bias))
        assert torch.allclose(model.backbone(x), want, atol=1e-5)
        assert torch.allclose(model.teacher(x), want, atol=1e-5)
    model.on_epoch_start(0, 0, _session_ctx(4, 6, 0))  # ft_start_layer -1: everything trains
    assert model.backbone.head[0].weight.requires_grad
    np.savez(tmp_path / "bad.npz", other=bias)
    with pytest.raises(UserError, match="no pre_logits"):
        _coact(pooler_file=str(tmp_path / "bad.npz"))
    with pytest.raises(UserError, match="pooler_file not found"):
        _coact(pooler_file=str(tmp_path / "missing.npz"))
