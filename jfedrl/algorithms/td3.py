"""Twin delayed DDPG (TD3), and DDPG, for one federated client.

Maths: Fujimoto, van Hoof & Meger 2018, "Addressing Function Approximation
Error in Actor-Critic Methods" (TD3: clipped double-Q target with the minimum
of twin critics, target policy smoothing, delayed policy and target updates);
Lillicrap et al. 2016, "Continuous control with deep reinforcement learning"
(DDPG: deterministic actor, one critic, Polyak-averaged targets); Li et al.
2020 (FedProx proximal term).

Features of the systems this replaces: RLlab FRL federates TD3 on Pendulum and
BipedalWalker and adds to the local losses a penalty towards the global model,
`Q_loss + beta dist(phi, phi_global)` and `mu_loss + beta dist(w, w_global)`:
here `prox_mu` is that L2 distance on the parameters (FedProx) for both actor
and critics, and `comm_coef` is the policy-space version, the mean squared
distance between the local and the global actor's actions (for Gaussian
policies of equal variance around the two actions this is their KL up to a
constant factor). Seed 004 (Oneagent) DDPG is the `ddpg` switch.

Actions are handled in normalised units: the actor outputs tanh(.) in
[-1, 1]^d, the buffer and the critics see those units, and only the
environment sees `centre + half_range * a`. Noise scales (`exploration_noise`,
`policy_noise`, `noise_clip`) and the `comm_coef` distance are therefore in
units of the action half-range, as in Fujimoto et al.'s code (`* max_action`).

One `local_update` = `num_steps x num_envs` environment steps (uniformly
random actions until the client has taken `learning_starts` steps, then
mu(s) + Gaussian noise), all written to the client's replay buffer, then
`gradient_steps` critic updates; every `policy_delay`-th of them also updates
the actor and Polyak-averages the targets. Updates are masked out during the
warm-up. Truncation bootstraps from `info["final_observation"]`.

Federation: `get_params` / `set_params` carry the online networks,
`{"actor": ..., "critic": ...}` (RLlab FRL synchronises both). The targets stay
on the client. With `target_sync = "local"` (the default) they keep following
the client's online networks by Polyak averaging after each broadcast, as in
RLlab FRL's pseudo-code: the target's slowness is what stabilises TD3, and a
target reset each round would make it jump by a whole round's progress. A
client adopts the broadcast as its targets once, before its first update, so
the targets never start as unrelated random networks. With `"global"` they
are reset to the new global params at every broadcast.

Separate periods (RLlab FRL's pseudo-code): RLlab FRL counts critic updates t and
sends the critic every N of them, updates the actor every M (the policy delay)
and sends it every L actor updates, i.e. every M * L critic updates. Here
clients talk to the server only at round ends, and a round is
`local_updates x gradient_steps` critic updates, so `critic_period` and
`actor_period` are those periods in rounds: N / (critic updates per round)
and M * L / (critic updates per round). With `local_updates = 1` and
`gradient_steps = N` they are 1 and M * L / N (an integer when M * L is a
multiple of N, as the seed asks). Between its aggregations a component stays
local: the client keeps training its own copy, and the server keeps the last
aggregate. With N = L = 1 (one critic update per round, `actor_period =
policy_delay`) and one client this is centralised TD3, the seed's claim, which
tests/test_td3_periods.py checks exactly.
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
from jfedrl.algorithms.td3_config import TD3Config
from jfedrl.config import Config
from jfedrl.schema.checks import ConfigError, require_choice, require_range
from jfedrl.tree import tree_where


def _flatten(obs, obs_ndim: int):
    return obs.reshape(obs.shape[: obs.ndim - obs_ndim] + (-1,))


class Actor(nn.Module):
    """Deterministic policy mu(s) in [-1, 1]^d."""

    action_dim: int
    obs_ndim: int = 1
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        x = _flatten(obs, self.obs_ndim)
        return jnp.tanh(networks.MLP(self.hidden_sizes, self.action_dim, 0.01, self.activation)(x))


class Critic(nn.Module):
    """`num_qs` independent Q(s, a) MLPs; returns their values stacked, `[num_qs, ...]`."""

    num_qs: int = 2
    obs_ndim: int = 1
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([_flatten(obs, self.obs_ndim), action], axis=-1)
        qs = [
            networks.MLP(self.hidden_sizes, 1, 1.0, self.activation)(x)[..., 0]
            for _ in range(self.num_qs)
        ]
        return jnp.stack(qs)


def smoothed_target_action(
    target_action: jax.Array, noise: jax.Array, noise_clip: float
) -> jax.Array:
    """Target policy smoothing (Fujimoto et al. 2018, eq. 15).

    Returns clip(mu'(s') + clip(noise, -c, c), -1, 1) in normalised action units,
    with `noise` already scaled (policy_noise * N(0, 1)).
    """
    return jnp.clip(target_action + jnp.clip(noise, -noise_clip, noise_clip), -1.0, 1.0)


def clipped_double_q_target(
    reward: jax.Array, terminal: jax.Array, gamma: float, target_qs: jax.Array
) -> jax.Array:
    """The clipped double-Q target (Fujimoto et al. 2018, eq. 10).

    y = r + gamma (1 - terminal) min_i Q'_i(s', a~).

    Args:
        reward: `[B]` rewards.
        terminal: `[B]` 1 only where the episode terminated (not truncated).
        gamma: discount.
        target_qs: `[num_qs, B]` target critics at the smoothed target action; with
            one critic (DDPG) the minimum is that critic's value.
    """
    return reward + gamma * (1.0 - terminal) * jnp.min(target_qs, axis=0)


class Networks(NamedTuple):
    """The actor and critic modules and the shapes that map actions to their inputs."""

    actor: Actor
    critic: Critic
    obs_ndim: int
    action_shape: tuple[int, ...]

    def mu(self, actor_params: Any, obs: jax.Array) -> jax.Array:
        """Normalised deterministic action, reshaped to the action space's shape."""
        return self.actor.apply(actor_params, obs).reshape(
            obs.shape[: obs.ndim - self.obs_ndim] + self.action_shape
        )

    def q_values(self, critic_params: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
        """`[num_qs, ...]` Q(s, a) of every critic."""
        ndim = len(self.action_shape)
        flat = action.reshape(action.shape[: action.ndim - ndim] + (self.actor.action_dim,))
        return self.critic.apply(critic_params, obs, flat)


def critic_loss(
    critic_params: Any,
    target_params: Any,
    batch: offpolicy.Transition,
    noise: jax.Array,
    reference: Reference,
    *,
    nets: Networks,
    td3: TD3Config,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_i mean (Q_i(s, a) - y)^2 + mu/2 ||phi - phi_global||^2 (Fujimoto et al. 2018).

    y is the `clipped_double_q_target` at the `smoothed_target_action` of the
    target actor with `noise` (already scaled by `policy_noise`); no gradient.

    Returns:
        The total loss and its parts (`critic_loss` = the TD term, `q_mean` of Q_1).
    """
    next_action = smoothed_target_action(
        nets.mu(target_params["actor"], batch.next_obs), noise, td3.noise_clip
    )
    target_qs = nets.q_values(target_params["critic"], batch.next_obs, next_action)
    target = jax.lax.stop_gradient(
        clipped_double_q_target(batch.reward, batch.terminal, td3.gamma, target_qs)
    )
    qs = nets.q_values(critic_params, batch.obs, batch.action)
    td_loss = jnp.sum(jnp.mean((qs - target[None]) ** 2, axis=-1))
    prox = common.prox_term(critic_params, reference.global_params["critic"], td3.prox_mu)
    return td_loss + prox, {"critic_loss": td_loss, "q_mean": jnp.mean(qs[0])}


def actor_loss(
    actor_params: Any,
    critic_params: Any,
    batch: offpolicy.Transition,
    reference: Reference,
    *,
    nets: Networks,
    td3: TD3Config,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-mean Q_1(s, mu(s)) + comm_coef mean ||mu(s) - mu_global(s)||^2 + mu/2 ||w - w_global||^2.

    The communication term is RLlab FRL's policy-space distance to the global actor
    (no gradient into the global actor).

    Returns:
        The total loss and its parts (`actor_loss` = -mean Q_1, `comm_l2`).
    """
    action = nets.mu(actor_params, batch.obs)
    q = nets.q_values(critic_params, batch.obs, action)[0]
    pg_loss = -jnp.mean(q)
    comm = jnp.zeros(())
    if common.switched_on(td3.comm_coef):
        global_action = jax.lax.stop_gradient(nets.mu(reference.global_params["actor"], batch.obs))
        diff = (action - global_action).reshape((batch.obs.shape[0], -1))
        comm = jnp.mean(jnp.sum(diff**2, axis=-1))
    prox = common.prox_term(actor_params, reference.global_params["actor"], td3.prox_mu)
    total = pg_loss + td3.comm_coef * comm + prox
    return total, {"actor_loss": pg_loss, "comm_l2": comm}


class TD3State(struct.PyTreeNode):
    """Everything one client carries between local updates."""

    params: Any
    """`{"actor", "critic"}` online networks (federated)."""
    target_params: Any
    """`{"actor", "critic"}` target networks (local; see the module docstring)."""
    actor_opt_state: Any
    critic_opt_state: Any
    buffer: replay.ReplayBuffer
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    last_return: jax.Array
    env_steps: jax.Array
    """Environment steps this client has taken (int32): the warm-up clock."""
    updates: jax.Array
    """Critic updates this client has applied (int32): the policy-delay clock."""


def validate(config: Config) -> None:
    """Checks the `algo.td3` section and the env's actions; raises `ConfigError`."""
    td3 = config.algo.td3
    path = "algo.td3"
    counts = ("num_envs", "num_steps", "gradient_steps", "batch_size", "policy_delay")
    common.require_counts(path, td3, counts + ("critic_period", "actor_period"))
    common.require_buffer(path, td3)
    common.require_fields_positive(path, td3, ("actor_learning_rate", "critic_learning_rate"))
    common.require_discount(path, td3)
    require_range(f"{path}.tau", td3.tau, 0.0, 1.0, low_open=True)
    names = ("exploration_noise", "policy_noise", "noise_clip", "comm_coef", "prox_mu")
    common.require_fields_positive(path, td3, names, strict=False)
    common.require_network(path, td3)
    require_choice(f"{path}.target_sync", td3.target_sync, ("local", "global"))
    env, env_params = common.make_env(config)
    if not common.is_continuous(env, env_params):
        raise ConfigError(
            f"algo.name: 'td3' needs continuous actions; {config.env.name} has discrete "
            "actions (use dqn, ppo or a2c)"
        )
    low, high = common.action_bounds(env, env_params)
    if not (jnp.all(jnp.isfinite(low)) and jnp.all(jnp.isfinite(high))):
        raise ConfigError(
            f"algo.name: 'td3' needs a bounded action space (its actor is a scaled tanh); "
            f"{config.env.name} has bounds [{low}, {high}]"
        )


def build(config: Config, env, env_params) -> Algorithm:
    """TD3 (or DDPG) for `env`; `env_params` is one client's (unbatched) default params."""
    td3 = config.algo.td3
    obs_shape = tuple(env.observation_space(env_params).shape)
    low, high = common.action_bounds(env, env_params)
    centre, half_range = (high + low) / 2.0, (high - low) / 2.0
    action_shape = low.shape
    action_size = common.action_dim(env, env_params)
    num_qs = 1 if td3.ddpg else 2
    policy_delay = 1 if td3.ddpg else td3.policy_delay
    policy_noise = 0.0 if td3.ddpg else td3.policy_noise
    actor = Actor(action_size, len(obs_shape), tuple(td3.hidden_sizes), td3.activation)
    critic = Critic(num_qs, len(obs_shape), tuple(td3.hidden_sizes), td3.activation)
    actor_optimizer = optax.adam(td3.actor_learning_rate)
    critic_optimizer = optax.adam(td3.critic_learning_rate)
    batch_size = td3.num_envs * td3.num_steps
    nets = Networks(actor, critic, len(obs_shape), action_shape)
    mu = nets.mu

    def to_env(action):
        return jnp.clip(centre + half_range * action, low, high)

    def init(key, client_env_params) -> TD3State:
        key_actor, key_critic, key_env = jax.random.split(key, 3)
        obs0 = jnp.zeros(obs_shape, jnp.float32)
        action0 = jnp.zeros(action_shape, jnp.float32)
        params = {
            "actor": actor.init(key_actor, obs0),
            "critic": critic.init(key_critic, obs0, action0.reshape(-1)),
        }
        example = offpolicy.Transition(obs0, action0, jnp.zeros(()), obs0, jnp.zeros(()))
        fields = offpolicy.init_fields(
            key_env, env, client_env_params, td3.num_envs, example, td3.buffer_size
        )
        return TD3State(
            params=params,
            target_params=params,
            actor_opt_state=actor_optimizer.init(params["actor"]),
            critic_opt_state=critic_optimizer.init(params["critic"]),
            **fields,
        )

    def rollout(key, state: TD3State, client_env_params):
        def policy(key_noise, key_random, obs, env_steps):
            shape = (td3.num_envs,) + action_shape
            noise = td3.exploration_noise * jax.random.normal(key_noise, shape)
            policy = jnp.clip(mu(state.params["actor"], obs) + noise, -1.0, 1.0)
            uniform = jax.random.uniform(key_random, shape, minval=-1.0, maxval=1.0)
            action = jnp.where(env_steps < td3.learning_starts, uniform, policy)
            return action, to_env(action), ()

        state, episodes, _ = offpolicy.rollout(
            key, state, env, client_env_params, policy, td3.num_steps
        )
        return state, episodes

    critic_grad = jax.grad(functools.partial(critic_loss, nets=nets, td3=td3), has_aux=True)
    actor_grad = jax.grad(functools.partial(actor_loss, nets=nets, td3=td3), has_aux=True)

    def local_update(key, state: TD3State, client_env_params, reference: Reference):
        key_rollout, key_train = jax.random.split(key)
        state, episodes = rollout(key_rollout, state, client_env_params)
        learning = state.env_steps >= td3.learning_starts

        def train_step(carry, step_key):
            params, target_params, actor_opt, critic_opt, updates = carry
            key_sample, key_noise = jax.random.split(step_key)
            minibatch = replay.sample(key_sample, state.buffer, td3.batch_size)
            noise = policy_noise * jax.random.normal(key_noise, (td3.batch_size,) + action_shape)
            grads, critic_aux = critic_grad(
                params["critic"], target_params, minibatch, noise, reference
            )
            deltas, new_critic_opt = critic_optimizer.update(grads, critic_opt, params["critic"])
            new_critic = optax.apply_updates(params["critic"], deltas)
            critic_params = tree_where(learning, new_critic, params["critic"])
            critic_opt = tree_where(learning, new_critic_opt, critic_opt)
            updates = updates + learning.astype(jnp.int32)
            # Delayed policy update, with the critic just updated (Fujimoto et al., Alg. 1).
            delayed = jnp.logical_and(learning, updates % policy_delay == 0)
            grads, actor_aux = actor_grad(params["actor"], critic_params, minibatch, reference)
            deltas, new_actor_opt = actor_optimizer.update(grads, actor_opt, params["actor"])
            new_actor = optax.apply_updates(params["actor"], deltas)
            params = {
                "actor": tree_where(delayed, new_actor, params["actor"]),
                "critic": critic_params,
            }
            actor_opt = tree_where(delayed, new_actor_opt, actor_opt)
            target_params = tree_where(
                delayed, common.polyak(params, target_params, td3.tau), target_params
            )
            aux = {**critic_aux, **actor_aux}
            return (params, target_params, actor_opt, critic_opt, updates), aux

        carry = (
            state.params,
            state.target_params,
            state.actor_opt_state,
            state.critic_opt_state,
            state.updates,
        )
        (params, target_params, actor_opt, critic_opt, updates), aux = jax.lax.scan(
            train_step, carry, jax.random.split(key_train, td3.gradient_steps)
        )
        metrics = jax.tree.map(jnp.mean, aux)
        metrics.update(offpolicy.round_metrics(state, learning, episodes))
        state = state.replace(
            params=params,
            target_params=target_params,
            actor_opt_state=actor_opt,
            critic_opt_state=critic_opt,
            updates=updates,
        )
        return state, metrics

    def act(params, obs):
        return to_env(mu(params["actor"], obs.astype(jnp.float32)))

    return Algorithm(
        init=init,
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=functools.partial(offpolicy.set_params, target_sync=td3.target_sync),
        act=act,
        env_steps_per_update=batch_size,
        aggregation_periods=(("actor", td3.actor_period), ("critic", td3.critic_period)),
    )
