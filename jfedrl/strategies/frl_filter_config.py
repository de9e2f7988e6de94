"""The `frl_filter` strategy's config section and its checks (no JAX here).

Imports no jax; the maths is `jfedrl.strategies.frl_filter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jfedrl.schema.checks import require_choice, require_positive
from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

PATH = "strategy.frl_filter."
"""Where the section's fields live in the config tree (the prefix of every error)."""

#: `strategy.frl_filter.centre`: the robust centre the distances are measured from.
CENTRES = ("median", "geometric_median")
#: `strategy.frl_filter.bound`: how the distance threshold is set.
BOUNDS = ("median_distance", "fixed")


@dataclass(frozen=True)
class FRLFilterConfig:
    """Distance filtering around a robust centre, in the spirit of FedPG-BR (Fan et al. 2021)."""

    centre: str = "median"
    """The robust centre of the updates: `median` (coordinate-wise) or `geometric_median`
    (smoothed Weiszfeld, 8 steps)."""
    bound: str = "median_distance"
    """The threshold T on a client's distance to the centre: `median_distance` (T =
    `factor` x the median distance of the valid clients) or `fixed` (T = `threshold`,
    FedPG-BR's 2 sigma sqrt(V / B) computed by the user)."""
    factor: float = param(2.0, traceable=True)
    """With `bound: median_distance`, T = this (> 0) x the median distance; >= 1 keeps at
    least half of the clients, so the fallback to the centre never triggers."""
    threshold: float = param(1.0, traceable=True)
    """With `bound: fixed`, T (> 0) in the params' units (L2 over all params)."""


def validate(section: FRLFilterConfig, prefix: str = PATH) -> None:
    """Checks the section; raises `ConfigError` naming `<prefix><field>`."""
    require_choice(f"{prefix}centre", section.centre, CENTRES)
    require_choice(f"{prefix}bound", section.bound, BOUNDS)
    require_positive(f"{prefix}factor", section.factor)
    require_positive(f"{prefix}threshold", section.threshold)


def check(config: Any) -> None:
    """`validate` on the whole config's `strategy.frl_filter`."""
    validate(config.strategy.frl_filter)


SPECS = (
    StrategySpec(
        "frl_filter",
        "jfedrl.strategies.frl_filter:build",
        check,
        FRLFilterConfig,
        "FedAvg of the clients near a robust centre, FedPG-BR-style filter (Fan 2021)",
    ),
)
