"""In CI a skipped kernel / compiled-step / optional-import suite is a failure, not a quiet "s".

Each test runs pytest in a subprocess on a real suite with one dependency hidden: triton (a stub
package that raises ImportError, first on PYTHONPATH) or the C++ compiler (an empty PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _pytest(args: list[str], ci: bool, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(extra_env)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def no_triton(tmp_path: Path) -> dict[str, str]:
    stub = tmp_path / "hide" / "triton"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('triton hidden by tests/test_ci_skips.py')\n")
    return {"PYTHONPATH": os.pathsep.join([str(stub.parent), str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_missing_triton_skips_locally_but_fails_in_ci(no_triton: dict[str, str]) -> None:
    suite = "tests/kernels/test_conv_epilogue.py"
    local = _pytest([suite], ci=False, extra_env=no_triton)
    assert local.returncode in (0, 5) and "1 skipped" in local.stdout, local.stdout + local.stderr  # 5: none ran
    ci = _pytest([suite], ci=True, extra_env=no_triton)
    assert ci.returncode not in (0, 5), ci.stdout
    assert "skipped in CI" in ci.stdout and "triton" in ci.stdout


def test_missing_compiler_fails_the_compiled_step_suite_in_ci() -> None:
    env = {"PATH": str(Path(sys.executable).parent) + os.pathsep + "/nonexistent"}
    if any((Path(d) / c).exists() for d in env["PATH"].split(os.pathsep) for c in ("g++", "c++")):
        pytest.skip("a C++ compiler sits next to the Python executable")
    ci = _pytest(["tests/streaming/test_compiled.py", "-x"], ci=True, extra_env=env)
    assert ci.returncode == 1 and "skipped in CI" in ci.stdout and "C++ compiler" in ci.stdout, ci.stdout
