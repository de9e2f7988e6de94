"""The robust rules' sections and registrations (Yin et al. 2018; Blanchard et al. 2017).

Imports no jax; the maths is `jfedrl.strategies.robust`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

#: `strategy.multi_krum.weighting`: how the selected clients are averaged.
KRUM_WEIGHTINGS = ("mean", "num_steps")


@dataclass(frozen=True)
class TrimmedMeanConfig:
    """Coordinate-wise trimmed mean."""

    beta: float = param(
        0.1,
        renamed_from=("strategy.trim_beta",),
        static_reason="sets how many clients are trimmed (a shape)",
    )
    """Fraction in [0, 0.5) trimmed from each end, per coordinate."""


@dataclass(frozen=True)
class KrumConfig:
    """Krum: the client closest to its n - f - 2 nearest neighbours."""

    f: int = param(1, renamed_from=("strategy.krum_f",))
    """Byzantine clients tolerated; needs participants n > 2f + 2."""


@dataclass(frozen=True)
class MultiKrumConfig:
    """Multi-Krum: the mean of the m clients with the best Krum scores."""

    f: int = param(1, renamed_from=("strategy.krum_f",))
    """Byzantine clients tolerated; needs participants n > 2f + 2."""
    m: int = param(0, renamed_from=("strategy.krum_m",))
    """Clients averaged, in [0, n - f] (0: n - f)."""
    weighting: str = param("mean", renamed_from=("strategy.krum_weighting",))
    """Average the selected clients with equal weights (`mean`, Blanchard et al. 2017) or
    by their environment steps n_k (`num_steps`, as Flower's Multi-Krum)."""


SPECS = (
    StrategySpec(
        "median",
        "jfedrl.strategies.robust:median",
        description="coordinate-wise median (Yin 2018)",
    ),
    StrategySpec(
        "trimmed_mean",
        "jfedrl.strategies.robust:trimmed_mean",
        "jfedrl.strategies.robust:validate_trimmed_mean",
        TrimmedMeanConfig,
        "coordinate-wise trimmed mean, beta per side (Yin 2018)",
    ),
    StrategySpec(
        "krum",
        "jfedrl.strategies.robust:krum",
        "jfedrl.strategies.robust:validate_krum",
        KrumConfig,
        "Krum selection (Blanchard 2017)",
    ),
    StrategySpec(
        "multi_krum",
        "jfedrl.strategies.robust:multi_krum",
        "jfedrl.strategies.robust:validate_multi_krum",
        MultiKrumConfig,
        "mean of the m best Krum scores (Blanchard 2017)",
    ),
)
