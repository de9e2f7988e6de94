"""Aggregation strategies, behind one registry: `register`, `get`, `names`, `make`.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`); `make` imports a rule's maths
when it is built. Each rule module cites its paper; docs/strategies.md describes
every rule and its fields. A new rule is one module that defines its section
and calls `register(StrategySpec(...))` (docs/writing-a-strategy.md).
"""

from __future__ import annotations

from typing import Any

from jfedrl.schema.checks import not_allowed
from jfedrl.strategies import (
    averaging_config,
    dp_config,
    evolutionary_config,
    geometric_median_config,
    reward_config,
    robust_config,
    server_opt_config,
)
from jfedrl.strategies.spec import StrategySpec

_REGISTRY: dict[str, StrategySpec] = {}
_FROZEN: list[str] = []
"""Set once `jfedrl.config` has assembled the config tree from the sections."""


def freeze(reason: str) -> None:
    """Refuses later registrations: the config tree holds the sections registered so far."""
    _FROZEN.append(reason)


def register(spec: StrategySpec) -> StrategySpec:
    """Adds a strategy; names are unique. Returns `spec`."""
    if spec.name in _REGISTRY:
        raise ValueError(f"strategy {spec.name!r} is already registered")
    if _FROZEN and spec.section is not None:
        raise ValueError(
            f"strategy {spec.name!r} registers a config section after {_FROZEN[0]}: "
            "import plugin modules first (`--plugin`, or `jfedrl.plugins.load_modules`)"
        )
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """Every registered strategy, sorted."""
    return tuple(sorted(_REGISTRY))


def specs() -> tuple[StrategySpec, ...]:
    """Every registered strategy's spec, in registration order."""
    return tuple(_REGISTRY.values())


def get(name: str) -> StrategySpec:
    """The spec of `name`; a `ValueError` listing the registered names if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(not_allowed("strategy.name", name, names())) from None


def make(strategy_config: Any, num_clients: int | None = None) -> Any:
    """Builds the strategy named by `strategy_config.name` from its own section.

    Args:
        strategy_config: the `StrategyConfig`; the rule receives
            `strategy_config.<name>` (None if it has no section).
        num_clients: length of the client axis `aggregate` will receive (the
            participants per round, plus padding if any); required by rules
            with per-client server state (`evolutionary`).
    """
    name = strategy_config.name
    return get(name).builder()(getattr(strategy_config, name, None), num_clients)


for _module in (
    averaging_config,
    reward_config,
    evolutionary_config,
    server_opt_config,
    robust_config,
    geometric_median_config,
    dp_config,
):
    for _spec in _module.SPECS:
        register(_spec)

__all__ = ["StrategySpec", "get", "make", "names", "register", "specs"]
