"""The `geometric_median` strategy's config section and its checks (no JAX here).

Imports no jax, so that the config tree, `--help` and the docs generator can
read it; the maths is `jfedrl.strategies.geometric_median`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jfedrl.schema.checks import require
from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

PATH = "strategy.geometric_median."
"""Where the section's fields live in the config tree (the prefix of every error)."""


@dataclass(frozen=True)
class GeometricMedianConfig:
    """Robust federated aggregation by the geometric median (Pillutla et al. 2022)."""

    iterations: int = param(5, static_reason="sets the number of Weiszfeld steps (a loop)")
    """Smoothed Weiszfeld steps, a fixed count (>= 1); the authors' RFA code runs 5
    ("communication passes"), and the paper finds 3-5 enough."""
    eps: float = param(1e-6, traceable=True)
    """Smoothing nu (> 0) of the Weiszfeld weights w_k / max(nu, ||x_k - z||), in the
    params' units: distances below it count as nu, so a client at z cannot divide by 0."""


def validate(section: GeometricMedianConfig, prefix: str = PATH) -> None:
    """Checks the section; raises `ConfigError` naming `<prefix><field>`.

    Args:
        section: the fields to check.
        prefix: the dotted path of the section in the config tree, with its final dot
            (the fields' names follow it).
    """
    iterations = section.iterations
    ok = isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1
    require(ok, f"{prefix}iterations", "an integer >= 1", iterations)
    require(section.eps > 0, f"{prefix}eps", "> 0", section.eps)


def check(config: Any) -> None:
    """`validate` on the whole config's `strategy.geometric_median`."""
    validate(config.strategy.geometric_median)


SPECS = (
    StrategySpec(
        "geometric_median",
        "jfedrl.strategies.geometric_median:build",
        check,
        GeometricMedianConfig,
        "geometric median by smoothed Weiszfeld, RFA (Pillutla 2022)",
    ),
)
