"""Aggregation strategies, behind one registry: `register`, `get`, `make`."""

from __future__ import annotations

from jfedrl.strategies import averaging
from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    StrategySpec,
    normalized_weights,
    weighted_mean,
)

_REGISTRY: dict[str, StrategySpec] = {}


def register(spec: StrategySpec) -> None:
    """Adds a strategy; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"strategy {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> StrategySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"strategy.name: unknown strategy {name!r}; allowed: {', '.join(names())}"
        ) from None


def make(strategy_config) -> Strategy:
    """Builds the strategy named by `strategy_config.name`."""
    return get(strategy_config.name).build(strategy_config)


register(StrategySpec("fedavg", averaging.fedavg, "mean weighted by env steps n_k/n"))
register(StrategySpec("mean", averaging.mean, "unweighted mean (seed 000 Average)"))

__all__ = [
    "ClientInfo",
    "Strategy",
    "StrategySpec",
    "get",
    "make",
    "names",
    "normalized_weights",
    "register",
    "weighted_mean",
]
