"""Name -> builder registries, so methods, datasets and backbones register themselves and nothing
else has to change when one is added. Modules are imported lazily on first lookup."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from clplat.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small name -> object table with lazily imported providers.

    ``lazy`` maps a name to the module that registers it; the module is imported the first time
    the name is looked up, so ``import clplat`` never pulls in timm, peft or datasets.
    """

    def __init__(self, kind: str, lazy: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy = dict(lazy or {})

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._lazy

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._items[name]
