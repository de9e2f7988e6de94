"""Aggregation strategies, behind one registry: `register`, `get`, `names`, `make`.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`); `make` imports a rule's maths
when it is built. Each rule module cites its paper; docs/strategies.md describes
every rule and its fields. A new rule is one module that defines its section
and calls `register(StrategySpec(...))` (docs/extending.md).
"""

from __future__ import annotations

from typing import Any

from jfedrl.schema.sections import SectionRegistry
from jfedrl.strategies import (
    averaging_config,
    centered_clip_config,
    dp_config,
    evolutionary_config,
    frl_filter_config,
    geometric_median_config,
    norm_bound_config,
    reward_config,
    robust_config,
    server_opt_config,
)
from jfedrl.strategies.spec import StrategySpec

STRATEGIES: SectionRegistry[StrategySpec] = SectionRegistry(
    "strategy", "strategy.name", "jfedrl.strategies", entry_type=StrategySpec
)
"""Every strategy: the built-ins, `register` calls (plugins) and the `jfedrl.strategies`
entry points of installed packages."""

register = STRATEGIES.add
names = STRATEGIES.names
specs = STRATEGIES.in_order
get = STRATEGIES.get
freeze = STRATEGIES.freeze


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
    centered_clip_config,
    norm_bound_config,
    frl_filter_config,
    dp_config,
):
    for _index, _spec in enumerate(_module.SPECS):
        register(_spec, getattr(_module, "HINTS", None) if _index == 0 else None)

__all__ = ["StrategySpec", "get", "make", "names", "register", "specs"]
