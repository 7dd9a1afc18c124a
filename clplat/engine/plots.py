"""PNG plots of a run: the anytime-accuracy curve with task boundaries and the task accuracy matrix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(path: Path, records: list[dict[str, Any]], task_ends: list[int], title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    any_pts = [(r["samples_seen"], 100 * sum(r["correct"]) / max(1, sum(r["total"])))
               for r in records if r["kind"] == "anytime"]
    end_pts = [(r["samples_seen"], 100 * sum(r["correct"]) / max(1, sum(r["total"])))
               for r in records if r["kind"] == "task_end"]
    if any_pts:
        ax.plot(*zip(*any_pts), marker="o", ms=3, label="anytime accuracy")
    if end_pts:
        ax.plot(*zip(*end_pts), ls="none", marker="s", ms=6, label="end of task")
    for i, end in enumerate(task_ends[:-1]):
        ax.axvline(end, color="grey", ls="--", lw=0.8, label="task boundary" if i == 0 else None)
    ax.set_xlabel("stream samples seen")
    ax.set_ylabel("accuracy on exposed classes (%)")
    ax.set_ylim(0, 100)
    save_legended(fig, ax, path, title)


def save_legended(fig: Any, ax: Any, path: Path, title: str) -> None:
    """Title, grid, legend in the lower right; written to ``path`` and closed."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_matrix(path: Path, matrix: list[list[float | None]], title: str) -> None:
    plt = _pyplot()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.8 * n))
    vals = [[math.nan if v is None else 100 * v for v in row] for row in matrix]
    im = ax.imshow(vals, vmin=0, vmax=100, cmap="viridis")
    for i in range(n):
        for j in range(len(vals[i])):
            if not math.isnan(vals[i][j]):
                ax.text(j, i, f"{vals[i][j]:.0f}", ha="center", va="center",
                        color="white" if vals[i][j] < 60 else "black", fontsize=8)
    ax.set_xlabel("classes first seen in task j")
    ax.set_ylabel("after task i")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sessions(path: Path, results: dict[str, Any], title: str) -> None:
    """Accuracy after each session (all seen classes, base classes, novel classes)."""
    plt = _pyplot()
    n = len(results["session_acc"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * n + 2), 4))
    xs = list(range(n))
    ax.plot(xs, results["session_acc"], marker="o", label="all seen classes")
    for key, label, style in (("base_acc", "base classes", "--"), ("novel_acc", "novel classes", ":")):
        pts = [(k, v) for k, v in zip(xs, results[key]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="s", ms=4, ls=style, label=label)
    ax.set_xlabel("session")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(xs)
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: A_avg {results['a_avg']:.1f}, last {results['a_last']:.1f}, PD {results['pd']:.1f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_task_results(run_dir: Path, results: dict[str, Any], title: str) -> list[Path]:
    """A task-incremental run: ``til_matrix.png`` / ``cil_matrix.png`` (accuracy on task j's test
    samples after task i, task given / task inferred) and ``params_per_task.png`` (parameters each
    task adds and their running total), when the strategy counts them."""
    paths = []
    for key, what in (("til_matrix", "TIL (task given)"), ("cil_matrix", "CIL (task inferred)")):
        path = run_dir / f"{key}.png"
        n = len(results[key])  # row i has tasks 0..i: pad the lower-triangular matrix with None
        frac = [[None if v is None else v / 100 for v in row] + [None] * (n - len(row)) for row in results[key]]
        plot_matrix(path, frac, f"{title}: {what}, final {results[key.split('_')[0] + '_acc']:.1f}")
        paths.append(path)
    per = results.get("params_per_task")
    if per:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(per) + 2), 4))
        xs = list(range(len(per)))
        ax.bar(xs, per, color="tab:blue", alpha=0.6, label="added by the task")
        ax.plot(xs, [sum(per[: i + 1]) for i in xs], marker="o", color="tab:red", label="total after the task")
        ax.set_yscale("log")
        ax.set_xlabel("task")
        ax.set_ylabel("parameters")
        ax.set_xticks(xs)
        ax.set_title(f"{title}: parameters, total {sum(per):,}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="center right")
        fig.tight_layout()
        path = run_dir / "params_per_task.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
