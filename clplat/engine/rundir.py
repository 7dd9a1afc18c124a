"""The run directory ``runs/<name>/``: everything a run writes lives here, and nothing is ever
overwritten (a taken name gets a numeric suffix)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from clplat.io import atomic_write_text


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        cand = root / (name if i == 0 else f"{name}-{i}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run name under {root}")


@contextmanager
def dropped_if_empty_on_error(run_dir: Path) -> Iterator[Path]:
    """A run that fails before writing anything (bad data, bad scenario) leaves no empty directory;
    one that wrote a config or checkpoint keeps it, so it can be inspected or resumed."""
    try:
        yield run_dir
    except BaseException:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_config(run_dir: Path, cfg_dict: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2))


def write_curve_csv(run_dir: Path, records: list[dict[str, Any]]) -> None:
    path = run_dir / "curve.csv"
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["samples_seen", "task_id", "kind", "accuracy", "n_test"])
    for r in records:
        n = sum(r["total"])
        acc = sum(r["correct"]) / n if n else 0.0
        w.writerow([r["samples_seen"], r["task_id"], r["kind"], f"{acc:.6f}", n])
    atomic_write_text(path, buf.getvalue())
