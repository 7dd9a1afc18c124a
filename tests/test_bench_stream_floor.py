"""benchmarks/stream_floor.py: the recorded ops of a steady step are all of its multiply-adds.

Two independent counts: torch's FLOP counter over the same steps (matmuls and convolutions), and
the per-frame multiply-adds of the offline network (``stream_nets.arithmetic``, which also counts
the depthwise convs the step runs as clplat's shifted taps). An op kind the recorder misses (an
``addmm`` it does not know, a conv seen as ``aten.conv2d`` in inference mode, the taps) turns
these red.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("stream_floor", REPO / "benchmarks" / "stream_floor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def floor():
    return _load()


@pytest.fixture(scope="module")
def stream(floor):
    torch.set_num_threads(1)
    return floor.build_clplat("x3d_s", floor.build_network("x3d_s"))


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_recorded_macs_match_flop_counter_and_offline_arithmetic(floor, stream, traced):
    warm = floor.WARMUP["x3d_s"]
    frames = torch.randn(1, 3, warm + 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    state = floor.warm_state(stream, frames, warm)
    with FlopCounterMode(display=False) as counter:
        calls, period = floor.record(stream, frames, warm, state, traced=traced)
    assert period == 1
    taps = sum(c["macs"] for c in calls if c["kind"] == "taps")
    gemm = sum(c["macs"] for c in calls if c["kind"] not in ("taps", "other"))
    # the counter sees the GEMMs / convs (the shifted taps are element-wise ops to it) ...
    assert gemm == counter.get_total_flops() // 2 > 0
    # ... and the offline network's per-frame arithmetic includes the depthwise convs
    assert taps > 0
    assert math.isclose(gemm + taps, floor.arithmetic("x3d_s", SIZE, 16)["step_macs"], rel_tol=1e-9)


def test_grouping_and_timing_cover_every_alternative(floor, stream):
    warm = floor.WARMUP["x3d_s"]
    frames = torch.randn(1, 3, warm + 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    calls, period = floor.record(stream, frames, warm, floor.warm_state(stream, frames, warm), traced=False)
    groups = floor.group(calls)
    assert sum(g["count"] for g in groups) == len(calls)
    heavy = [g for g in groups if g["kind"] != "other"]
    floor.time_groups(heavy, reps=2, budget_s=0.01, flush_mib=(1.0,))
    for g in heavy:  # every alternative ran (none failed), the best is the minimum, cold timed too
        assert not any(k.endswith("(failed)") for k in g["times"]), g["times"]
        assert g["best_s"] == min(g["times"].values()) > 0 and g["cold_s"][1.0] > 0
    s = floor.summarize(heavy, period)
    assert math.isclose(s["macs"], sum(c["macs"] for c in calls if c["kind"] != "other"), rel_tol=1e-12)
    assert s["ops_best_ms"] <= s["ops_recorded_ms"] and s["ops_cold1_ms"] > 0
    assert floor.sequence_ms(calls, reps=2) > 0
