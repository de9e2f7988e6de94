"""The environment side of every rollout: reset, one vectorised step, episode returns.

Brax's `training/acting.py` is the model: every algorithm family steps its
`num_envs` environments the same way and differs only in how it picks actions
and what it records (`onpolicy.rollout`, `offpolicy.rollout`). The four fields
of `EnvCarry` live, under the same names, in every client state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jfedrl.algorithms import common


class EnvCarry(NamedTuple):
    """The environment part of a client state, carried through a rollout's scan."""

    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    """Return of the running episode, per environment."""
    last_return: jax.Array
    """Return of the last finished episode, per environment (0 before any)."""


class EnvStep(NamedTuple):
    """What one vectorised step returns besides the new carry, per environment."""

    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    done: jax.Array
    final_obs: jax.Array
    """The observation the step reached, before any auto-reset (bootstraps a truncation)."""


def reset(key: jax.Array, env, env_params: Any, num_envs: int) -> EnvCarry:
    """`num_envs` fresh episodes, with zero returns."""
    reset_keys = jax.random.split(key, num_envs)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
    zeros = jnp.zeros((num_envs,), jnp.float32)
    return EnvCarry(env_state, obs.astype(jnp.float32), zeros, zeros)


def carry_of(state: Any) -> EnvCarry:
    """The `EnvCarry` fields of a client state."""
    return EnvCarry(state.env_state, state.obs, state.episode_return, state.last_return)


def step(
    key: jax.Array, env, env_params: Any, carry: EnvCarry, action: jax.Array
) -> tuple[EnvCarry, EnvStep]:
    """Steps every environment once with `action` (in the env's units)."""
    num_envs = carry.obs.shape[0]
    env_keys = jax.random.split(key, num_envs)
    next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
        env.step, in_axes=(0, 0, 0, None)
    )(env_keys, carry.env_state, action, env_params)
    reward = reward.astype(jnp.float32).reshape((num_envs,))
    done = jnp.logical_or(terminated, truncated)
    episode_return, last_return = common.track_returns(
        carry.episode_return, carry.last_return, reward, done
    )
    new = EnvCarry(env_state, next_obs.astype(jnp.float32), episode_return, last_return)
    final_obs = info["final_observation"].astype(jnp.float32)
    return new, EnvStep(reward, terminated, truncated, done, final_obs)
