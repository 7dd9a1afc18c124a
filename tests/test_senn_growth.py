"""Expandable CNN (issue 10): growth preserves the function, the description round-trips, and the
optimizer keeps old parameters' state bit for bit while new ones start fresh."""

from __future__ import annotations

import pytest
import torch

from clplat.backbones.expandable_cnn import ExpandableCNN, normalise_arch
from clplat.strategies.senn_growth import migrate_optimizer


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ARCH = {"in_channels": 3, "num_features": 8, "stages": [[4], [6, 5], [7]]}


def trained(seed: int = 0, activation: str = "relu") -> tuple[ExpandableCNN, torch.Tensor]:
    """A small net whose weights and BatchNorm statistics are far from their init."""
    torch.manual_seed(seed)
    m = ExpandableCNN({**ARCH, "activation": activation})
    x = torch.randn(16, 3, 12, 12)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    return m, x


GROWTHS = [
    [("w", 0, 0, 3)],                      # first block, consumer in the next stage (after a pool)
    [("w", 1, 0, 2)],                      # consumer in the same stage
    [("w", 2, 0, 5)],                      # last block: the projection is the consumer
    [("d", 1, 1)],                         # identity block at the end of a stage
    [("d", 0, 0), ("w", 0, 1, 2)],         # widen an inserted identity block
    [("w", 1, 1, 1), ("d", 1, 0), ("d", 2, 0), ("w", 1, 0, 3), ("w", 2, 1, 2)],
]


def apply(m: ExpandableCNN, ops) -> None:
    g = torch.Generator().manual_seed(3)
    for op in ops:
        if op[0] == "w":
            m.grow_width(op[1], op[2], op[3], generator=g)
        else:
            m.insert_identity(op[1], op[2])


@pytest.mark.parametrize("ops", GROWTHS, ids=lambda o: "+".join("".join(map(str, t)) for t in o))
def test_growth_preserves_eval_outputs(ops) -> None:
    m, x = trained()
    m.eval()
    before = m(x)
    n0 = m.num_params()
    apply(m, ops)
    assert m.num_params() > n0
    assert (m(x) - before).abs().max().item() <= 1e-6


def test_identity_block_is_exact_on_negative_inputs() -> None:
    """SiLU outputs go negative: an inserted block must be the identity there too (PReLU slope 1)."""
    m, x = trained(activation="silu")
    m.eval()
    before = m(x)
    apply(m, [("d", 0, 0), ("d", 1, 1), ("w", 1, 0, 2)])
    assert (m(x) - before).abs().max().item() <= 1e-6
    assert (m.stages[0][0](x) < 0).any()


def test_width_growth_preserves_train_mode_outputs() -> None:
    """Old channels keep their batch statistics; the new ones have zero fan-out."""
    m, x = trained()
    m.train()
    before = m(x)
    apply(m, [("w", 0, 0, 3), ("w", 1, 1, 2), ("d", 1, 0)])
    assert torch.allclose(m(x), before, atol=1e-6, rtol=0)


def test_growth_sets_bn_and_fan_out() -> None:
    m, _ = trained()
    bn_mean = m.stages[1][0].bn.running_mean.clone()
    m.grow_width(1, 0, 2)
    bn = m.stages[1][0].bn
    assert torch.equal(bn.running_mean[:6], bn_mean) and torch.equal(bn.running_mean[6:], torch.zeros(2))
    assert torch.equal(bn.running_var[6:], torch.ones(2)) and torch.equal(bn.weight[6:], torch.ones(2))
    assert torch.equal(bn.bias[6:], torch.zeros(2))
    assert m.stages[1][1].conv.weight[:, 6:].abs().sum() == 0 and m.stages[1][0].conv.weight[6:].abs().sum() > 0


def test_description_round_trips() -> None:
    m, x = trained()
    apply(m, GROWTHS[-1])
    m.eval()
    twin = ExpandableCNN(m.describe()).eval()
    twin.load_state_dict(m.state_dict())
    assert torch.equal(twin(x), m(x))
    assert normalise_arch(m.describe()) == m.describe()
    assert m.summary() == "4 | 9,id6,6 | 7,id9"
    with pytest.raises(ValueError, match="width"):
        normalise_arch({"in_channels": 3, "stages": [[0]]})


def test_optimizer_state_survives_growth() -> None:
    m, x = trained()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    opt.param_groups[0]["initial_lr"] = 1e-3
    opt.param_groups[0]["lr"] = 4e-4  # a schedule's current value
    for _ in range(3):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    untouched = m.stages[0][0].conv.weight
    widened = m.stages[1][0].conv.weight
    before = {k: v.clone() for k, v in opt.state[untouched].items()}
    wide_before = {k: v.clone() for k, v in opt.state[widened].items()}
    reps = m.grow_width(1, 0, 2)
    new_params = m.insert_identity(2, 0)
    migrate_optimizer(opt, m.parameters(), reps)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in m.parameters()]
    for k, v in before.items():
        assert torch.equal(opt.state[untouched][k], v)
    grown = opt.state[m.stages[1][0].conv.weight]
    assert torch.equal(grown["step"], wide_before["step"])
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(grown[k][:6], wide_before[k]) and grown[k][6:].abs().sum() == 0
    assert all(p not in opt.state for p in new_params)
    assert opt.param_groups[0]["lr"] == 4e-4 and opt.param_groups[0]["initial_lr"] == 1e-3
    opt.zero_grad()
    m(x).pow(2).mean().backward()
    opt.step()
    assert all(float(opt.state[p]["step"]) == 1.0 for p in new_params)
    # the migrated optimizer's checkpoint loads into one built afresh for the grown model (resume)
    fresh = torch.optim.Adam(m.parameters(), lr=1e-3)
    fresh.load_state_dict(opt.state_dict())
    assert torch.equal(fresh.state[untouched]["exp_avg"], opt.state[untouched]["exp_avg"])
