"""Turns the `env` config section into the clients' environments.

The glue between the config tree and `envs` (which knows nothing of
federation): which environment, each client's `EnvParams` (stacked on a
leading client axis) and the drift applied every round inside the jit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

import envs
from jfedrl.config import ConfigError, EnvConfig

DriftFn = Callable[[jax.Array, Any, jax.Array], Any]


@dataclass(frozen=True, eq=False)
class ClientEnvs:
    """The environment shared by all clients and how their params differ."""

    env: Any
    default_params: Any
    """One client's default (unbatched) params, for spaces and shapes."""
    client_params: Callable[[jax.Array], Any]
    """`key -> params` stacked over clients (the round-0 heterogeneity)."""
    drift: DriftFn
    """`(key, base_params, round) -> params`: the clients' params in a round.

    Pure and jittable; `key` is fixed for the run, so a drift is a
    deterministic function of the round (resume-safe, no recompilation)."""
    max_episode_steps: int


def make_client_envs(config: EnvConfig, num_clients: int) -> ClientEnvs:
    """Builds the clients' environments from the `env` config section."""
    env, default_params = envs.make(config.name)
    if config.variant != "default":
        raise ConfigError(f"env.variant: {config.variant!r} is not allowed; allowed: default")
    if config.drift != "none":
        raise ConfigError(f"env.drift: {config.drift!r} is not allowed; allowed: none")

    def client_params(key):
        del key
        return envs.batch_params(default_params, num_clients)

    def no_drift(key, base_params, round_index):
        del key, round_index
        return base_params

    return ClientEnvs(
        env=env,
        default_params=default_params,
        client_params=client_params,
        drift=no_drift,
        max_episode_steps=int(default_params.max_steps_in_episode),
    )
