"""Plots of self-expanding runs: parameters over training (growth events marked) and accuracy vs
parameters (one run's sessions; or several runs, e.g. SENN against its fixed-size baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clplat.engine.plots import _pyplot, save_legended


def params_at_session_ends(results: dict[str, Any]) -> list[int]:
    """Backbone parameters when each session ended (the last history row or growth event in it)."""
    marks = sorted([(h["step"], h["session"], h["params"]) for h in results.get("params_history", [])]
                   + [(e["step"], e["session"], e["params"]) for e in results.get("growth", [])])
    out, current = [], marks[0][2] if marks else 0
    for k in range(len(results.get("session_acc", []))):
        for _, s, p in marks:
            if s <= k:
                current = p
        out.append(current)
    return out


def plot_growth(path: Path, results: dict[str, Any], title: str) -> None:
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    hist = results.get("params_history", [])
    if hist:
        pts = sorted([(h["step"], h["params"]) for h in hist] + [(e["step"], e["params"]) for e in results["growth"]])
        ax.step(*zip(*pts), where="post", label="backbone parameters")
    for kind, marker in (("width", "^"), ("depth", "s")):
        ev = [(e["step"], e["params"]) for e in results.get("growth", []) if e["kind"] == kind]
        if ev:
            ax.plot(*zip(*ev), ls="none", marker=marker, label=f"{kind} growth")
    ax.set_xlabel("optimizer updates")
    ax.set_ylabel("parameters")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    acc = results.get("session_acc", [])
    if acc:
        bx.plot(params_at_session_ends(results), acc, marker="o")
        for k, (p, a) in enumerate(zip(params_at_session_ends(results), acc, strict=True)):
            bx.annotate(str(k), (p, a), fontsize=7)
    bx.set_xlabel("parameters at the end of the session")
    bx.set_ylabel("accuracy on seen classes (%)")
    bx.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acc_vs_params(path: Path, points: dict[str, list[tuple[int, float]]], title: str) -> None:
    """``points[method]`` = (parameters, accuracy %) of each seed's run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, pts in points.items():
        if pts:
            ax.plot(*zip(*pts), ls="none", marker="o", alpha=0.8, label=method)
    ax.set_xlabel("backbone parameters (final)")
    ax.set_ylabel("final accuracy (%)")
    save_legended(fig, ax, path, title)
