"""Aggregation strategies, behind one registry: `register`, `get`, `names`, `make`.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`); `make` imports a rule's maths
when it is built. Each rule module cites its paper; docs/strategies.md describes
every rule and its fields. A new rule is one module that defines its section
and calls `register(StrategySpec(...))` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.registry import Registry
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

STRATEGIES = Registry("strategy", "strategy.name", "jfedrl.strategies", entry_type=StrategySpec)
"""Every strategy: the built-ins, `register` calls (plugins) and the `jfedrl.strategies`
entry points of installed packages."""

_FROZEN: list[str] = []
"""Set once `jfedrl.config` has assembled the config tree from the sections."""


def freeze(reason: str) -> None:
    """Refuses later sections: the config tree holds the ones registered so far."""
    _FROZEN.append(reason)


def register(spec: StrategySpec, hints: Mapping[str, str] | None = None) -> StrategySpec:
    """Adds a strategy; names are unique. Returns `spec`.

    Args:
        spec: what to register.
        hints: names users may type for it, or for a feature of it, that are not
            strategys -> where they live (`ddpg` -> "a TD3 switch: ...").
    """
    if _FROZEN and spec.section is not None:
        raise ValueError(
            f"strategy {spec.name!r} registers a config section after {_FROZEN[0]}: "
            "import plugin modules first (`--plugin`, or `jfedrl.plugins.load_modules`)"
        )
    return STRATEGIES.register(spec.name, spec, hints=hints)


def names() -> tuple[str, ...]:
    """Every registered strategy, sorted."""
    return STRATEGIES.names()


def specs() -> tuple[StrategySpec, ...]:
    """Every registered strategy's spec, in registration order."""
    return STRATEGIES.in_order()


def get(name: str) -> StrategySpec:
    """The spec of `name`; `envs.registry.UnknownName` (a `ValueError`) if none."""
    return STRATEGIES.get(name)


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
    for _index, _spec in enumerate(_module.SPECS):
        register(_spec, getattr(_module, "HINTS", None) if _index == 0 else None)

__all__ = ["StrategySpec", "get", "make", "names", "register", "specs"]
