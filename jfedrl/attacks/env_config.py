"""The environment attacks' sections and registrations (no JAX here; the maths is
`jfedrl.attacks.env`).

An environment attack acts inside the Byzantine clients' own rollouts, so their
updates are ordinary training on poisoned data: the server sees nothing unusual
in their shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.attacks.spec import AttackSpec
from jfedrl.attacks.update_config import _positive
from jfedrl.schema.checks import require
from jfedrl.schema.fields import param

MODULE = "jfedrl.attacks.env"


@dataclass(frozen=True)
class RewardScaleConfig:
    """Reward scaling: the Byzantine clients train on s·r."""

    factor: float = param(10.0, traceable=True)
    """s (any finite value; -1 is `reward_flip`). Under advantage normalisation (PPO) a
    positive s mostly mis-scales the critic; a negative s reverses the objective."""


@dataclass(frozen=True)
class RandomActionConfig:
    """Random actions (FedPG-BR, Fan et al. 2021): the env executes a uniformly random
    action in place of the policy's, with probability p per step.
    """

    prob: float = param(1.0, traceable=True)
    """p in (0, 1] (FedPG-BR: 1, every action random)."""


@dataclass(frozen=True)
class ObsNoiseConfig:
    """Observation noise: the Byzantine clients see obs + N(0, σ² I) every step."""

    std: float = param(1.0, traceable=True)
    """σ > 0, in the observations' units."""


def _probability(config) -> None:
    prob = config.attack.random_action.prob
    require(0.0 < prob <= 1.0, "attack.random_action.prob", "in (0, 1]", prob)


SPECS = (
    AttackSpec(
        "reward_flip",
        "env",
        f"{MODULE}:reward_flip",
        description="Byzantine clients train on -r",
    ),
    AttackSpec(
        "reward_scale",
        "env",
        f"{MODULE}:reward_scale",
        None,
        RewardScaleConfig,
        "Byzantine clients train on s·r",
    ),
    AttackSpec(
        "random_action",
        "env",
        f"{MODULE}:random_action",
        _probability,
        RandomActionConfig,
        "uniformly random actions with probability p (FedPG-BR, Fan 2021)",
    ),
    AttackSpec(
        "obs_noise",
        "env",
        f"{MODULE}:obs_noise",
        _positive("attack.obs_noise.std"),
        ObsNoiseConfig,
        "Gaussian noise on the Byzantine clients' observations",
    ),
)
