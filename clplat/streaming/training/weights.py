"""The saved-model format: safetensors weights with the model's description in the header.

``save_trained`` writes ``path`` (tensors; the JSON ``meta`` under the ``clplat`` header key)
and ``path.json`` (the same ``meta``, for people). ``load_trained`` rebuilds the network from
the header alone: no pickle is ever loaded. Everything a damaged or foreign file can do wrong
(unreadable header, no clplat metadata, another format version, an architecture description
that does not validate, tensors that do not fit the described network) is one ``UserError``
line naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch import Tensor, nn

from clplat.config import format_validation_errors
from clplat.errors import UserError
from clplat.nn import load_state_checked
from clplat.streaming.model_file import read_model_file as read_tagged
from clplat.streaming.model_file import save_model_file
from clplat.streaming.training.config import ARCH_TAGS, ModelSection
from clplat.streaming.training.factory import build_model, model_kwargs

FORMAT = "clplat.stream_model/1"
_MODEL = TypeAdapter(ModelSection)


def save_trained(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Weights to ``path`` (safetensors, ``meta`` in its header) and ``meta`` to ``path.json``."""
    return save_model_file(path, model, meta)


def read_model_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the validated header of a file written by :func:`save_trained`."""
    tensors, meta = read_tagged(path, FORMAT, "python -m clplat.stream train")
    missing = [k for k in ("arch", "model", "num_classes", "input") if k not in meta]
    if missing:
        raise UserError(f"model '{path}': its metadata lacks {', '.join(missing)}")
    return tensors, meta


def model_from_meta(meta: dict[str, Any], source: str) -> nn.Module:
    """The (untrained) network a header describes; an invalid description is a UserError."""
    if not isinstance(meta["model"], dict):
        raise UserError(f"{source}: its metadata 'model' is not a mapping")
    try:
        section = _MODEL.validate_python({"arch": meta["arch"], **meta["model"]})
    except ValidationError as err:
        detail = format_validation_errors(err, prefix="model", union_tags=ARCH_TAGS).removeprefix("config: ")
        raise UserError(f"{source}: its metadata describes no valid model ({detail})") from None
    if not isinstance(meta["num_classes"], int) or meta["num_classes"] < 1:
        raise UserError(f"{source}: its metadata has num_classes {meta['num_classes']!r}")
    return build_model(section.arch, model_kwargs(section), meta["num_classes"])


def load_trained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_trained`, in eval mode, with its header."""
    tensors, meta = read_model_file(path)
    source = f"model '{Path(path)}' ({meta['arch']})"
    model = model_from_meta(meta, source)
    load_state_checked(model, tensors, f"{source}: weights do not fit the network its header describes")
    return model.eval(), meta


def init_from(model: nn.Module, arch: str, path: str | Path) -> None:
    """Load a saved model's weights into ``model`` (an ``arch`` network) to continue training it."""
    tensors, meta = read_model_file(path)
    if meta["arch"] != arch:
        raise UserError(f"train.init_weights '{path}' holds a {meta['arch']} model, but the config "
                        f"trains {arch} (model.arch)")
    load_state_checked(model, tensors, f"train.init_weights '{path}' does not fit model.* of the config")
