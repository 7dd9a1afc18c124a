"""W&B logging: online when credentials exist, offline otherwise, disabled on request.

Tests and CI set ``logging.wandb=disabled`` (or run without credentials, i.e. offline): nothing
here ever needs the network unless the user has logged in.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in {"online", "offline", "disabled"}:
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


class WandbRun:
    """A thin holder so the engine never imports wandb when logging is disabled."""

    def __init__(self, cfg, run_dir: Path, config: dict[str, Any], resume_id: str | None = None) -> None:
        self.mode = resolve_mode(cfg.logging.wandb)
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.logging.project, entity=cfg.logging.entity, name=run_dir.name,
                              dir=str(run_dir), config=config, mode=self.mode, id=resume_id,
                              resume="allow" if resume_id else None, reinit="finish_previous")

    @property
    def id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log(self, data: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(data, step=step)

    def finish(self, summary: dict[str, Any], images: dict[str, Path]) -> None:
        if self.run is None:
            return
        import wandb

        for k, v in summary.items():
            self.run.summary[k] = v
        self.run.log({k: wandb.Image(str(p)) for k, p in images.items() if p.exists()})
        self.run.finish()
