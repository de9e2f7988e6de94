"""The `strategy.dp_fedavg` section and registration (McMahan et al. 2018).

Imports no jax; the maths is `jfedrl.strategies.dp`, the accountant
`jfedrl.strategies.privacy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

#: `strategy.dp_fedavg.budget_action`: what a run does at its epsilon budget.
BUDGET_ACTIONS = ("stop", "warn")


@dataclass(frozen=True)
class DPFedAvgConfig:
    """Clipped client updates plus Gaussian noise, with a Renyi-DP accountant."""

    clip: float = param(1.0, traceable=True, renamed_from=("strategy.dp_clip",))
    """Per-client update L2 norm bound S (> 0)."""
    noise: float = param(1.0, traceable=True, renamed_from=("strategy.dp_noise",))
    """Noise multiplier z (>= 0); noise std = z * S / n_valid per coordinate."""
    delta: float = param(
        1e-5,
        renamed_from=("strategy.dp_delta",),
        static_reason="feeds the host's privacy accountant",
    )
    """The delta, in (0, 1), of the (epsilon, delta) spent so far that each round reports
    (`dp_epsilon`, Renyi DP accountant); choose it well below 1 / num_clients."""
    epsilon_budget: float = param(
        0.0,
        resumable=True,
        renamed_from=("strategy.dp_epsilon_budget",),
        static_reason="is read by the host between blocks",
    )
    """Epsilon budget (>= 0; 0: none); at it the run does `budget_action`."""
    budget_action: str = param("stop", resumable=True, renamed_from=("strategy.dp_budget_action",))
    """At the budget, `stop` (end after the last round within it, checkpointed, with an
    error) or `warn` (log a warning and go on)."""


SPECS = (
    StrategySpec(
        "dp_fedavg",
        "jfedrl.strategies.dp:dp_fedavg",
        "jfedrl.strategies.dp:validate",
        DPFedAvgConfig,
        "clipped updates + Gaussian noise (McMahan 2018)",
    ),
)
