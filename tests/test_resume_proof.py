"""Resume proves it resumed: a killed run, resumed twice, starts each process at the checkpoint's
cursor, and the optimizer updates of its processes add up to an uninterrupted run's.

Runs are deterministic, so equal final metrics alone would also pass if ``--resume`` silently
restarted from the first sample. Here every process reports where it started (a stderr line and
``results.json['process']``) and counts its own optimizer steps with a hook on the optimizer.
The second kill waits for a checkpoint newer than the first (polling its cursor), never a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

ER = REPO / "experiments" / "si_blurry_er.yaml"


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "clplat.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cursor(ckpt: Path) -> dict | None:
    try:
        return torch.load(ckpt, weights_only=True)["cursor"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def _kill_when(p: subprocess.Popen, ckpt: Path, newer_than: int, timeout: float = 240) -> dict:
    """SIGKILL ``p`` as soon as the checkpoint's cursor passes ``newer_than`` samples; the cursor."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        cur = _cursor(ckpt) if ckpt.exists() else None
        if cur is not None and cur["samples_seen"] > newer_than:
            assert p.poll() is None and not cur["finished"], "the run ended before it could be killed"
            p.send_signal(signal.SIGKILL)
            _, err = p.communicate()
            # the process may have written one more checkpoint between the read and the kill: the
            # resume starts from what is on disk now
            cur = _cursor(ckpt)
            assert cur is not None and not cur["finished"], "the run finished before the kill landed"
            return {**cur, "stderr": err}
        assert p.poll() is None, f"the run ended before a newer checkpoint appeared: {p.communicate()[1]}"
        time.sleep(0.01)
    raise AssertionError("no newer checkpoint in time")


@pytest.mark.slow
def test_each_resumed_process_starts_at_the_checkpoint_cursor(tmp_path: Path, small_overrides: list[str]) -> None:
    base = [str(ER), *small_overrides, "checkpoint_every=64", "online.online_iter=3"]  # MLP: seconds
    ref = _cli([*base, "name=ref"])
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    ref_res = json.loads((tmp_path / "runs" / "ref" / "results.json").read_text())
    assert ref_res["process"] == {"resumed": False, "start_samples": 0, "start_batches": 0, "start_updates": 0,
                                  "updates": ref_res["process"]["updates"]}
    total_updates = ref_res["process"]["updates"]
    assert total_updates > 0

    run_dir = tmp_path / "runs" / "killed"
    ckpt = run_dir / "checkpoints" / "last.pt"
    first = _kill_when(_cli([*base, "name=killed"]), ckpt, newer_than=0)
    assert 0 < first["samples_seen"] < ref_res["total_samples"]

    second = _kill_when(_cli(["--resume", str(run_dir)]), ckpt, newer_than=first["samples_seen"])
    assert f"at stream sample {first['samples_seen']} " in second["stderr"]  # started at the cursor
    assert first["samples_seen"] < second["samples_seen"] < ref_res["total_samples"]

    last = _cli(["--resume", str(run_dir)])
    _, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    proc = res["process"]
    assert proc["resumed"] and proc["start_samples"] == second["samples_seen"]
    assert proc["start_batches"] == second["batches_done"] and proc["start_updates"] == second["updates"]
    assert proc["start_updates"] + proc["updates"] == total_updates  # no update done twice or skipped
    assert res["metrics"] == ref_res["metrics"] and res["evals"] == ref_res["evals"]
