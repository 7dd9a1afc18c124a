"""ConTraCon: the grouped-conv re-weighting against a per-head loop, identity/zero kernels, fused vs
separate q/k/v, per-task parameter counts of spec B.2.1, frozen earlier tasks, entropy task-id,
the 16 views against PIL, save/load, bad input, the task-incremental scenario and its metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from clplat.backbones.cct import CCT
from clplat.engine.task_eval import task_metrics
from clplat.errors import UserError
from clplat.strategies.contracon import ConTraCon, ContraconConfig, ConvReweight
from clplat.strategies.contracon_views import VIEW_OPS, task_id_views


def _cct(qkv: str = "fused", dim: int = 32, heads: int = 2, layers: int = 2, size: int = 16) -> CCT:
    return CCT((3, size, size), num_layers=layers, num_heads=heads, mlp_ratio=2.0, embedding_dim=dim,
               n_conv_layers=2, qkv=qkv)


def _ctx(n_exposed: int, session: int) -> SimpleNamespace:
    return SimpleNamespace(n_exposed=n_exposed, session=session, augment=None)


def _strategy(k: int = 3, classes: tuple[int, ...] = (2, 2), backbone: CCT | None = None, **cfg) -> ConTraCon:
    s = ConTraCon(ContraconConfig(kernel_size=k, **cfg), backbone or _cct(), sum(classes), (3, 16, 16))
    for t in range(len(classes)):
        s.on_session_start(t, None, _ctx(sum(classes[: t + 1]), t))
    return s


# --- re-weighting ----------------------------------------------------------------------------------
def test_grouped_conv_equals_per_head_loop():
    torch.manual_seed(0)
    rw = ConvReweight(groups=6, kernel_size=5, gate_init=0.3)  # fused q,k,v x 2 heads
    with torch.no_grad():
        rw.gate.copy_(torch.randn(6))
    w0 = torch.randn(6 * 8, 20)  # d_h = 8, D = 20
    ref = []
    for g in range(6):
        sl = w0[g * 8 : (g + 1) * 8]
        conv = F.conv2d(sl[None, None], rw.weight[g : g + 1], rw.bias[g : g + 1], padding=2)[0, 0]
        ref.append(conv + torch.sigmoid(rw.gate[g]) * sl)
    torch.testing.assert_close(rw(w0), torch.cat(ref))


def test_zero_kernel_gives_gated_base_and_identity_kernel_gives_base():
    torch.manual_seed(0)
    rw = ConvReweight(groups=4, kernel_size=3, gate_init=1.0)
    w0 = torch.randn(16, 12)
    with torch.no_grad():
        rw.weight.zero_()
        rw.bias.zero_()
    assert torch.equal(rw(w0), torch.sigmoid(torch.tensor(1.0)) * w0)
    with torch.no_grad():
        rw.weight[:, 0, 1, 1] = 1.0
        rw.gate.fill_(-math.inf)
    assert torch.equal(rw(w0), w0)


def _copy_task(s: ConTraCon, src: int, dst: int) -> None:
    """Task ``dst`` := task ``src``'s LayerNorms, pool and head."""
    a, b = s.adapters[src], s.adapters[dst]
    b.norms.load_state_dict(a.norms.state_dict())
    b.pool.load_state_dict(a.pool.state_dict())
    b.head.load_state_dict(a.head.state_dict())


def test_identity_kernel_and_closed_gate_reproduce_the_base_network():
    torch.manual_seed(0)
    s = _strategy().eval()
    _copy_task(s, 0, 1)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        for rw in s.adapters[1].reweight:
            rw.weight.zero_()
            rw.weight[:, 0, 1, 1] = 1.0
            rw.bias.zero_()
            rw.gate.fill_(-math.inf)
        torch.testing.assert_close(s.task_logits(x, 1), s.task_logits(x, 0), rtol=0, atol=1e-6)
        s.adapters[1].reweight[0].gate.fill_(0.0)  # gate open: W = 1.5 W0 in block 0
        assert (s.task_logits(x, 1) - s.task_logits(x, 0)).abs().max() > 1e-5


def test_fused_qkv_gives_the_same_as_separate_q_k_v():
    torch.manual_seed(0)
    fused, sep = _cct("fused"), _cct("separate")
    state = fused.state_dict()
    for i in range(2):
        w = state.pop(f"blocks.{i}.attn.qkv.weight")
        for j, n in enumerate("qkv"):
            state[f"blocks.{i}.attn.{n}.weight"] = w[j * 32 : (j + 1) * 32]
    sep.load_state_dict(state)
    torch.manual_seed(1)
    sf = _strategy(backbone=fused).eval()
    torch.manual_seed(2)
    ss = _strategy(backbone=sep).eval()
    for t in range(2):
        a, b = sf.adapters[t], ss.adapters[t]
        b.norms.load_state_dict(a.norms.state_dict())
        b.pool.load_state_dict(a.pool.state_dict())
        b.head.load_state_dict(a.head.state_dict())
    with torch.no_grad():  # fused groups are [q heads, k heads, v heads]; separate has one module each
        for i in range(2):
            f = sf.adapters[1].reweight[i]
            f.gate.copy_(torch.randn(6))
            for j in range(3):
                r = ss.adapters[1].reweight[3 * i + j]
                for name in ("weight", "bias", "gate"):
                    getattr(r, name).copy_(getattr(f, name)[2 * j : 2 * j + 2])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ss.task_logits(x, 1), sf.task_logits(x, 1))


# --- parameter counts (spec B.2.1) ---------------------------------------------------------------
@pytest.mark.parametrize(("tasks", "per_task"), [(10, 25_315), (5, 27_885), (20, 24_030)])
def test_cct6_k15_parameters_per_task_match_spec(tasks, per_task):
    c = 100 // tasks
    s = ConTraCon(ContraconConfig(kernel_size=15), _cct6(), 100, (3, 32, 32))
    for t in range(3):
        s.on_session_start(t, None, _ctx(c * (t + 1), t))
    counts = s.task_parameter_counts()
    assert counts[1] == counts[2] == per_task
    assert counts[0] == 3_165_697 - 512 * 6 * 2 - 257 + (6 * 2 * 512 + 257 + 257 * c)  # whole CCT-6 + head


@pytest.mark.parametrize(("k", "reweight"), [(3, 792), (5, 1_944), (9, 5_976), (15, 16_344)])
def test_reweighting_parameters_per_kernel_size(k, reweight):
    s = ConTraCon(ContraconConfig(kernel_size=k), _cct6(), 20, (3, 32, 32))
    s.on_session_start(0, None, _ctx(10, 0))
    s.on_session_start(1, None, _ctx(20, 1))
    assert sum(p.numel() for p in s.adapters[1].reweight.parameters()) == reweight


def _cct6() -> CCT:
    return CCT((3, 32, 32), num_layers=6, num_heads=4, mlp_ratio=2.0, embedding_dim=256)


# --- training leaves earlier tasks untouched ----------------------------------------------------------
def _train(s: ConTraCon, task: int, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
    s.train()
    opt = torch.optim.AdamW(s.optimizer_param_groups(1e-2), lr=1e-2, weight_decay=0.05)
    ctx = _ctx(0, task)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        s.training_loss(x, y, ctx).backward()
        opt.step()


def test_training_task1_leaves_task0_bit_identical():
    torch.manual_seed(0)
    s = ConTraCon(ContraconConfig(kernel_size=3), _cct(), 4, (3, 16, 16))
    x, probe = torch.randn(8, 3, 16, 16), torch.randn(5, 3, 16, 16)
    s.on_session_start(0, None, _ctx(2, 0))
    _train(s, 0, x, torch.randint(0, 2, (8,)))
    before = {k: v.clone() for k, v in s.state_dict().items()}
    s.eval()
    with torch.no_grad():
        out0 = s.task_logits(probe, 0)
    s.on_session_start(1, None, _ctx(4, 1))
    init1 = {k: v.clone() for k, v in s.adapters[1].state_dict().items()}
    _train(s, 1, x, torch.randint(2, 4, (8,)))
    after = s.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # backbone and task 0's adapter
    now1 = s.adapters[1].state_dict()
    assert all(not torch.equal(now1[k], init1[k]) for k in init1 if "reweight" in k or "head" in k)
    s.eval()
    with torch.no_grad():
        assert torch.equal(s.task_logits(probe, 0), out0)


# --- task identification -----------------------------------------------------------------------------
def test_entropy_picks_the_task_whose_16_view_mean_is_most_certain(monkeypatch):
    """Stubbed logits per (task, clean/augmented view): image 0 has a confident clean view in task 0
    but task 1 is confident on the augmented views; the 16-view mean (6 clean + 10 augmented)
    must pick task 1 for image 0 and task 0 for image 1; clean-only entropy would pick task 0 twice,
    an unweighted mean of 1 clean + 10 augmented views task 1 twice."""
    s = _strategy(k=3).eval()
    clean = {0: torch.tensor([[6.0, 0.0], [8.0, 0.0]]), 1: torch.tensor([[0.0, 1.0], [0.0, 0.0]])}
    aug = {0: torch.tensor([[0.0, 0.0], [0.0, 0.0]]), 1: torch.tensor([[0.0, 8.0], [0.0, 1.5]])}

    def fake(x, t, embedded=False):
        b = 2
        return torch.cat([clean[t], aug[t].repeat(x.shape[0] // b - 1, 1)])

    monkeypatch.setattr(s, "task_logits", fake)
    tid, _ = s.identify_tasks(torch.zeros(2, 3, 16, 16), _ctx(4, 1))
    # independent reference: 16 explicit views, mean logits, softmax, entropy with eps 1e-4
    ent = np.zeros((2, 2))
    for t in range(2):
        views = np.stack([clean[t].numpy()] * 6 + [aug[t].numpy()] * 10)
        m = views.mean(0)
        p = np.exp(m) / np.exp(m).sum(1, keepdims=True)
        ent[t] = -(p * np.log(p + 1e-4)).sum(1)
    assert ent.argmin(0).tolist() == [1, 0]
    assert tid.tolist() == [1, 0]
    full = s.predict(torch.zeros(2, 3, 16, 16), _ctx(4, 1))
    assert full[0, 2:].tolist() == clean[1][0].tolist() and torch.isinf(full[0, :2]).all()
    assert full[1, :2].tolist() == clean[0][1].tolist() and torch.isinf(full[1, 2:]).all()


def test_views_equal_pil_autoaugment_operations():
    from PIL import Image, ImageEnhance, ImageOps

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(a)

    def shift(fx: float, fy: float) -> Image.Image:
        return img.transform(img.size, Image.AFFINE, (1, 0, fx * 32, 0, 1, fy * 32), fillcolor=(128, 128, 128))

    ref = [ImageEnhance.Contrast(img).enhance(1.6), shift(0.45, 0), shift(0, 0.45),
           ImageEnhance.Sharpness(img).enhance(1.3), ImageOps.equalize(img), ImageOps.invert(img),
           ImageOps.posterize(img, 5), shift(0.15, 0), ImageEnhance.Brightness(img).enhance(1.7),
           ImageEnhance.Brightness(img).enhance(1.9)]
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    x = (torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255 - mean) / std
    views = task_id_views(x, mean, std)
    assert views.shape == (10, 3, 32, 32) and len(VIEW_OPS) == 10
    for i, r in enumerate(ref):
        got = ((views[i] * std[0] + mean[0]) * 255).round().permute(1, 2, 0).numpy()
        assert np.abs(got - np.asarray(r, dtype=np.float64)).max() <= 1, VIEW_OPS[i][0]


# --- state, bad input --------------------------------------------------------------------------------
def test_save_load_keeps_every_task_and_kernel_size_is_checked():
    torch.manual_seed(0)
    s = _strategy(classes=(2, 3, 2)).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(5)
    fresh = ConTraCon(ContraconConfig(kernel_size=3), _cct(), 7, (3, 16, 16))
    fresh.load_state_dict(s.state_dict())
    fresh.eval()
    with torch.no_grad():
        for t in range(3):
            assert torch.equal(fresh.task_logits(x, t), s.task_logits(x, t))
    assert [a.head.out_features for a in fresh.adapters] == [2, 3, 2]
    with pytest.raises(UserError, match="kernel_size 3; this config has .* and 5"):
        ConTraCon(ContraconConfig(kernel_size=5), _cct(), 7, (3, 16, 16)).load_state_dict(s.state_dict())
    four = ConTraCon(ContraconConfig(kernel_size=3), _cct(heads=4), 7, (3, 16, 16))  # same weight shapes
    with pytest.raises(UserError, match=r"\[2, 2\] attention heads .* this config has \[4, 4\]"):
        four.load_state_dict(s.state_dict())
    old = {k: v for k, v in s.state_dict().items() if k != "layout"}  # a checkpoint from before the layout
    fresh.load_state_dict(old)


def test_bad_kernel_sizes_are_refused():
    with pytest.raises(ValidationError, match="odd"):
        ContraconConfig(kernel_size=4)
    with pytest.raises(UserError, match="larger than a head's weight slice"):
        ConTraCon(ContraconConfig(kernel_size=17), _cct(), 4, (3, 16, 16))  # d_h = 16


def test_online_regime_is_refused():
    s = ConTraCon(ContraconConfig(kernel_size=3), _cct(), 4, (3, 16, 16))
    with pytest.raises(UserError, match="regime: sessions"):
        s.training_loss(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), _ctx(2, 0))


# --- scenario and metrics ---------------------------------------------------------------------------
def test_task_incremental_scenario_refuses_uneven_tasks_and_marks_the_plan():
    from clplat.scenarios.class_incremental import TaskIncrementalConfig, build_task_incremental

    data = SimpleNamespace(num_classes=10, train_targets=np.repeat(np.arange(10), 3))
    plan = build_task_incremental(TaskIncrementalConfig(kind="task_incremental", n_tasks=5,
                                                        class_order="contiguous"), data, 0, 1)
    assert plan.kind == "task_incremental" and plan.disjoint_classes[1] == [2, 3]
    with pytest.raises(UserError, match="does not divide"):
        build_task_incremental(TaskIncrementalConfig(kind="task_incremental", n_tasks=3), data, 0, 1)


def test_task_metrics_by_hand():
    # 2 tasks: classes {0,1} and {2,3}, 10 test samples per class
    recs = [{"correct": [9, 8, 0, 0], "total": [10, 10, 0, 0]},
            {"correct": [5, 5, 2, 4], "total": [10, 10, 10, 10]}]
    extra = [{"til_correct": [9, 8, 0, 0], "task_correct": [10, 10, 0, 0]},
             {"til_correct": [9, 8, 7, 9], "task_correct": [6, 6, 3, 5]}]
    m = task_metrics(recs, extra, [[0, 1], [2, 3]])
    assert m["til_matrix"] == [[85.0], [85.0, 80.0]]
    assert m["cil_matrix"] == [[85.0], [50.0, 30.0]]
    assert m["til_acc"] == 82.5 and m["cil_acc"] == 40.0 and m["task_id_acc"] == 50.0


# --- end to end --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_digits_run_beats_chance_and_reports_til_cil(tmp_path):
    """The shipped digits config with 5 epochs per later task (zero kernel init): 5 binary tasks,
    TIL chance is 50 %, CIL chance 10 %."""
    from clplat.config import load_config
    from clplat.engine.sessions import run_sessions

    cfg = load_config("experiments/contracon_digits.yaml", [
        "sessions.incremental.epochs=5", "contracon.kernel_init=zero", "logging.progress=false"])
    r = run_sessions(cfg, tmp_path / "run", resume=False)
    assert r["til_matrix"][0] == [r["session_acc"][0]]  # one task: TIL == CIL
    assert r["til_matrix"][-1][0] == r["til_matrix"][0][0]  # task 0 never changes
    assert r["til_acc"] > 65 and r["cil_acc"] > 15
    assert r["params_per_task"][1:] == [r["params_per_task"][1]] * 4
    assert r["params_total"] == sum(r["params_per_task"])
    assert len(r["cil_matrix"]) == 5 and len(r["cil_matrix"][-1]) == 5


def test_probe_baseline_trains_only_a_head_on_the_frozen_task0_network():
    torch.manual_seed(0)
    s = _strategy(adapt="probe").eval()
    assert s.adapters[1].reweight is None
    assert [n for n, p in s.named_parameters() if p.requires_grad] == ["adapters.1.head.weight", "adapters.1.head.bias"]
    s.adapters[1].head.load_state_dict(s.adapters[0].head.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(s.task_logits(x, 1), s.task_logits(x, 0))
    assert s.task_parameter_counts()[1] == 33 * 2


@pytest.mark.slow
def test_stop_mid_task_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """A run stopped inside task 2 (adapters 0-2 exist, task 2's optimizer is mid-way) and resumed
    gives the uninterrupted run's TIL/CIL matrices and bit-identical parameters of every task."""
    from clplat.config import build_config
    from clplat.engine.sessions import SessionExperiment, run_sessions

    phase = {"epochs": 2, "batch_size": 64, "optim": {"name": "adamw", "lr": 0.005}, "eval_batch": 400}
    cfg = build_config({
        "name": "cc", "seed": 3, "threads": 1, "strategy": "contracon", "regime": "sessions",
        "data": {"dataset": "digits", "image_size": 16},
        "scenario": {"kind": "task_incremental", "n_tasks": 5, "class_order": "contiguous"},
        "backbone": {"name": "cct", "kwargs": {"num_layers": 1, "num_heads": 2, "embedding_dim": 16}},
        "sessions": {"base": phase, "incremental": phase}, "contracon": {"kernel_size": 3},
        "logging": {"wandb": "disabled", "progress": False}})
    ref = run_sessions(cfg, tmp_path / "ref", resume=False)
    progress = SessionExperiment.progress

    def stop_in_task2(self, n=0):
        progress(self, n)
        if self.cursor.session == 2 and self.cursor.epoch == 1:
            self.stop_signal = 15

    monkeypatch.setattr(SessionExperiment, "progress", stop_in_task2)
    assert run_sessions(cfg, tmp_path / "cut", resume=False)["interrupted"]
    monkeypatch.setattr(SessionExperiment, "progress", progress)
    res = run_sessions(cfg, tmp_path / "cut", resume=True)
    assert res["process"]["start_session"] == 2 and res["process"]["start_epoch"] == 1
    for key in ("til_matrix", "cil_matrix", "task_id_matrix", "params_per_task"):
        assert res[key] == ref[key], key
    a = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["strategy"]
    b = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["strategy"]
    assert a.keys() == b.keys() and any(k.startswith("adapters.4.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_kernel_init_starts_every_task_at_gated_task0_weights():
    torch.manual_seed(0)
    s = _strategy(kernel_init="zero")
    gate = torch.sigmoid(torch.tensor(1.0))
    for proj in s.projections:
        w0 = s.backbone.get_parameter(proj.name)
        assert torch.equal(s.overrides(1)[proj.name], gate * w0)
    assert s.task_parameter_counts()[1] == _strategy().task_parameter_counts()[1]


def test_evaluate_tasks_scores_til_cil_and_task_id_separately():
    """A stub strategy: CIL always says class 0; with the task given it says the true class, except
    for class 3 (says 2), and always puts a larger logit on a class of the other task, which TIL
    must not read. Expected per class (0, 1, 2, 3): CIL right 1/0/0/0, task-id 1/1/0/0, TIL 1/1/1/0."""
    from clplat.engine.task_eval import evaluate_tasks
    from clplat.strategies.base import Strategy, StreamContext

    class Stub(Strategy):
        def predict(self, x, ctx):
            return F.one_hot(torch.zeros(len(x), dtype=torch.long), 4).float()

        def predict_task(self, x, task, ctx):
            y = x[:, 0].long()
            out = F.one_hot(torch.where(y == 3, 2, y), 4).float()
            out[:, 3 if task == 0 else 0] += 5.0  # a class outside the task
            return out

    ys = [0, 1, 2, 3, 3]
    data = [(torch.tensor([float(y)]), y) for y in ys]
    ctx = StreamContext(n_exposed=4, exposed_classes=[0, 1, 2, 3], label_index=torch.arange(4))
    rec, extra = evaluate_tasks(Stub(ContraconConfig(), torch.nn.Identity(), 4, (1,)), data, np.array(ys), ctx,
                                [[0, 1], [2, 3]], num_classes=4, batch_size=2, device=torch.device("cpu"),
                                samples_seen=0, session=1)
    assert rec.total == [1, 1, 1, 2] and rec.correct == [1, 0, 0, 0]
    assert extra == {"til_correct": [1, 1, 1, 0], "task_correct": [1, 1, 0, 0]}


def test_shared_tokens_give_the_task_ids_and_logits_of_16_full_forwards(monkeypatch):
    """identify_tasks embeds the 11 images once and runs only the encoder per task; the reference
    runs each of the 16 views (6 clean + 10 augmented) through the whole network per task."""
    import clplat.strategies.contracon as cc

    torch.manual_seed(0)
    s = _strategy(classes=(2, 3, 2)).eval()
    with torch.no_grad():
        for a in s.adapters:
            a.head.weight.normal_(0.0, 1.0)
            for n in a.norms:
                n.weight.normal_(1.0, 0.3)
    seen: dict[int, Tensor] = {}
    real = cc.entropy_task_id
    monkeypatch.setattr(cc, "entropy_task_id", lambda f, n, b, eps: real(
        lambda t: seen.setdefault(t, f(t)), n, b, eps))
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        tid, clean = s.identify_tasks(x, _ctx(7, 2))
        views = [x] * 6 + list(task_id_views(x).chunk(10))
        ent = []
        for t in range(3):
            full = [s.task_logits(v, t) for v in views]
            torch.testing.assert_close(seen[t], torch.cat(full[5:]), rtol=1e-5, atol=1e-5)  # clean + 10 views
            torch.testing.assert_close(clean[t], full[0], rtol=1e-5, atol=1e-5)
            p = torch.softmax(torch.stack(full).mean(0), 1)
            ent.append(-(p * torch.log(p + 1e-4)).sum(1))
    assert torch.equal(tid, torch.stack(ent).argmin(0))


def test_plots_of_a_task_incremental_run(tmp_path):
    from clplat.engine.plots import plot_task_results

    res = {"til_matrix": [[90.0], [88.0, 70.0]], "cil_matrix": [[90.0], [60.0, 20.0]], "til_acc": 79.0,
           "cil_acc": 40.0, "params_per_task": [1000, 50]}
    paths = plot_task_results(tmp_path, res, "t")
    assert [p.name for p in paths] == ["til_matrix.png", "cil_matrix.png", "params_per_task.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert len(plot_task_results(tmp_path, {**res, "params_per_task": None}, "t")) == 2


# --- bad input through the CLI: one line, exit code 2 ---------------------------------------------
def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), [
    ("contracon.kernel_size=4", "kernel_size must be odd"),
    ("contracon.kernel_size=33", "contracon.kernel_size=33 is larger than a head's weight slice (32 x 64)"),
    ("scenario.n_tasks=3", "does not divide"),
])
def test_bad_contracon_input_exits_2_with_one_line(tmp_path, override, message):
    from tests.conftest import REPO, run_cli

    res = run_cli(["clplat.run", str(REPO / "experiments/contracon_digits.yaml"), override,
                   f"logging.runs_dir={tmp_path}", "logging.progress=false"])
    assert message in _one_error_line(res)
    assert not any(tmp_path.rglob("results.json"))


@pytest.mark.slow
def test_resume_with_other_attention_heads_exits_2_with_one_line(tmp_path):
    """A run's config.yaml edited to 4 heads (same weight shapes as 2): the resume refuses it."""
    import yaml

    from clplat.config import build_config
    from clplat.engine.rundir import write_config
    from clplat.engine.sessions import SessionExperiment
    from tests.conftest import run_cli

    phase = {"epochs": 1, "batch_size": 64, "optim": {"name": "adamw", "lr": 0.005}}
    raw = {"name": "cc", "seed": 1, "threads": 1, "strategy": "contracon", "regime": "sessions",
           "data": {"dataset": "digits", "image_size": 16},
           "scenario": {"kind": "task_incremental", "n_tasks": 5, "class_order": "contiguous"},
           "backbone": {"name": "cct", "kwargs": {"num_layers": 1, "num_heads": 2, "embedding_dim": 16}},
           "sessions": {"base": phase, "incremental": phase}, "contracon": {"kernel_size": 3},
           "logging": {"wandb": "disabled", "progress": False}}
    cfg = build_config(raw)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(run_dir, cfg.to_dict())
    SessionExperiment(cfg, run_dir).save_checkpoint()
    edited = yaml.safe_load((run_dir / "config.yaml").read_text())
    edited["backbone"]["kwargs"]["num_heads"] = 4
    (run_dir / "config.yaml").write_text(yaml.safe_dump(edited))
    line = _one_error_line(run_cli(["clplat.run", "--resume", str(run_dir)]))
    assert "[1] attention heads" not in line and "[2] attention heads per projection" in line
    assert "this config has [4]" in line and not (run_dir / "results.json").exists()
