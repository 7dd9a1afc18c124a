"""The streaming wing's one model-file format: safetensors tensors with the model's JSON
description under the ``clplat`` header key, and the same JSON in ``x.json`` beside it for people.

The clip classifiers (``training/weights.py``), the frame predictors (``prediction/run.py``) and
the event-flow nets (``evflow/weights.py``) each have their own ``format`` tag and rebuild their
network from the header alone (no pickle is ever loaded). Reading checks everything a damaged or
foreign file can get wrong up to the tag; each family then validates its own description.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from clplat.errors import UserError
from clplat.io import atomic_path
from clplat.streaming.sinks import write_json


def save_model_file(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Weights to ``path`` (atomically; ``meta`` in the header) and ``meta`` to ``path.json``."""
    p = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata={"clplat": json.dumps(meta, sort_keys=True)})
    return p, write_json(p.with_suffix(".json"), meta)


def read_model_file(path: str | Path, fmt: str, made_by: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the header of a file whose ``format`` is ``fmt``; ``made_by`` names the
    command that writes such files (for the error line of a file without clplat metadata)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("clplat")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged header
        raise UserError(f"cannot read model '{p}': not a valid safetensors file ({err})") from None
    if raw is None:
        raise UserError(f"model '{p}' has no clplat metadata (was it saved by {made_by}?)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UserError(f"model '{p}': its clplat metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"model '{p}' has format {found!r}, expected {fmt!r}")
    return tensors, meta
