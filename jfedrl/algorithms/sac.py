"""Soft actor-critic (SAC) for one federated client.

Maths: Haarnoja, Zhou, Hartikainen, Tucker, Ha, Tan, Kumar, Zhu, Gupta, Abbeel
& Levine 2018, "Soft Actor-Critic Algorithms and Applications" (arXiv
1812.05905): twin soft Q critics with Polyak-averaged targets, a tanh-squashed
Gaussian actor trained through the reparameterisation trick, and the entropy
temperature alpha learned so that the policy's entropy tracks a target
(-|A| in the paper). Li et al. 2020 for the FedProx proximal term.

    y       = s r + gamma (1 - terminal) (min_i Q'_i(s', a') - alpha log pi(a'|s')),
              a' ~ pi(.|s')                                    (eq. 3 and 5)
    J_Q     = sum_i 1/2 mean (Q_i(s, a) - y)^2
    J_pi    = mean (alpha log pi(a~|s) - min_i Q_i(s, a~)),  a~ = tanh(mu + sigma eps)  (eq. 7)
    J_alpha = mean alpha (-log pi(a~|s) - H_target)                         (eq. 18)

with s = `reward_scaling`. The log-density of the squashed action carries the
change-of-variables correction log pi(a) = log N(u) - sum log(1 - tanh(u)^2)
(appendix C), computed as 2 (log 2 - u - softplus(-2u)) so it never takes the
log of 0. As in Brax (`brax/training/agents/sac/`), the standard deviation is
softplus(.) + 0.001 and alpha is learned as log alpha.

The client-local update is TD3's (`jfedrl.algorithms.td3`): one
`local_update` = `num_steps x num_envs` environment steps (uniformly random
actions until the client has taken `learning_starts` steps, then samples of
the policy), all written to the client's replay buffer
(`jfedrl.algorithms.offpolicy`), then `gradient_steps` updates of the critics,
then the actor (with the critics just updated), then alpha (with the
log-probabilities of the actor's samples before its update), then the target
critics. Updates are masked out during the warm-up. Actions are handled in
normalised units [-1, 1]^d; only the environment sees
`centre + half_range * a`.

Federation: `get_params` / `set_params` carry the online networks,
`{"actor": ..., "critic": ...}`. The target critics and log alpha stay on the
client: the temperature answers the client's own policy entropy, and the
targets follow the client's critics by Polyak averaging (`target_sync:
local`, adopting the broadcast once, before the first update) or are reset to
each broadcast (`global`), as TD3's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jfedrl.algorithms import common, networks, offpolicy, replay
from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.algorithms.networks import ACTIVATIONS
from jfedrl.algorithms.sac_config import SACConfig
from jfedrl.algorithms.sac_config import validate as validate_section
from jfedrl.algorithms.td3 import Critic
from jfedrl.config import Config
from jfedrl.schema.checks import ConfigError
from jfedrl.tree import tree_where

MIN_STD = 1e-3
"""Floor of the policy's standard deviation (Brax's `NormalTanhDistribution`)."""

Transition = offpolicy.Transition


class GaussianActor(nn.Module):
    """The pre-squash Gaussian's mean and standard deviation, each `[..., action_dim]`."""

    action_dim: int
    obs_ndim: int = 1
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        x = obs.reshape(obs.shape[: obs.ndim - self.obs_ndim] + (-1,))
        out = networks.MLP(self.hidden_sizes, 2 * self.action_dim, 0.01, self.activation)(x)
        mean, raw_std = jnp.split(out, 2, axis=-1)
        return mean, jax.nn.softplus(raw_std) + MIN_STD


def squashed_gaussian_sample(
    key: jax.Array, mean: jax.Array, std: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A reparameterised tanh(N(mean, std)) sample and its log-density (Haarnoja et al., app. C).

    Returns:
        The action in (-1, 1)^d and log pi(a) summed over the last axis, with the
        correction -sum log(1 - tanh(u)^2) = -sum 2 (log 2 - u - softplus(-2u)).
    """
    u = mean + std * jax.random.normal(key, mean.shape)
    return jnp.tanh(u), squashed_log_prob(u, mean, std)


def squashed_log_prob(u: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Log pi(tanh(u)) for the pre-squash sample `u` of N(mean, std), summed over the last axis."""
    z = (u - mean) / std
    gaussian = -0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)
    log_det = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.sum(gaussian - log_det, axis=-1)


def soft_q_target(
    reward: jax.Array,
    terminal: jax.Array,
    gamma: Any,
    target_qs: jax.Array,
    next_log_prob: jax.Array,
    alpha: jax.Array,
) -> jax.Array:
    """Y = r + gamma (1 - terminal) (min_i Q'_i(s', a') - alpha log pi(a'|s')) (eq. 3, 5).

    Args:
        reward: `[B]` rewards, already scaled.
        terminal: `[B]` 1 only where the episode terminated (not truncated).
        gamma: discount.
        target_qs: `[num_qs, B]` target critics at a' ~ pi(.|s').
        next_log_prob: `[B]` log pi(a'|s').
        alpha: the entropy temperature.
    """
    soft_value = jnp.min(target_qs, axis=0) - alpha * next_log_prob
    return reward + gamma * (1.0 - terminal) * soft_value


class Networks(NamedTuple):
    """The actor and critic modules and the shapes that map actions to their inputs."""

    actor: GaussianActor
    critic: Critic
    obs_ndim: int
    action_shape: tuple[int, ...]

    def _batch(self, obs: jax.Array) -> tuple[int, ...]:
        return obs.shape[: obs.ndim - self.obs_ndim]

    def sample(self, actor_params: Any, obs: jax.Array, key: jax.Array):
        """`(action, log_prob)`: a squashed sample in the action space's shape."""
        mean, std = self.actor.apply(actor_params, obs)
        action, log_prob = squashed_gaussian_sample(key, mean, std)
        return action.reshape(self._batch(obs) + self.action_shape), log_prob

    def mode(self, actor_params: Any, obs: jax.Array) -> jax.Array:
        """tanh(mean): the deterministic action (evaluation)."""
        mean, _ = self.actor.apply(actor_params, obs)
        return jnp.tanh(mean).reshape(self._batch(obs) + self.action_shape)

    def q_values(self, critic_params: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
        """`[num_qs, ...]` Q(s, a) of both critics."""
        ndim = len(self.action_shape)
        flat = action.reshape(action.shape[: action.ndim - ndim] + (self.actor.action_dim,))
        return self.critic.apply(critic_params, obs, flat)


def critic_loss(
    critic_params: Any,
    target_critic: Any,
    actor_params: Any,
    log_alpha: jax.Array,
    batch: Transition,
    key: jax.Array,
    reference: Reference,
    *,
    nets: Networks,
    sac: SACConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_i 1/2 mean (Q_i(s, a) - y)^2 + mu/2 ||phi - phi_global||^2, y = `soft_q_target`.

    Returns:
        The total loss and its parts (`critic_loss` = the TD term, `q_mean` of Q_1).
    """
    next_action, next_log_prob = nets.sample(actor_params, batch.next_obs, key)
    target_qs = nets.q_values(target_critic, batch.next_obs, next_action)
    alpha = jnp.exp(log_alpha)
    reward = sac.reward_scaling * batch.reward
    target = soft_q_target(reward, batch.terminal, sac.gamma, target_qs, next_log_prob, alpha)
    target = jax.lax.stop_gradient(target)
    qs = nets.q_values(critic_params, batch.obs, batch.action)
    td_loss = 0.5 * jnp.sum(jnp.mean((qs - target[None]) ** 2, axis=-1))
    prox = common.prox_term(critic_params, reference.global_params["critic"], sac.prox_mu)
    return td_loss + prox, {"critic_loss": td_loss, "q_mean": jnp.mean(qs[0])}


def actor_loss(
    actor_params: Any,
    critic_params: Any,
    log_alpha: jax.Array,
    batch: Transition,
    key: jax.Array,
    reference: Reference,
    *,
    nets: Networks,
    sac: SACConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean (alpha log pi(a~|s) - min_i Q_i(s, a~)) + mu/2 ||w - w_global||^2 (eq. 7).

    Returns:
        The total loss and its parts (`actor_loss`, `entropy` = -mean log pi, and
        `log_prob`, the per-sample log-densities for the temperature's loss).
    """
    action, log_prob = nets.sample(actor_params, batch.obs, key)
    q = jnp.min(nets.q_values(critic_params, batch.obs, action), axis=0)
    alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))
    policy_loss = jnp.mean(alpha * log_prob - q)
    prox = common.prox_term(actor_params, reference.global_params["actor"], sac.prox_mu)
    aux = {"actor_loss": policy_loss, "entropy": -jnp.mean(log_prob), "log_prob": log_prob}
    return policy_loss + prox, aux


def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: Any) -> jax.Array:
    """Mean alpha (-log pi - H_target), gradient in log alpha only (eq. 18, as Brax)."""
    return jnp.mean(jnp.exp(log_alpha) * jax.lax.stop_gradient(-log_prob - target_entropy))


class SACState(struct.PyTreeNode):
    """Everything one client carries between local updates."""

    params: Any
    """`{"actor", "critic"}` online networks (federated)."""
    target_critic: Any
    """Target critics (local; see the module docstring)."""
    log_alpha: jax.Array
    """log of the entropy temperature (local)."""
    actor_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any
    buffer: replay.ReplayBuffer
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    last_return: jax.Array
    env_steps: jax.Array
    """Environment steps this client has taken (int32): the warm-up clock."""
    updates: jax.Array
    """Gradient updates this client has applied (int32)."""


def validate(config: Config) -> None:
    """Checks the `algo.sac` section and the env's actions; raises `ConfigError`."""
    validate_section(config.algo.sac, activations=tuple(ACTIVATIONS))
    env, env_params = common.make_env(config)
    if not common.is_continuous(env, env_params):
        raise ConfigError(
            f"algo.name: 'sac' needs continuous actions; {config.env.name} has discrete "
            "actions (use dqn, ppo or a2c)"
        )
    low, high = common.action_bounds(env, env_params)
    if not (jnp.all(jnp.isfinite(low)) and jnp.all(jnp.isfinite(high))):
        raise ConfigError(
            f"algo.name: 'sac' needs a bounded action space (its actor is a scaled tanh); "
            f"{config.env.name} has bounds [{low}, {high}]"
        )


def set_params(state: SACState, params: Any, target_sync: str) -> SACState:
    """Adopts the broadcast; the target critics follow it as `offpolicy.set_params` says."""
    if target_sync == "global":
        target = params["critic"]
    else:
        target = tree_where(state.updates == 0, params["critic"], state.target_critic)
    return state.replace(params=params, target_critic=target)


def build(config: Config, env, env_params) -> Algorithm:
    """SAC for `env`; `env_params` is one client's (unbatched) default params."""
    sac = config.algo.sac
    obs_shape = tuple(env.observation_space(env_params).shape)
    low, high = common.action_bounds(env, env_params)
    centre, half_range = (high + low) / 2.0, (high - low) / 2.0
    action_shape = low.shape
    action_size = common.action_dim(env, env_params)
    target_entropy = -sac.target_entropy_scale * action_size
    hidden = tuple(sac.hidden_sizes)
    actor = GaussianActor(action_size, len(obs_shape), hidden, sac.activation)
    critic = Critic(2, len(obs_shape), hidden, sac.activation)
    actor_optimizer = optax.adam(sac.actor_learning_rate)
    critic_optimizer = optax.adam(sac.critic_learning_rate)
    alpha_optimizer = optax.adam(sac.alpha_learning_rate)
    nets = Networks(actor, critic, len(obs_shape), action_shape)

    def to_env(action):
        return jnp.clip(centre + half_range * action, low, high)

    def init(key, client_env_params) -> SACState:
        key_actor, key_critic, key_env = jax.random.split(key, 3)
        obs0 = jnp.zeros(obs_shape, jnp.float32)
        action0 = jnp.zeros(action_shape, jnp.float32)
        params = {
            "actor": actor.init(key_actor, obs0),
            "critic": critic.init(key_critic, obs0, action0.reshape(-1)),
        }
        log_alpha = jnp.log(jnp.asarray(sac.init_alpha, jnp.float32))
        example = Transition(obs0, action0, jnp.zeros(()), obs0, jnp.zeros(()))
        fields = offpolicy.init_fields(
            key_env, env, client_env_params, sac.num_envs, example, sac.buffer_size
        )
        return SACState(
            params=params,
            target_critic=params["critic"],
            log_alpha=log_alpha,
            actor_opt_state=actor_optimizer.init(params["actor"]),
            critic_opt_state=critic_optimizer.init(params["critic"]),
            alpha_opt_state=alpha_optimizer.init(log_alpha),
            **fields,
        )

    def rollout(key, state: SACState, client_env_params):
        def policy(key_policy, key_random, obs, env_steps):
            shape = (sac.num_envs,) + action_shape
            sampled, _ = nets.sample(state.params["actor"], obs, key_policy)
            uniform = jax.random.uniform(key_random, shape, minval=-1.0, maxval=1.0)
            action = jnp.where(env_steps < sac.learning_starts, uniform, sampled)
            return action, to_env(action), ()

        state, episodes, _ = offpolicy.rollout(
            key, state, env, client_env_params, policy, sac.num_steps
        )
        return state, episodes

    critic_grad = jax.grad(functools.partial(critic_loss, nets=nets, sac=sac), has_aux=True)
    actor_grad = jax.grad(functools.partial(actor_loss, nets=nets, sac=sac), has_aux=True)
    alpha_grad = jax.value_and_grad(alpha_loss)

    def step(params, opt_state, grads, optimizer, on):
        deltas, new_opt_state = optimizer.update(grads, opt_state, params)
        new = optax.apply_updates(params, deltas)
        return tree_where(on, new, params), tree_where(on, new_opt_state, opt_state)

    def local_update(key, state: SACState, client_env_params, reference: Reference):
        key_rollout, key_train = jax.random.split(key)
        state, episodes = rollout(key_rollout, state, client_env_params)
        learning = state.env_steps >= sac.learning_starts
        tune = jnp.logical_and(learning, sac.autotune)

        def train_step(carry, step_key):
            params, target, log_alpha, actor_opt, critic_opt, alpha_opt, updates = carry
            key_sample, key_critic, key_actor = jax.random.split(step_key, 3)
            minibatch = replay.sample(key_sample, state.buffer, sac.batch_size)
            grads, critic_aux = critic_grad(
                params["critic"],
                target,
                params["actor"],
                log_alpha,
                minibatch,
                key_critic,
                reference,
            )
            critic_params, critic_opt = step(
                params["critic"], critic_opt, grads, critic_optimizer, learning
            )
            grads, actor_aux = actor_grad(
                params["actor"], critic_params, log_alpha, minibatch, key_actor, reference
            )
            actor_params, actor_opt = step(
                params["actor"], actor_opt, grads, actor_optimizer, learning
            )
            log_prob = actor_aux.pop("log_prob")
            loss, grads = alpha_grad(log_alpha, log_prob, target_entropy)
            log_alpha, alpha_opt = step(log_alpha, alpha_opt, grads, alpha_optimizer, tune)
            target = tree_where(learning, common.polyak(critic_params, target, sac.tau), target)
            updates = updates + learning.astype(jnp.int32)
            params = {"actor": actor_params, "critic": critic_params}
            aux = {**critic_aux, **actor_aux, "alpha_loss": loss, "alpha": jnp.exp(log_alpha)}
            return (params, target, log_alpha, actor_opt, critic_opt, alpha_opt, updates), aux

        carry = (
            state.params,
            state.target_critic,
            state.log_alpha,
            state.actor_opt_state,
            state.critic_opt_state,
            state.alpha_opt_state,
            state.updates,
        )
        carry, aux = jax.lax.scan(
            train_step, carry, jax.random.split(key_train, sac.gradient_steps)
        )
        params, target, log_alpha, actor_opt, critic_opt, alpha_opt, updates = carry
        metrics = jax.tree.map(jnp.mean, aux)
        metrics.update(offpolicy.round_metrics(state, learning, episodes))
        state = state.replace(
            params=params,
            target_critic=target,
            log_alpha=log_alpha,
            actor_opt_state=actor_opt,
            critic_opt_state=critic_opt,
            alpha_opt_state=alpha_opt,
            updates=updates,
        )
        return state, metrics

    def act(params, obs):
        return to_env(nets.mode(params["actor"], obs.astype(jnp.float32)))

    return Algorithm(
        init=init,
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=functools.partial(set_params, target_sync=sac.target_sync),
        act=act,
        env_steps_per_update=sac.num_envs * sac.num_steps,
    )
