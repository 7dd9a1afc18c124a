"""Continual-learning strategies, one file each, registered by name (``strategy: er``)."""

from __future__ import annotations

from clplat.registry import Registry
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext

STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy",
    lazy={
        "finetune": "clplat.strategies.finetune",
        "er": "clplat.strategies.er",
        "l2p": "clplat.strategies.prompts",
        "dualprompt": "clplat.strategies.prompts",
        "mvp": "clplat.strategies.mvp",
    },
)

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "StreamContext"]
