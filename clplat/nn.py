"""Small ``torch.nn`` helpers shared by both wings (imports only torch and clplat.errors).

- one activation vocabulary (``"identity" | "relu" | "silu"``) as a module factory, a functional
  form and the inverse mapping used when fusing a module into a preceding conv;
- loading a state dict whose mismatch (missing/unexpected keys, wrong shapes) becomes one line
  naming the file and the first differences, instead of torch's multi-line ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from clplat.errors import UserError

__all__ = ["ACTIVATIONS", "activation_name", "apply_activation", "check_activation", "load_state_checked",
           "make_activation", "state_mismatch"]

ACTIVATIONS = ("identity", "relu", "silu")
_MODULES: dict[str, Callable[..., nn.Module]] = {"identity": nn.Identity, "relu": nn.ReLU, "silu": nn.SiLU}


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return name


def make_activation(name: str, inplace: bool = False) -> nn.Module:
    """``nn.Identity`` / ``nn.ReLU`` / ``nn.SiLU`` by name."""
    check_activation(name)
    return nn.Identity() if name == "identity" else _MODULES[name](inplace=inplace)


def apply_activation(x: Tensor, name: str, inplace: bool = False) -> Tensor:
    """Functional form; ``inplace=True`` reuses ``x`` (only on a tensor the caller owns)."""
    if name == "relu":
        return x.relu_() if inplace else F.relu(x)
    if name == "silu":
        return F.silu(x, inplace=inplace)
    return x


def activation_name(module: nn.Module) -> str | None:
    """The name of an exact ``nn.ReLU`` / ``nn.SiLU`` module (what a conv can fuse), else None."""
    for name, cls in _MODULES.items():
        if name != "identity" and type(module) is cls:
            return name
    return None


def _shape(v: object) -> tuple[int, ...] | None:
    return tuple(v.shape) if isinstance(v, Tensor) else None


def state_mismatch(module: nn.Module, state: Mapping[str, object], limit: int = 3) -> str | None:
    """A one-line description of how ``state`` differs from ``module.state_dict()`` (keys and
    tensor shapes), or None when they agree."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(_shape(state[k]) or [])} in file vs {list(own[k].shape)} in model" for k in own
              if k in state and isinstance(own[k], Tensor) and _shape(state[k]) != tuple(own[k].shape)]
    def listed(label: str, items: list[str]) -> str:
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return label + ", ".join(items[:limit]) + more

    parts = [listed(label, items) for label, items in
             (("shape mismatch: ", shapes), ("missing keys: ", missing), ("unexpected keys: ", unexpected)) if items]
    return "; ".join(parts) or None


def load_state_checked(module: nn.Module, state: Mapping[str, object], source: str, strict: bool = True):
    """``module.load_state_dict(state)``; a mismatch raises ``UserError("<source>: <mismatch>")``."""
    try:
        return module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        detail = state_mismatch(module, state) or str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{source}: {detail}") from None

