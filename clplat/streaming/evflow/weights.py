"""The event-flow weights format: safetensors with the model description in the header.

``save_event_flow`` writes the tensors (the JSON ``meta`` under the ``clplat`` header key) and
``x.json`` beside them; ``load_event_flow`` rebuilds the network from the header alone (no pickle).
A damaged or foreign file, a description that does not validate, or tensors that do not fit are
one ``UserError`` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from torch import nn

from clplat.config import format_validation_errors
from clplat.errors import UserError
from clplat.nn import load_state_checked
from clplat.streaming.model_file import read_model_file, save_model_file
from clplat.streaming.models.evflow_common import EventFlowConfig, FlowUNet, build_evflow

FORMAT = "clplat.event_flow/1"


def save_event_flow(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, Path]:
    return save_model_file(path, model, meta)


def load_event_flow(path: str | Path) -> tuple[FlowUNet, dict[str, Any]]:
    """The network saved at ``path`` (eval mode) and its header."""
    p = Path(path)
    tensors, meta = read_model_file(p, FORMAT, "python -m clplat.streaming.evflow train")
    try:
        cfg = EventFlowConfig.model_validate(meta.get("model"))
    except ValidationError as err:
        detail = format_validation_errors(err, prefix="model").removeprefix("config: ")
        raise UserError(f"model '{p}': its metadata describes no valid event-flow net ({detail})") from None
    model = build_evflow(cfg)
    load_state_checked(model, tensors, f"model '{p}' ({cfg.arch}): weights do not fit the network its header describes")
    return model.eval(), meta
