"""The off-policy family (DQN, TD3): replay-buffer rollouts and local target networks.

Both learners write every step of their `num_envs` environments to the client's
replay buffer, storing the true next observation (`final_observation`) and
`terminal` only where the episode terminated, so a time-limit truncation
bootstraps; both count environment steps (the warm-up clock) and updates, and
keep target networks that never leave the client. Only how they pick actions
and their losses differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jfedrl.algorithms import acting, replay
from jfedrl.tree import tree_where

#: `policy(key_a, key_b, obs, env_steps) -> (action, env_action, extra)`: the action
#: stored in the buffer, the one the env sees, and a per-step scalar to report;
#: `env_steps` counts the client's steps before this one.
Policy = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, Any]]


class Transition(struct.PyTreeNode):
    """One replay-buffer item."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminal: jax.Array
    """1 where the episode terminated (not where a time limit cut it)."""


def init_fields(
    key: jax.Array, env, env_params: Any, num_envs: int, example: Transition, buffer_size: int
) -> dict[str, Any]:
    """The fields every off-policy client state starts with: envs, buffer, clocks."""
    carry = acting.reset(key, env, env_params, num_envs)
    return {
        **carry._asdict(),
        "buffer": replay.init(example, buffer_size),
        "env_steps": jnp.zeros((), jnp.int32),
        "updates": jnp.zeros((), jnp.int32),
    }


def rollout(
    key: jax.Array, state: Any, env, env_params: Any, policy: Policy, num_steps: int
) -> tuple[Any, jax.Array, Any]:
    """`num_steps` steps of `policy` on the state's envs, all written to its buffer.

    Returns:
        The state with its env fields, buffer and `env_steps` advanced, the number
        of episodes that ended, and the policy's extras stacked over steps.
    """
    num_envs = state.obs.shape[0]

    def step(carry, inputs):
        t, step_key = inputs
        key_a, key_b, key_env = jax.random.split(step_key, 3)
        steps = state.env_steps + t * num_envs
        action, env_action, extra = policy(key_a, key_b, carry.obs, steps)
        new, out = acting.step(key_env, env, env_params, carry, env_action)
        terminal = out.terminated.astype(jnp.float32)
        transition = Transition(carry.obs, action, out.reward, out.final_obs, terminal)
        return new, (transition, out.done, extra)

    inputs = (jnp.arange(num_steps), jax.random.split(key, num_steps))
    carry, (batch, dones, extras) = jax.lax.scan(step, acting.carry_of(state), inputs)
    size = num_steps * num_envs
    flat = jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:]), batch)
    state = state.replace(
        **carry._asdict(),
        buffer=replay.add_batch(state.buffer, flat),
        env_steps=state.env_steps + size,
    )
    return state, jnp.sum(dones), extras


def set_params(state: Any, params: Any, target_sync: str) -> Any:
    """Adopts the broadcast; the targets follow it (`global`) or, with `local`, only
    before the client's first update, so they never start as unrelated networks.
    """
    if target_sync == "global":
        target = params
    else:
        target = tree_where(state.updates == 0, params, state.target_params)
    return state.replace(params=params, target_params=target)


def round_metrics(state: Any, learning: jax.Array, episodes: jax.Array) -> dict[str, jax.Array]:
    """The metrics every off-policy update reports besides its losses."""
    return {
        "learning": learning.astype(jnp.float32),
        "train_return": jnp.mean(state.last_return),
        "episodes": episodes.astype(jnp.float32),
    }
