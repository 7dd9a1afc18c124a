"""Architecture name + constructor arguments -> the offline clip network.

The same two values travel in a saved model's header, so training and loading build networks
through this one door.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clplat.errors import UserError
from clplat.streaming.training.config import LRCNSection, X3DSection


def build_model(arch: str, kwargs: dict[str, Any], num_classes: int) -> nn.Module:
    """The offline network by architecture name; ``kwargs`` are the constructor's own names."""
    from clplat.streaming.models import LRCN, X3DS

    if arch == "x3d":
        return X3DS(num_classes, **kwargs)
    if arch == "lrcn":
        return LRCN(num_classes, **kwargs)
    raise UserError(f"unknown model architecture '{arch}' (known: x3d, lrcn)")


def model_kwargs(section: X3DSection | LRCNSection) -> dict[str, Any]:
    """A config's model section as constructor keyword arguments (``arch`` removed)."""
    kw = section.model_dump(exclude={"arch"})
    if "depths" in kw:
        kw["depths"] = tuple(kw["depths"])
    return kw
