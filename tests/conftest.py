"""Shared fixtures. Tests never touch the network: W&B is disabled and nothing is downloaded."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]

# --- no silent skips in CI ------------------------------------------------------------------------
# Locally a missing optional piece (triton, timm, peft, a C++ compiler) skips its suite. In CI
# (``CI`` set to true/1/yes, as GitHub Actions and .ci/run do) such a skip would hide that the
# kernels / timm models / compiled step were never tested, so it is turned into a failure: every
# skip inside a REQUIRED_IN_CI suite, and every ``importorskip`` ("could not import ...") anywhere.
REQUIRED_IN_CI = ("tests/kernels/", "tests/streaming/test_compiled.py", "tests/streaming/test_x3d_fused.py",
                  "tests/streaming/test_x3d_stem_fast.py")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _must_not_skip(nodeid: str, reason: str) -> bool:
    return nodeid.startswith(REQUIRED_IN_CI) or "could not import" in reason


def _skip_reason(longrepr: object) -> str:
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_skip(report: pytest.BaseReport, nodeid: str) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, which must run this suite: {reason} ({nodeid})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if in_ci() and rep.skipped and not hasattr(rep, "wasxfail") \
            and _must_not_skip(item.nodeid, _skip_reason(rep.longrepr)):
        _fail_skip(rep, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    rep = outcome.get_result()  # a module-level importorskip skips the whole file here
    if in_ci() and rep.skipped and _must_not_skip(collector.nodeid, _skip_reason(rep.longrepr)):
        _fail_skip(rep, collector.nodeid)


@pytest.fixture
def small_overrides(tmp_path: Path) -> list[str]:
    """A fast Si-Blurry digits run (MLP, 8x8): a few seconds on 2 cores."""
    return [
        "data.dataset=digits", "data.image_size=8", "backbone.name=mlp", "backbone.kwargs={hidden: [64]}",
        "online.stream_batch=16", "online.online_iter=2", "online.eval_period=200", "optim.lr=0.005",
        "logging.wandb=disabled", "logging.progress=false", f"logging.runs_dir={tmp_path / 'runs'}",
    ]


def checkpoint_cursor(path: Path) -> dict | None:
    """The cursor of the checkpoint at ``path``; None while it is not (fully) written yet."""
    import torch

    try:
        return torch.load(path, weights_only=True)["cursor"]
    except Exception:  # not written yet
        return None


def signal_when(p, run_dir: Path, ok, timeout: float, sig: int = signal.SIGKILL) -> dict | None:
    """Wait until the running CLI ``p`` checkpointed a cursor with ``ok(cursor)`` (it must still
    run then), send it ``sig``; after a SIGKILL also wait for it, check it left no results.json
    and return the cursor of the checkpoint it left."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        cur = checkpoint_cursor(ckpt)
        if cur is not None and ok(cur):
            break
        time.sleep(0.02)
    assert p.poll() is None, f"run finished before {signal.Signals(sig).name} could be sent"
    p.send_signal(sig)
    if sig != signal.SIGKILL:
        return None
    p.wait()
    assert not (run_dir / "results.json").exists()
    return checkpoint_cursor(ckpt)


def run_cli(args: list[str], cwd: Path = REPO, timeout: float = 300, env: dict | None = None):
    import subprocess

    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
