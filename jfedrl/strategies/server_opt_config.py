"""The server optimisers' sections and registrations (Reddi et al. 2021; Hsu et al. 2019).

Imports no jax; the maths is `jfedrl.strategies.server_opt`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.schema.fields import param
from jfedrl.strategies.spec import StrategySpec

_LR = ("strategy.server_lr",)


@dataclass(frozen=True)
class FedAvgMConfig:
    """FedAvgM: server SGD with momentum on the pseudo-gradient."""

    lr: float = param(1.0, traceable=True, renamed_from=_LR)
    """Server learning rate (> 0); 1.0 with momentum 0 is exactly fedavg."""
    momentum: float = param(
        0.9,
        renamed_from=("strategy.server_momentum",),
        static_reason="switches the server momentum state off at 0",
    )
    """Server momentum in [0, 1)."""


@dataclass(frozen=True)
class ServerAdamConfig:
    """FedAdam / FedYogi: an adaptive server optimiser on the pseudo-gradient."""

    lr: float = param(1.0, traceable=True, renamed_from=_LR)
    """Server learning rate (> 0); the adaptive rules step about lr per coordinate, so
    use ~1e-3..1e-2."""
    beta1: float = param(0.9, traceable=True, renamed_from=("strategy.beta1",))
    """First-moment decay in [0, 1)."""
    beta2: float = param(0.99, traceable=True, renamed_from=("strategy.beta2",))
    """Second-moment decay in [0, 1)."""
    tau: float = param(1e-3, traceable=True, renamed_from=("strategy.tau",))
    """Adaptivity (epsilon, > 0)."""


@dataclass(frozen=True)
class FedAdagradConfig:
    """FedAdagrad: per-coordinate step lr * g / sqrt(tau^2 + sum g^2)."""

    lr: float = param(1.0, traceable=True, renamed_from=_LR)
    """Server learning rate (> 0); use ~1e-3..1e-2."""
    tau: float = param(1e-3, traceable=True, renamed_from=("strategy.tau",))
    """Adaptivity (epsilon, > 0)."""


_CHECK = "jfedrl.strategies.server_opt:validate"

SPECS = (
    StrategySpec(
        "fedavgm",
        "jfedrl.strategies.server_opt:fedavgm",
        _CHECK,
        FedAvgMConfig,
        "server SGD with momentum on the pseudo-gradient (Hsu 2019)",
    ),
    StrategySpec(
        "fedadam",
        "jfedrl.strategies.server_opt:fedadam",
        _CHECK,
        ServerAdamConfig,
        "server Adam on the pseudo-gradient (Reddi 2021)",
    ),
    StrategySpec(
        "fedyogi",
        "jfedrl.strategies.server_opt:fedyogi",
        _CHECK,
        ServerAdamConfig,
        "server Yogi on the pseudo-gradient (Reddi 2021)",
    ),
    StrategySpec(
        "fedadagrad",
        "jfedrl.strategies.server_opt:fedadagrad",
        _CHECK,
        FedAdagradConfig,
        "server Adagrad on the pseudo-gradient (Reddi 2021)",
    ),
)
