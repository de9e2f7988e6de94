"""The `strategy.reward_weighted` section and registration (DeRL's Weighted Average).

Imports no jax; the maths is `jfedrl.strategies.reward`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

#: `strategy.reward_weighted.weighting`.
WEIGHTINGS = ("min_shift", "softmax")


@dataclass(frozen=True)
class RewardWeightedConfig:
    """The mean of the clients weighted by their recent return."""

    weighting: str = param("min_shift", renamed_from=("strategy.reward_weighting",))
    """`min_shift` (return - min + eps) or `softmax` (exp(return / T))."""
    temperature: float = param(1.0, traceable=True, renamed_from=("strategy.temperature",))
    """Softmax temperature T (> 0), in units of return."""


SPECS = (
    StrategySpec(
        "reward_weighted",
        "jfedrl.strategies.reward:reward_weighted",
        "jfedrl.strategies.reward:validate",
        RewardWeightedConfig,
        "mean weighted by return, min-shifted or softmax (DeRL's Weighted Average)",
    ),
)
