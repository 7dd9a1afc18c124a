"""The event-flow weights format: safetensors with the model description in the header.

``save_event_flow`` writes the tensors (the JSON ``meta`` under the ``clplat`` header key) and
``x.json`` beside them; ``load_event_flow`` rebuilds the network from the header alone (no pickle).
A damaged or foreign file, a description that does not validate, or tensors that do not fit are
one ``UserError`` line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from clplat.config import format_validation_errors
from clplat.errors import UserError
from clplat.io import atomic_path
from clplat.nn import load_state_checked
from clplat.streaming.models.evflow_common import EventFlowConfig, FlowUNet, build_evflow
from clplat.streaming.sinks import write_json

FORMAT = "clplat.event_flow/1"


def save_event_flow(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, Path]:
    p = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata={"clplat": json.dumps(meta, sort_keys=True)})
    return p, write_json(p.with_suffix(".json"), meta)


def load_event_flow(path: str | Path) -> tuple[FlowUNet, dict[str, Any]]:
    """The network saved at ``path`` (eval mode) and its header."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("clplat")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise UserError(f"cannot read model '{p}': not a valid safetensors file ({err})") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as err:
        raise UserError(f"model '{p}': its clplat metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"model '{p}' has format {found!r}, expected {FORMAT!r}")
    try:
        cfg = EventFlowConfig.model_validate(meta.get("model"))
    except ValidationError as err:
        detail = format_validation_errors(err, prefix="model").removeprefix("config: ")
        raise UserError(f"model '{p}': its metadata describes no valid event-flow net ({detail})") from None
    model = build_evflow(cfg)
    load_state_checked(model, tensors, f"model '{p}' ({cfg.arch}): weights do not fit the network its header describes")
    return model.eval(), meta
