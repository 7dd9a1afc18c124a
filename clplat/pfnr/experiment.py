"""The sessions regime for video representations: train as ``SessionExperiment`` does (same
checkpoints, resume, signals), but evaluate by decoding videos instead of classifying.

After session i every video j <= i is decoded with its stored mask and head: row i of the PSNR and
MS-SSIM matrices ``R[i, j]``, plus the SHA-256 of video i's float decode (``decode_sha256[i]``).
The rows live in the checkpoint. At the end a FRESH model is built from ``config.yaml`` and the
final checkpoint (what ``python -m clplat.pfnr decode`` does) and decodes every video again: the
final quality, BWT = mean_j<T-1 (final_j - R[j, j]) and whether each re-decode is bit-identical
to the decode at the end of its own session are measured there, never copied (pitfall 5).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from clplat.config import Config, SessionPhaseConfig
from clplat.data.videos import VideoData
from clplat.engine.checkpoint import CHECKPOINT
from clplat.engine.sessions import SessionExperiment
from clplat.errors import UserError
from clplat.pfnr.quality import msssim_video, psnr_frames


def digest(video: Tensor) -> str:
    """SHA-256 of a decode's float32 bytes: equal digests = bit-identical decodes."""
    return hashlib.sha256(video.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def video_quality(decoded: Tensor, target: Tensor) -> tuple[float, float]:
    """(mean per-frame PSNR in dB, mean MS-SSIM) of a decoded video against its frames."""
    return float(psnr_frames(decoded.clamp(0, 1), target).mean()), msssim_video(decoded.clamp(0, 1), target)


class VideoSessionExperiment(SessionExperiment):
    """One session per video (``dataset: videos``, ``scenario.kind: video_sessions``)."""

    def __init__(self, cfg: Config, run_dir: Path | None = None) -> None:
        super().__init__(cfg, run_dir)
        if not isinstance(self.data, VideoData) or self.plan.kind != "video_sessions":
            raise UserError(f"strategy {cfg.strategy} needs data.dataset: videos and scenario.kind: video_sessions")
        t_max = self.strategy.cfg.t_max
        if self.n_sessions > t_max:
            raise UserError(f"{self.n_sessions} videos (sessions) but {cfg.strategy}.t_max is {t_max}: "
                            f"raise {cfg.strategy}.t_max (the session encoding is built for t_max sessions)")
        self.video_rows: list[dict[str, Any]] = []
        self.final_decodes: list[Tensor] = []

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "video_rows": list(self.video_rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.video_rows = list(state.get("video_rows", []))

    def evaluate_row(self, session: int) -> dict[str, Any]:
        psnr, msssim, sha = [], [], ""
        for j in range(session + 1):
            out = self.strategy.decode(j)
            p, m = video_quality(out, self.data.video(j))
            psnr.append(p)
            msssim.append(m)
            if j == session:
                sha = digest(out)
        return {"psnr": psnr, "msssim": msssim, "sha256": sha}

    def _end(self, session: int, phase: SessionPhaseConfig) -> None:
        m = self.module
        self.strategy.on_session_end(session, self.hook_loader(session), m.context())
        t0 = time.perf_counter()
        row = self.evaluate_row(session)
        self.eval_seconds += time.perf_counter() - t0
        self.video_rows.append(row)
        if self.wandb is not None:
            self.wandb.log({"session/psnr": row["psnr"][-1], "session": session, "train/loss": m.last_loss},
                           step=self.cursor.samples_seen)
        cur = self.cursor
        cur.session, cur.epoch, cur.started = session + 1, 0, False
        cur.finished = cur.session >= self.n_sessions
        self.save_checkpoint()

    # --- results ------------------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        from clplat.pfnr.decode import load_run_strategy

        rows, n = self.video_rows, len(self.video_rows)
        if self.run_dir is not None and (self.run_dir / CHECKPOINT).is_file():
            final = load_run_strategy(self.run_dir)  # a fresh model from config.yaml + the last checkpoint
        else:
            final = self.strategy
        self.final_decodes = [final.decode(j) for j in range(n)]
        quality = [video_quality(out, self.data.video(j)) for j, out in enumerate(self.final_decodes)]
        identical = [digest(out) == rows[j]["sha256"] for j, out in enumerate(self.final_decodes)]
        psnr_final = [q[0] for q in quality]
        msssim_final = [q[1] for q in quality]
        bwt = sum(psnr_final[j] - rows[j]["psnr"][j] for j in range(n - 1)) / (n - 1) if n > 1 else 0.0
        bwt_msssim = sum(msssim_final[j] - rows[j]["msssim"][j] for j in range(n - 1)) / (n - 1) if n > 1 else 0.0
        pixels = sum(int(self.data.offsets[j + 1] - self.data.offsets[j]) for j in range(n)) \
            * self.data.input_shape[1] * self.data.input_shape[2]
        bits = final.model_bits(n)
        packed, as_bool = final.mask_bytes()
        metrics = {"psnr_avg": sum(psnr_final) / n, "msssim_avg": sum(msssim_final) / n, "bwt": bwt,
                   "bpp": bits / pixels}
        return {
            "name": self.cfg.name, "strategy": self.cfg.strategy, "seed": self.cfg.seed,
            "dataset": self.cfg.data.dataset, "regime": "sessions", "task": "video",
            "videos": list(self.data.names or [])[:n],
            "frames": [int(self.data.offsets[j + 1] - self.data.offsets[j]) for j in range(n)],
            "size": list(self.data.input_shape[1:]),
            "psnr_matrix": [[r["psnr"][j] if j < len(r["psnr"]) else None for j in range(n)] for r in rows],
            "msssim_matrix": [[r["msssim"][j] if j < len(r["msssim"]) else None for j in range(n)] for r in rows],
            "psnr_final": psnr_final, "msssim_final": msssim_final, "bwt": bwt, "bwt_msssim": bwt_msssim,
            "redecode_identical": identical, "lossless": all(identical),
            "decode_sha256": [r["sha256"] for r in rows],
            "model_bits": bits, "bpp": bits / pixels, "mask_bytes_packed": packed, "mask_bytes_bool": as_bool,
            "metrics": metrics, "updates": self.cursor.updates, "eval_time_s": round(self.eval_seconds, 3),
        }

    def write_outputs(self, run_dir: Path, results: dict[str, Any]) -> dict[str, Path]:
        from clplat.pfnr.report import write_video_outputs

        return write_video_outputs(run_dir, results, self.data, self.final_decodes, f"{self.cfg.name} "
                                   f"({self.cfg.strategy})")
