"""Session metrics of a sessions run (few-shot class-incremental protocol), derived only from
the evaluation recorded after each session (per-class correct/total counts).

After session k the test set is every test sample of the classes seen in sessions 0..k.
``session_acc[k]`` is the sample accuracy on it; ``base_acc[k]`` / ``novel_acc[k]`` restrict it to
the test samples of the base classes (session 0's) / of the classes of sessions 1..k
(``None`` after session 0, or when those classes have no test sample); ``hm[k]`` is their harmonic
mean. ``a_avg`` is the mean of ``session_acc``, ``a_last`` its last value and ``pd`` (performance
drop) the first minus the last. All values are percentages.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clplat.io import atomic_write_text

KEYS = ("session_acc", "base_acc", "novel_acc", "hm")


def _acc(correct: Sequence[int], total: Sequence[int], classes: Sequence[int]) -> float | None:
    n = sum(total[c] for c in classes)
    return 100.0 * sum(correct[c] for c in classes) / n if n else None


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def session_metrics(records: Sequence[dict[str, Any]], session_classes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """``records[k]`` is the evaluation after session k (``correct``/``total`` per class id);
    ``session_classes[k]`` the classes session k introduced. Returns the results.json keys."""
    base = list(session_classes[0]) if session_classes else []
    out: dict[str, Any] = {k: [] for k in KEYS}
    seen: list[int] = []
    for k, rec in enumerate(records):
        seen += list(session_classes[k])
        novel = [c for c in seen if c not in set(base)]
        correct, total = rec["correct"], rec["total"]
        acc = _acc(correct, total, seen)
        b = _acc(correct, total, base)
        nv = _acc(correct, total, novel) if k > 0 else None
        out["session_acc"].append(0.0 if acc is None else acc)
        out["base_acc"].append(b)
        out["novel_acc"].append(nv)
        out["hm"].append(harmonic_mean(b, nv))
    accs = out["session_acc"]
    out["a_avg"] = sum(accs) / len(accs) if accs else None
    out["a_last"] = accs[-1] if accs else None
    out["pd"] = accs[0] - accs[-1] if accs else None
    return out


def write_session_csv(run_dir: Path, results: dict[str, Any]) -> None:
    """``sessions.csv``: one row per session (percentages; empty where not defined)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["session", "new_classes", "train_samples", *KEYS])
    for k in range(len(results["session_acc"])):
        vals = [results[key][k] for key in KEYS]
        w.writerow([k, len(results["session_classes"][k]), results["session_samples"][k],
                    *("" if v is None else f"{v:.4f}" for v in vals)])
    atomic_write_text(run_dir / "sessions.csv", buf.getvalue())
