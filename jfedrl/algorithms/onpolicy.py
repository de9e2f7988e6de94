"""The on-policy family (PPO, A2C): one actor-critic, one rollout, one GAE.

Both learners roll out `num_steps x num_envs` steps of the current policy,
bootstrap a time-limit truncation from the value of the final observation,
and turn the rollout into GAE(lambda) advantages (Schulman et al. 2016). Only
their losses and update loops differ (`ppo.loss`, `a2c.loss`). Brax's
`training/acting.generate_unroll` and `agents/ppo/losses.compute_gae` are the
model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jfedrl.algorithms import acting, common, networks


class Transition(struct.PyTreeNode):
    """One step of every environment, as the losses read it."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    """log pi_old(a|s) of the behaviour policy."""
    dist: jax.Array
    """The behaviour policy's distribution parameters (for KL terms)."""
    value: jax.Array
    reward: jax.Array
    """The reward, plus gamma V(final obs) where a time limit cut the episode."""
    done: jax.Array


class Setup(NamedTuple):
    """What an on-policy learner acts with: its env, its actor-critic, its action map."""

    env: Any
    network: networks.ActorCritic
    env_action: Callable[[jax.Array], jax.Array]
    """Sampled action -> the env's action: clipped to a Box's bounds, else unchanged."""


def setup(env, env_params, section: Any) -> Setup:
    """The actor-critic for `env` from a section's `hidden_sizes` and `activation`."""
    network = networks.ActorCritic(
        common.action_dim(env, env_params),
        common.is_continuous(env, env_params),
        len(env.observation_space(env_params).shape),
        tuple(section.hidden_sizes),
        section.activation,
    )
    if network.continuous:
        low, high = common.action_bounds(env, env_params)
        return Setup(env, network, lambda action: jnp.clip(action, low, high))
    return Setup(env, network, lambda action: action)


def init_fields(
    key: jax.Array,
    agent: Setup,
    optimizer: optax.GradientTransformation,
    env_params: Any,
    num_envs: int,
) -> dict[str, Any]:
    """The fields every on-policy client state starts with: params, optimiser, envs."""
    key_net, key_env = jax.random.split(key)
    obs_shape = agent.env.observation_space(env_params).shape
    params = agent.network.init(key_net, jnp.zeros(obs_shape, jnp.float32))
    carry = acting.reset(key_env, agent.env, env_params, num_envs)
    return {"params": params, "opt_state": optimizer.init(params), **carry._asdict()}


def rollout(
    key: jax.Array, agent: Setup, state: Any, env_params: Any, num_steps: int, gamma: float
) -> tuple[Any, Transition, jax.Array]:
    """`num_steps` steps of the policy in `state.params` on the state's envs.

    Returns:
        The state with its env fields advanced, the `[num_steps, num_envs]`
        transitions and the number of episodes that ended.
    """
    network, continuous = agent.network, agent.network.continuous

    def step(carry, step_key):
        key_act, key_env = jax.random.split(step_key)
        dist, value = network.apply(state.params, carry.obs)
        action = networks.sample(key_act, dist, continuous)
        log_prob = networks.log_prob(dist, action, continuous)
        new, out = acting.step(key_env, agent.env, env_params, carry, agent.env_action(action))
        cut = jnp.logical_and(out.truncated, jnp.logical_not(out.terminated))
        transition = Transition(carry.obs, action, log_prob, dist, value, out.reward, out.done)
        return new, (transition, out.final_obs, cut)

    carry = acting.carry_of(state)
    keys = jax.random.split(key, num_steps)
    carry, (batch, final_obs, cut) = jax.lax.scan(step, carry, keys)
    # A time limit is not a terminal state: bootstrap from the final observation.
    # The params are fixed during the rollout, so the critic of every step's final
    # observation is one batched pass after the scan, not a small one per step.
    final_value = network.apply(state.params, final_obs, method=networks.ActorCritic.value)
    batch = batch.replace(reward=batch.reward + gamma * jnp.where(cut, final_value, 0.0))
    return state.replace(**carry._asdict()), batch, jnp.sum(batch.done)


def compute_gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    last_value: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    """GAE(lambda) over a `[T, ...]` rollout; lambda = 1 gives n-step returns.

    Args:
        rewards: `[T, ...]` rewards (a truncation's bootstrap already added).
        values: `[T, ...]` V(s_t) of the behaviour network.
        dones: `[T, ...]`; `dones[t]` ends the episode after step t.
        last_value: `[...]` V(s_T), the bootstrap after the last step.
        gamma: discount.
        gae_lambda: GAE parameter; 1 gives the n-step return minus V(s_t).

    Returns:
        `(advantages, returns)` with `returns = advantages + values`.
    """

    def backward(carry, t):
        gae, next_value = carry
        reward, value, done = t
        not_done = 1.0 - done.astype(jnp.float32)
        delta = reward + gamma * next_value * not_done - value
        gae = delta + gamma * gae_lambda * not_done * gae
        return (gae, value), gae

    init = (jnp.zeros_like(last_value), last_value)
    _, adv = jax.lax.scan(backward, init, (rewards, values, dones), reverse=True)
    return adv, adv + values


def advantages(
    network: networks.ActorCritic,
    state: Any,
    batch: Transition,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    """`compute_gae` of a rollout, bootstrapped from V of the state's current obs."""
    last_value = network.apply(state.params, state.obs, method=networks.ActorCritic.value)
    return compute_gae(batch.reward, batch.value, batch.done, last_value, gamma, gae_lambda)


def make_act(agent: Setup) -> Callable[[Any, jax.Array], jax.Array]:
    """The deterministic action (the distribution's mode) for evaluation."""

    def act(params, obs):
        dist, _ = agent.network.apply(params, obs.astype(jnp.float32))
        return agent.env_action(networks.mode(dist, agent.network.continuous))

    return act
