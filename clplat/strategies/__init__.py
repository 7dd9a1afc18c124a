"""Continual-learning strategies, one file each, registered by name (``strategy: er``) with
``@STRATEGIES.register(name)``; the class's ``config_model`` (or ``config=``) types its section.
Files are found on first lookup; no list of names is kept."""

from __future__ import annotations

from clplat.registry import Registry
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "clplat.strategies", default_config=StrategyConfig)

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "StreamContext"]
