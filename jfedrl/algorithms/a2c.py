"""Synchronous advantage actor-critic (A2C) for one federated client.

Maths: Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement
Learning" (A3C: n-step returns, entropy bonus, shared RMSProp statistics; its
synchronous variant A2C, as in OpenAI Baselines, waits for all actors and takes
one gradient step on their batch); Schulman et al. 2016 (GAE(lambda)); Li et
al. 2020 (FedProx proximal term).

Seed features covered: seed 003 (MARL) trains A3C workers whose gradients
update one shared network and ships the weights to a parent that combines
them. Here the `num_envs` vectorised environments of a client are A3C's
parallel actor-learners made synchronous (the same expected gradient, without
the stale-gradient noise), and the federation plays the parent/child part.
The communication KL to the global policy follows seed 002; the L2 term seed 001.

One `local_update` = `num_steps x num_envs` environment steps (the n-step
rollout), then ONE gradient step on the whole batch. With `gae_lambda = 1`
the advantage is exactly the n-step return minus the value (A3C's
`R = r_t + gamma R` backward recursion bootstrapped from V(s_{t+n})); with
`gae_lambda < 1` it is GAE. Discrete (categorical) and continuous (diagonal
Gaussian) actions share `networks.ActorCritic`. Federation: `get_params` is
the whole actor-critic; the optimiser statistics stay on the client.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jfedrl.algorithms import common, networks
from jfedrl.algorithms.base import Algorithm, AlgorithmSpec, Reference
from jfedrl.config import A2CConfig, Config, schedule_horizon


class A2CState(struct.PyTreeNode):
    """Everything one client carries between local updates."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    """Return of the running episode, per environment."""
    last_return: jax.Array
    """Return of the last finished episode, per environment (0 before any)."""


class Transition(struct.PyTreeNode):
    obs: jax.Array
    action: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array


def validate(config: Config) -> None:
    """Checks the `algo.a2c` section; raises `ConfigError` naming the field."""
    a2c = config.algo.a2c
    for name in ("num_envs", "num_steps"):
        common.require(getattr(a2c, name) >= 1, f"algo.a2c.{name}", ">= 1", getattr(a2c, name))
    for name in ("learning_rate", "max_grad_norm"):
        common.require(getattr(a2c, name) > 0, f"algo.a2c.{name}", "> 0", getattr(a2c, name))
    common.require(0.0 < a2c.gamma <= 1.0, "algo.a2c.gamma", "in (0, 1]", a2c.gamma)
    common.require(0.0 <= a2c.gae_lambda <= 1.0, "algo.a2c.gae_lambda", "in [0, 1]", a2c.gae_lambda)
    for name in ("ent_coef", "vf_coef", "comm_coef", "prox_mu"):
        common.require(getattr(a2c, name) >= 0, f"algo.a2c.{name}", ">= 0", getattr(a2c, name))
    common.require_layers("algo.a2c.hidden_sizes", a2c.hidden_sizes)
    common.require_choice("algo.a2c.activation", a2c.activation, tuple(networks.ACTIVATIONS))
    common.require_choice("algo.a2c.optimizer", a2c.optimizer, ("rmsprop", "adam"))


def make_optimizer(a2c: A2CConfig, total_gradient_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then RMSProp or Adam.

    RMSProp as in Mnih et al. 2016 and the Baselines / PyTorch A2C: decay 0.99 and
    eps 1e-5 added outside the square root.
    """
    if a2c.anneal_lr:
        lr = optax.linear_schedule(a2c.learning_rate, 0.0, max(total_gradient_steps, 1))
    else:
        lr = a2c.learning_rate
    if a2c.optimizer == "rmsprop":
        step = optax.rmsprop(lr, decay=0.99, eps=1e-5, eps_in_sqrt=False)
    else:
        step = optax.adam(lr, eps=1e-5)
    return optax.chain(optax.clip_by_global_norm(a2c.max_grad_norm), step)


def nstep_advantages(
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


def build(config: Config, env, env_params) -> Algorithm:
    """A2C for `env`; `env_params` is one client's (unbatched) default params."""
    a2c = config.algo.a2c
    continuous = common.is_continuous(env, env_params)
    obs_shape = env.observation_space(env_params).shape
    network = networks.ActorCritic(
        common.action_dim(env, env_params),
        continuous,
        len(obs_shape),
        tuple(a2c.hidden_sizes),
        a2c.activation,
    )
    horizon = schedule_horizon(config.federation)  # fixed at the run's start
    optimizer = make_optimizer(a2c, horizon * config.federation.local_updates)
    batch_size = a2c.num_envs * a2c.num_steps
    if continuous:
        low, high = common.action_bounds(env, env_params)

    def env_action(action):
        return jnp.clip(action, low, high) if continuous else action

    def init(key, client_env_params) -> A2CState:
        key_net, key_env = jax.random.split(key)
        params = network.init(key_net, jnp.zeros(obs_shape, jnp.float32))
        reset_keys = jax.random.split(key_env, a2c.num_envs)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, client_env_params)
        zeros = jnp.zeros((a2c.num_envs,), jnp.float32)
        return A2CState(
            params=params,
            opt_state=optimizer.init(params),
            env_state=env_state,
            obs=obs.astype(jnp.float32),
            episode_return=zeros,
            last_return=zeros,
        )

    def rollout(key, state: A2CState, client_env_params):
        def step(carry, step_key):
            env_state, obs, episode_return, last_return = carry
            key_act, key_env = jax.random.split(step_key)
            dist, value = network.apply(state.params, obs)
            action = networks.sample(key_act, dist, continuous)
            env_keys = jax.random.split(key_env, a2c.num_envs)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(env_keys, env_state, env_action(action), client_env_params)
            reward = reward.astype(jnp.float32)
            done = jnp.logical_or(terminated, truncated)
            # A time limit is not a terminal state: bootstrap from the final observation.
            _, final_value = network.apply(
                state.params, info["final_observation"].astype(jnp.float32)
            )
            cut = jnp.logical_and(truncated, jnp.logical_not(terminated))
            train_reward = reward + a2c.gamma * jnp.where(cut, final_value, 0.0)
            episode_return, last_return = common.track_returns(
                episode_return, last_return, reward, done
            )
            transition = Transition(obs, action, value, train_reward, done)
            carry = (env_state, next_obs.astype(jnp.float32), episode_return, last_return)
            return carry, (transition, done)

        carry = (state.env_state, state.obs, state.episode_return, state.last_return)
        carry, (batch, dones) = jax.lax.scan(step, carry, jax.random.split(key, a2c.num_steps))
        env_state, obs, episode_return, last_return = carry
        state = state.replace(
            env_state=env_state, obs=obs, episode_return=episode_return, last_return=last_return
        )
        return state, batch, jnp.sum(dones)

    def loss_fn(params, batch: Transition, adv, returns, reference: Reference):
        dist, value = network.apply(params, batch.obs)
        log_prob = networks.log_prob(dist, batch.action, continuous)
        if a2c.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = -jnp.mean(log_prob * adv)
        v_loss = 0.5 * jnp.mean((value - returns) ** 2)
        ent = jnp.mean(networks.entropy(dist, continuous))
        comm = jnp.zeros(())
        if a2c.comm_coef > 0:
            ref_dist, _ = network.apply(reference.global_params, batch.obs)
            comm = jnp.mean(networks.kl(jax.lax.stop_gradient(ref_dist), dist, continuous))
        prox = common.prox_term(params, reference.global_params, a2c.prox_mu)
        total = pg_loss + a2c.vf_coef * v_loss - a2c.ent_coef * ent + a2c.comm_coef * comm + prox
        aux = {"pg_loss": pg_loss, "value_loss": v_loss, "entropy": ent, "comm_kl": comm}
        aux["prox"] = prox
        return total, aux

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def local_update(key, state: A2CState, client_env_params, reference: Reference):
        state, batch, episodes = rollout(key, state, client_env_params)
        _, last_value = network.apply(state.params, state.obs)
        adv, returns = nstep_advantages(
            batch.reward, batch.value, batch.done, last_value, a2c.gamma, a2c.gae_lambda
        )
        adv, returns = jax.lax.stop_gradient((adv, returns))
        grads, metrics = grad_fn(state.params, batch, adv, returns, reference)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["train_return"] = jnp.mean(state.last_return)
        metrics["episodes"] = episodes.astype(jnp.float32)
        return state.replace(params=params, opt_state=opt_state), metrics

    def act(params, obs):
        dist, _ = network.apply(params, obs.astype(jnp.float32))
        return env_action(networks.mode(dist, continuous))

    return Algorithm(
        init=init,
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=lambda state, params: state.replace(params=params),
        act=act,
        env_steps_per_update=batch_size,
    )


SPEC = AlgorithmSpec(
    "a2c",
    build,
    "A2C (synchronous A3C): n-step / GAE advantages, entropy, RMSProp or Adam, FedProx",
    validate,
)
