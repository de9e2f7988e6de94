"""The averaging rules' registrations, and the `strategy.fedprox` section.

Imports no jax; the maths is `jfedrl.strategies.averaging` and `.fednova`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jfedrl.algorithms.spec import PROX_REASON
from jfedrl.schema.checks import ConfigError, require
from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec


@dataclass(frozen=True)
class FedProxConfig:
    """FedProx (Li et al. 2020): FedAvg plus each client's proximal term."""

    mu: float = param(
        0.01, switch=True, static_reason=PROX_REASON, renamed_from=("strategy.prox_mu",)
    )
    """The proximal coefficient mu (> 0); fedprox is fedavg with the algorithm's term
    mu/2 ||w - w_global||^2, and this sets algo.<name>.prox_mu."""


def validate_fedprox(config: Any) -> None:
    """FedProx's mu must be positive and not contradict the algorithm's own `prox_mu`."""
    mu = config.strategy.fedprox.mu
    require(mu > 0, "strategy.fedprox.mu", "> 0", mu)
    section = getattr(config.algo, config.algo.name, None)
    own = getattr(section, "prox_mu", None)
    if own is None:
        raise ConfigError(
            f"strategy.name: 'fedprox' needs an algorithm with a proximal term "
            f"(algo.<name>.prox_mu); {config.algo.name!r} has none"
        )
    if own not in (0.0, mu):
        raise ConfigError(
            f"algo.{config.algo.name}.prox_mu: {own!r} contradicts strategy.fedprox.mu={mu!r} "
            "under fedprox; set only strategy.fedprox.mu (or use fedavg with the algorithm's)"
        )


#: Names users type that are not strategies of their own -> where they live.
HINTS = {
    "fedasync": "Asynchrony is not an aggregation rule: --federation.staleness K "
    "(--federation.staleness-decay A for FedAsync's weighting)",
    "clip": "Update clipping works with every strategy: --strategy.clip-update-norm S",
    "weighted": "Weighted by env steps is fedavg; by return, reward_weighted",
    "average": "The unweighted average is mean; weighted by env steps, fedavg",
}


SPECS = (
    StrategySpec(
        "fedavg",
        "jfedrl.strategies.averaging:fedavg",
        description="mean weighted by env steps n_k/n (McMahan 2017)",
    ),
    StrategySpec(
        "mean",
        "jfedrl.strategies.averaging:mean",
        description="unweighted mean (DeRL's Average)",
    ),
    StrategySpec(
        "fedprox",
        "jfedrl.strategies.averaging:fedavg",
        validate=validate_fedprox,
        section=FedProxConfig,
        description="fedavg + the clients' proximal term mu/2 ||w - w_global||^2 (Li 2020)",
    ),
    StrategySpec(
        "local_only",
        "jfedrl.strategies.averaging:local_only",
        description="no federation: each client trains its own params, the global is never "
        "updated (the personalization baseline)",
    ),
    StrategySpec(
        "fednova",
        "jfedrl.strategies.fednova:fednova",
        description="normalised averaging for unequal local steps (Wang 2020)",
    ),
)
