"""The one-network-per-task baseline of ConTraCon's comparison: separate networks from one init,
training a task touches nothing of another, TIL uses the true task's network, CIL the entropy rule
over the networks, parameters per task, save/load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clplat.backbones.cct import CCT
from clplat.errors import UserError
from clplat.strategies.independent_per_task import IndependentPerTask, IndependentPerTaskConfig


def _cct() -> CCT:
    return CCT((3, 16, 16), num_layers=1, num_heads=2, mlp_ratio=2.0, embedding_dim=16, n_conv_layers=2)


def _ctx(n_exposed: int, session: int) -> SimpleNamespace:
    return SimpleNamespace(n_exposed=n_exposed, session=session, augment=None)


def _strategy(classes=(2, 3)) -> IndependentPerTask:
    s = IndependentPerTask(IndependentPerTaskConfig(), _cct(), sum(classes), (3, 16, 16))
    for t in range(len(classes)):
        s.on_session_start(t, None, _ctx(sum(classes[: t + 1]), t))
    return s


def test_each_task_trains_its_own_copy_and_leaves_the_others_bit_identical():
    torch.manual_seed(0)
    s = IndependentPerTask(IndependentPerTaskConfig(), _cct(), 5, (3, 16, 16))
    s.on_session_start(0, None, _ctx(2, 0))
    init = {k: v.clone() for k, v in s.nets[0].state_dict().items()}
    x = torch.randn(8, 3, 16, 16)

    def train(task: int, y: torch.Tensor) -> None:
        opt = torch.optim.AdamW(s.optimizer_param_groups(1e-2)[0]["params"], lr=1e-2)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            s.training_loss(x, y, _ctx(0, task)).backward()
            opt.step()

    train(0, torch.randint(0, 2, (8,)))
    before = {k: v.clone() for k, v in s.state_dict().items()}
    s.on_session_start(1, None, _ctx(5, 1))
    assert all(torch.equal(s.nets[1].state_dict()[k], v) for k, v in init.items())  # task 1 starts from the init
    assert [n for n, p in s.named_parameters() if p.requires_grad and not n.startswith(("nets.1.", "heads.1."))] == []
    train(1, torch.randint(2, 5, (8,)))
    after = s.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not torch.equal(after["nets.1.blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])
    per = s.task_parameter_counts()
    net = sum(p.numel() for p in s.nets[0].parameters())
    assert per == [net + 17 * 2, net + 17 * 3]


def test_til_uses_the_true_task_and_cil_the_lowest_entropy_task(monkeypatch):
    s = _strategy(classes=(2, 2)).eval()
    # task 0 confident on image 0, task 1 confident on image 1 (the same on every view)
    logits = {0: torch.tensor([[5.0, 0.0], [0.5, 0.0]]), 1: torch.tensor([[0.0, 0.2], [0.0, 6.0]])}
    monkeypatch.setattr(s, "task_logits", lambda x, t: logits[t].repeat(x.shape[0] // 2, 1))
    x = torch.zeros(2, 3, 16, 16)
    out = s.predict(x, _ctx(4, 1))
    assert out[0, :2].tolist() == [5.0, 0.0] and torch.isinf(out[0, 2:]).all()
    assert out[1, 2:].tolist() == [0.0, 6.0] and torch.isinf(out[1, :2]).all()
    til = s.predict_task(x, 1, _ctx(4, 1))
    assert til[:, 2:].tolist() == logits[1].tolist() and torch.isinf(til[:, :2]).all()
    assert s.predict(x, _ctx(4, 0))[1, :2].tolist() == [0.5, 0.0]  # after task 0 only task 0 exists


def test_save_load_rebuilds_every_task_network():
    torch.manual_seed(0)
    s = _strategy(classes=(2, 3, 2)).eval()
    with torch.no_grad():
        for n in s.nets:
            n.blocks[0].linear1.weight.normal_()
    torch.manual_seed(9)
    fresh = IndependentPerTask(IndependentPerTaskConfig(), _cct(), 7, (3, 16, 16))
    fresh.load_state_dict(s.state_dict())
    fresh.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        for t in range(3):
            assert torch.equal(fresh.task_logits(x, t), s.task_logits(x, t))
    assert [h.out_features for h in fresh.heads] == [2, 3, 2]
    bad = {k: v for k, v in s.state_dict().items() if not k.startswith("heads.1.")}
    with pytest.raises(UserError, match="not 0..1"):
        IndependentPerTask(IndependentPerTaskConfig(), _cct(), 7, (3, 16, 16)).load_state_dict(bad)


def test_online_regime_is_refused():
    s = IndependentPerTask(IndependentPerTaskConfig(), _cct(), 4, (3, 16, 16))
    with pytest.raises(UserError, match="regime: sessions"):
        s.training_loss(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), _ctx(2, 0))
