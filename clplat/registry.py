"""Name -> builder registries that find their providers by themselves, and the typed config
sections selected by a registered name.

Adding a strategy, dataset, scenario kind or backbone is one new file in the registry's package
that decorates its builder with ``@REGISTRY.register("name", config=Model)``; no name list is kept
anywhere. ``import clplat`` stays light: a package's modules are imported only when a name is
looked up that is not registered yet (first the module named like the name, then all of them).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from clplat.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table; ``package`` is searched for providers on a name miss.

    ``default_config`` is the config model of names registered without one (and without a
    ``config_model`` attribute, the convention of strategy classes).
    """

    def __init__(self, kind: str, package: str | None = None,
                 default_config: type[BaseModel] | None = None) -> None:
        self.kind = kind
        self.package = package
        self.default_config = default_config
        self._items: dict[str, T] = {}
        self._configs: dict[str, type[BaseModel]] = {}
        self._discovered = False
        self._failed: dict[str, str] = {}  # module -> why it could not be imported

    def register(self, name: str, config: type[BaseModel] | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            if config is not None:
                self._configs[name] = config
            return obj

        return deco

    # --- discovery --------------------------------------------------------------------------------
    def _modules(self) -> list[str]:
        if self.package is None:
            return []
        pkg = importlib.import_module(self.package)
        return [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]

    def _import(self, module: str) -> None:
        full = f"{self.package}.{module}"
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as err:  # an optional dependency of that one provider
            if err.name is None or err.name == full or err.name.split(".")[0] == "clplat":
                raise
            self._failed[module] = f"needs '{err.name}'"

    def _find(self, name: str) -> None:
        """Import the module named like ``name`` if there is one, then every module once."""
        if name in self._items or self.package is None:
            return
        modules = self._modules()
        if name in modules:
            self._import(name)
        if name in self._items or self._discovered:
            return
        self._discovered = True
        for module in modules:
            self._import(module)

    def discover(self) -> None:
        """Import every provider module of the package (for listings)."""
        if not self._discovered and self.package is not None:
            self._discovered = True
            for module in self._modules():
                self._import(module)

    # --- lookups ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._find(name)
        return name in self._items

    def unknown_message(self, name: str) -> str:
        msg = f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})"
        if self._failed:
            msg += "; not loaded: " + ", ".join(f"{m} ({why})" for m, why in sorted(self._failed.items()))
        return msg

    def get(self, name: str) -> T:
        if name not in self:
            raise UserError(self.unknown_message(name))
        return self._items[name]

    def config_model(self, name: str) -> type[BaseModel]:
        obj = self.get(name)
        model = self._configs.get(name) or getattr(obj, "config_model", None) or self.default_config
        if model is None:
            raise UserError(f"{self.kind} '{name}' has no config model")
        return model

    def names_for(self, model: type[BaseModel]) -> list[str]:
        """Names registered with exactly this config model."""
        return [n for n, m in self._configs.items() if m is model]


class TaggedConfig(BaseModel):
    """Base of a config section whose ``tag_field`` names a registered provider, and whose
    remaining keys are validated against that provider's own config model (a discriminated union
    whose members register themselves).

    Validating ``{"dataset": "glyphs", "num_classes": 5}`` against the base returns a
    ``GlyphsConfig``; a key the chosen provider does not have is an unknown key. Calling the base
    as a constructor dispatches the same way. Subclasses define ``tag_field`` and ``registry()``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, polymorphic_serialization=True)

    tag_field: ClassVar[str] = ""

    @classmethod
    def registry(cls) -> Registry[Any]:
        raise NotImplementedError

    @classmethod
    def _default_tag(cls) -> str:
        return cls.model_fields[cls.tag_field].default

    @classmethod
    def _select(cls, data: dict[str, Any]) -> type[TaggedConfig]:
        """The config model for ``data``'s tag; fills in the tag of a uniquely registered subclass."""
        reg = cls.registry()
        if cls.tag_field not in data:
            own = reg.names_for(cls)
            if len(own) == 1:
                data[cls.tag_field] = own[0]
                return cls
        name = data.get(cls.tag_field, cls._default_tag())
        if not isinstance(name, str):
            return cls  # the tag field's own validation reports it
        if name not in reg:
            err = PydanticCustomError("unknown_name", reg.unknown_message(name))
            raise ValidationError.from_exception_data(
                cls.__name__, [InitErrorDetails(type=err, loc=(cls.tag_field,), input=name)])
        model = reg.config_model(name)
        return model if isinstance(model, type) and issubclass(model, cls) else cls

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            model = cls._select(data)
            if model is not cls:
                return model.model_validate(data)
        return handler(data)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs and cls.tag_field:
            name = kwargs.get(cls.tag_field, cls._default_tag())
            if isinstance(name, str) and name in cls.registry():
                model = cls.registry().config_model(name)
                if isinstance(model, type) and issubclass(model, cls):
                    return super().__new__(model)
        return super().__new__(cls)
