"""Turns the `env` config section into the clients' environments.

The glue between the config tree and `envs` (which knows nothing of
federation): which environment, each client's `EnvParams` (stacked on a
leading client axis, drawn from the variant), the drift applied every round
inside the jit, and the disturbance wrapper. Every bad setting raises a
`ConfigError` naming the `env.*` field before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

import envs
from envs.registry import did_you_mean
from jfedrl.config import Config, EnvConfig
from jfedrl.schema.checks import ConfigError, require, require_choice, require_positive

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
    param_names: tuple[str, ...] = ()
    """The tunable params (what differs across clients), for logging."""

    def param_table(self, params: Any) -> dict[str, np.ndarray]:
        """`{param: per-client values}` of batched `params`, as host arrays."""
        return {name: np.asarray(getattr(params, name)) for name in self.param_names}


def _check(config: EnvConfig, num_clients: int) -> None:
    """Every check of the `env` section; builds no environment."""
    require_choice("env.name", config.name, envs.names())
    entry = envs.spec(config.name)
    if config.backend and config.backend not in entry.backends:
        allowed = ", ".join(entry.backends) if entry.backends else "'' (not a Brax env)"
        raise ConfigError(
            f"env.backend: {config.backend!r} is not allowed for {config.name}; allowed: {allowed}."
            + did_you_mean(config.backend, entry.backends)
        )
    require_positive("env.max_episode_steps", config.max_episode_steps, strict=False)
    require(config.drift_period >= 1, "env.drift_period", ">= 1", config.drift_period)
    try:
        envs.check_overrides(config.name, config.variant, config.ranges, config.values, num_clients)
        envs.drift.resolve_drift_params(config.name, config.drift, config.drift_params)
        envs.check_disturbance(
            config.name, config.disturbance, config.disturbance_prob, config.disturbance_scale
        )
    except envs.ParamError as error:
        raise ConfigError(f"env.{error.field}: {error.message}") from None


def validate(config: Config) -> None:
    """Validates the `env` section for `federation.num_clients` clients, building nothing.

    Raises:
        ConfigError: naming the field (`env.name`, `env.variant`, `env.ranges`,
            `env.values`, `env.drift_params`, ...) and the allowed values.
    """
    _check(config.env, config.federation.num_clients)


def make_client_envs(config: EnvConfig, num_clients: int) -> ClientEnvs:
    """Builds the clients' environments from the `env` config section."""
    _check(config, num_clients)
    options = {"backend": config.backend} if config.backend else {}
    try:
        env, default_params = envs.make(config.name, **options)
        if config.max_episode_steps:
            default_params = default_params.replace(max_steps_in_episode=config.max_episode_steps)
        env = envs.disturb(
            config.name,
            env,
            config.disturbance,
            config.disturbance_prob,
            config.disturbance_scale,
        )
        drift = envs.make_drift(
            config.name,
            config.drift,
            config.drift_period,
            config.drift_magnitude,
            config.drift_params,
        )
    except envs.ParamError as error:
        raise ConfigError(f"env.{error.field}: {error.message}") from None

    def client_params(key):
        return envs.client_params(
            config.name,
            key,
            num_clients,
            config.variant,
            config.ranges,
            config.values,
            default_params=default_params,
        )

    return ClientEnvs(
        env=env,
        default_params=default_params,
        client_params=client_params,
        drift=drift,
        max_episode_steps=int(default_params.max_steps_in_episode),
        param_names=envs.spec(config.name).tunable_names,
    )
