"""What a video-representation run leaves beside ``results.json``: the PSNR matrix, PSNR of every
video after each session, ``sessions.csv`` and one original | decoded image per video
(``side_by_side/<video>.png``, the middle frame, decoded from the final checkpoint)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from clplat.engine.plots import _pyplot
from clplat.io import atomic_path, atomic_write_text


def plot_psnr_matrix(path: Path, matrix: list[list[float | None]], names: list[str], title: str) -> None:
    plt = _pyplot()
    n = len(matrix)
    vals = np.array([[math.nan if v is None else v for v in row] for row in matrix])
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * n, 1.2 + 0.8 * n))
    im = ax.imshow(vals, cmap="viridis")
    for i in range(n):
        for j in range(n):
            if not math.isnan(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.1f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n))
    ax.set_xlabel("video j")
    ax.set_ylabel("after session i")
    ax.set_title(f"{title}: PSNR (dB)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_psnr_sessions(path: Path, matrix: list[list[float | None]], names: list[str], title: str) -> None:
    """One line per video: its PSNR after every session from its own on (flat = no forgetting)."""
    plt = _pyplot()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * n + 3), 4))
    for j in range(n):
        pts = [(i, matrix[i][j]) for i in range(n) if matrix[i][j] is not None]
        ax.plot(*zip(*pts), marker="o", label=names[j])
    ax.set_xlabel("after session")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xticks(range(n))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_side_by_side(path: Path, original: Tensor, decoded: Tensor) -> None:
    """``original | decoded`` of one frame ``(3, H, W)`` in [0, 1], as a PNG (nearest-upscaled to >= 256 px)."""
    import cv2

    pair = np.concatenate([original.clamp(0, 1).numpy(), decoded.clamp(0, 1).numpy()], axis=2)
    img = (pair.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    scale = max(1, 256 // img.shape[0])
    img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def write_sessions_csv(path: Path, results: dict[str, Any]) -> None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["session", "video", "psnr", "msssim"])
    for i, (prow, mrow) in enumerate(zip(results["psnr_matrix"], results["msssim_matrix"], strict=True)):
        for j, (p, m) in enumerate(zip(prow, mrow, strict=True)):
            if p is not None:
                w.writerow([i, results["videos"][j], f"{p:.4f}", f"{m:.5f}"])
    atomic_write_text(path, buf.getvalue())


def write_video_outputs(run_dir: Path, results: dict[str, Any], data: Any, final: list[Tensor],
                        title: str) -> dict[str, Path]:
    names = results["videos"]
    plots = {"psnr_matrix": run_dir / "psnr_matrix.png", "psnr_sessions": run_dir / "psnr_sessions.png"}
    plot_psnr_matrix(plots["psnr_matrix"], results["psnr_matrix"], names, title)
    plot_psnr_sessions(plots["psnr_sessions"], results["psnr_matrix"], names, title)
    write_sessions_csv(run_dir / "sessions.csv", results)
    for j, decoded in enumerate(final):
        mid = decoded.shape[0] // 2
        write_side_by_side(run_dir / "side_by_side" / f"{j:02d}_{names[j]}.png", data.video(j)[mid], decoded[mid])
    return plots


def print_video_summary(results: dict[str, Any]) -> None:
    """Per video: PSNR at the end of its session and after the last one, MS-SSIM, re-decode check."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{results['name']} — {results['strategy']} (seed {results['seed']})")
    for col in ("video", "frames", "PSNR own session", "PSNR final", "MS-SSIM final", "re-decode identical"):
        table.add_column(col, justify="right")
    for j, name in enumerate(results["videos"]):
        table.add_row(name, str(results["frames"][j]), f"{results['psnr_matrix'][j][j]:.2f}",
                      f"{results['psnr_final'][j]:.2f}", f"{results['msssim_final'][j]:.4f}",
                      "yes" if results["redecode_identical"][j] else "no")
    console = Console()
    console.print(table)
    m = results["metrics"]
    console.print(f"PSNR {m['psnr_avg']:.2f} dB   MS-SSIM {m['msssim_avg']:.4f}   BWT {results['bwt']:+.3f} dB   "
                  f"{results['model_bits']:,} bits   {results['bpp']:.4f} bpp")
    console.print(f"run directory: {results['run_dir']}   wall time: {results['wall_time_s']:.1f} s")
