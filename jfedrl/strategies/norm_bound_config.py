"""The `norm_bound` strategy's config section and its checks (no JAX here).

Imports no jax; the maths is `jfedrl.strategies.norm_bound`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jfedrl.schema.checks import require_choice, require_positive
from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

PATH = "strategy.norm_bound."
"""Where the section's fields live in the config tree (the prefix of every error)."""

#: `strategy.norm_bound.bound`: how the norm bound M is set each round.
BOUNDS = ("fixed", "median")


@dataclass(frozen=True)
class NormBoundConfig:
    """Norm bounding of the client updates, then FedAvg (Sun et al. 2019)."""

    bound: str = "fixed"
    """How M is set: `fixed` (M = `max_norm`, the paper) or `median` (M = `median_factor`
    x the median update norm of this round's valid clients: adapts to the update scale,
    and a minority cannot raise it)."""
    max_norm: float = param(1.0, traceable=True)
    """The bound M (> 0) with `bound: fixed`, in the params' units (L2 over all params)."""
    median_factor: float = param(1.0, traceable=True)
    """With `bound: median`, M = this (> 0) x the median of the valid update norms."""


def validate(section: NormBoundConfig, prefix: str = PATH) -> None:
    """Checks the section; raises `ConfigError` naming `<prefix><field>`."""
    require_choice(f"{prefix}bound", section.bound, BOUNDS)
    require_positive(f"{prefix}max_norm", section.max_norm)
    require_positive(f"{prefix}median_factor", section.median_factor)


def check(config: Any) -> None:
    """`validate` on the whole config's `strategy.norm_bound`."""
    validate(config.strategy.norm_bound)


SPECS = (
    StrategySpec(
        "norm_bound",
        "jfedrl.strategies.norm_bound:build",
        check,
        NormBoundConfig,
        "FedAvg of the updates clipped to norm M, fixed or median-adaptive (Sun 2019)",
    ),
)
