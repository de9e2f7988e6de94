"""Deep Q-learning for one federated client, with double and dueling switches.

Maths: Mnih et al. 2015, "Human-level control through deep reinforcement
learning" (experience replay, target network, epsilon-greedy, error clipping
as a Huber loss); van Hasselt, Guez & Silver 2016, "Deep Reinforcement Learning
with Double Q-learning" (the online network picks the next action, the target
network evaluates it); Wang et al. 2016, "Dueling Network Architectures for
Deep Reinforcement Learning" (Q = V + A - mean_a A); Li et al. 2020 (FedProx
proximal term).

Features of the systems this replaces: Oneagent: DQN vanilla / double / dueling;
RLlab FRL's federated Q-learning objective with the L2 (FedProx) regulariser
towards the global Q-network, and its argument for a per-client replay buffer.

One `local_update` = `num_steps x num_envs` epsilon-greedy environment steps,
all written to the client's replay buffer, then `gradient_steps` Adam updates
on uniformly sampled minibatches (masked out until the client has taken
`learning_starts` steps). Time-limit truncation is not a terminal state: the
buffer stores the true next observation (`info["final_observation"]`) and
bootstraps from it unless the episode terminated.

Federation: `get_params` / `set_params` carry the online Q-network only. The
target network never leaves the client. With `target_sync = "global"` (the
default) it is reset to the new global params at every broadcast: all
clients then regress towards the same consensus bootstrap target, which
limits client drift, and the target is never older than one round (a round of
local work then resembles one iteration of fitted Q-iteration with the global
model). With `"local"` it is kept and only follows the client's own online
network every `target_update_interval` updates (the RLlab FRL pseudo-code); a
client adopts the broadcast as its target once, before its first update, so
the target never starts as an unrelated random network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jfedrl.algorithms import common, networks, offpolicy, replay
from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.algorithms.dqn_config import DQNConfig
from jfedrl.config import Config, schedule_horizon, schedule_restarts
from jfedrl.schema.checks import ConfigError, require_choice, require_positive, require_range
from jfedrl.tree import tree_where


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(
        features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros
    )


def dueling_q(value: jax.Array, advantage: jax.Array) -> jax.Array:
    """Wang et al. 2016, eq. 9: Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').

    Subtracting the mean makes V and A identifiable: mean_a Q(s, a) = V(s).
    """
    return value[..., None] + advantage - jnp.mean(advantage, axis=-1, keepdims=True)


class QNetwork(nn.Module):
    """An MLP Q-network over discrete actions, with an optional dueling head."""

    action_dim: int
    obs_ndim: int = 1
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "relu"
    dueling: bool = False

    def setup(self):
        self.torso = [_dense(size, np.sqrt(2)) for size in self.hidden_sizes]
        if self.dueling:
            self.value_head = _dense(1, 1.0)
            self.advantage_head = _dense(self.action_dim, 1.0)
        else:
            self.q_head = _dense(self.action_dim, 1.0)

    def _features(self, obs):
        # Flatten image-like observations (MinAtar, gridworlds) to a vector.
        x = obs.reshape(obs.shape[: obs.ndim - self.obs_ndim] + (-1,))
        act = networks.ACTIVATIONS[self.activation]
        for layer in self.torso:
            x = act(layer(x))
        return x

    def heads(self, obs):
        """The dueling streams `(V [...], A [..., actions])`."""
        x = self._features(obs)
        return self.value_head(x)[..., 0], self.advantage_head(x)

    def __call__(self, obs):
        if self.dueling:
            return dueling_q(*self.heads(obs))
        return self.q_head(self._features(obs))


def td_target(
    reward: jax.Array,
    terminal: jax.Array,
    gamma: float,
    next_q_target: jax.Array,
    next_q_online: jax.Array | None = None,
) -> jax.Array:
    """One-step bootstrapped Q-learning target.

    Args:
        reward: `[B]` rewards.
        terminal: `[B]` 1 where the episode terminated (not where it was truncated).
        gamma: discount.
        next_q_target: `[B, A]` target-network values of the next observations.
        next_q_online: `[B, A]` online-network values of the next observations, for
            double DQN (van Hasselt et al. 2016); None for the vanilla max target.

    Returns:
        `[B]` r + gamma (1 - terminal) Q_target(s', a*), a* = argmax of the online
        values (double) or of the target values themselves (vanilla).
    """
    chooser = next_q_target if next_q_online is None else next_q_online
    best = jnp.argmax(chooser, axis=-1)
    next_value = jnp.take_along_axis(next_q_target, best[..., None], axis=-1)[..., 0]
    return reward + gamma * (1.0 - terminal) * next_value


def linear_epsilon(steps: jax.Array, start: float, end: float, duration: float) -> jax.Array:
    """Epsilon decayed linearly from `start` to `end` over `duration` steps, then held."""
    fraction = jnp.clip(steps / max(duration, 1.0), 0.0, 1.0)
    return start + fraction * (end - start)


class DQNState(struct.PyTreeNode):
    """Everything one client carries between local updates."""

    params: Any
    """The online Q-network (federated)."""
    target_params: Any
    """The target Q-network (local; see the module docstring)."""
    opt_state: Any
    buffer: replay.ReplayBuffer
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    last_return: jax.Array
    env_steps: jax.Array
    """Environment steps this client has taken (int32): epsilon and warm-up clock."""
    updates: jax.Array
    """Gradient updates this client has applied (int32): the target-update clock."""


def validate(config: Config) -> None:
    """Checks the `algo.dqn` section and the env's actions; raises `ConfigError`."""
    dqn = config.algo.dqn
    path = "algo.dqn"
    common.require_counts(
        path,
        dqn,
        ("num_envs", "num_steps", "gradient_steps", "batch_size", "target_update_interval"),
    )
    common.require_buffer(path, dqn)
    common.require_fields_positive(path, dqn, ("learning_rate", "max_grad_norm"))
    common.require_discount(path, dqn)
    for name in ("epsilon_start", "epsilon_end"):
        require_range(f"{path}.{name}", getattr(dqn, name), 0.0, 1.0)
    frac = dqn.exploration_fraction
    require_range(f"{path}.exploration_fraction", frac, 0.0, 1.0, low_open=True)
    require_range(f"{path}.tau", dqn.tau, 0.0, 1.0, low_open=True)
    require_positive(f"{path}.prox_mu", dqn.prox_mu, strict=False)
    common.require_network(path, dqn)
    require_choice(f"{path}.target_sync", dqn.target_sync, ("global", "local"))
    require_choice(f"{path}.loss", dqn.loss, ("mse", "huber"))
    if common.is_continuous(*common.make_env(config)):
        raise ConfigError(
            f"algo.name: 'dqn' needs discrete actions; {config.env.name} has continuous "
            "actions (use td3, ppo or a2c)"
        )


def loss(
    params: Any,
    target_params: Any,
    batch: offpolicy.Transition,
    reference: Reference,
    *,
    network: QNetwork,
    dqn: DQNConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The DQN loss of one minibatch (minimised), and its parts.

    total = mean l(Q(s, a) - y) + mu/2 ||w - w_global||^2, with y the `td_target`
    (double if `dqn.double`, no gradient) and l the Huber loss or e^2 / 2
    (Mnih et al. 2015; van Hasselt et al. 2016; Li et al. 2020).

    Args:
        params: the online Q-network.
        target_params: the target Q-network.
        batch: replay items, leading axis = sample.
        reference: the broadcast global params (FedProx).
        network: the Q-network module.
        dqn: the DQN config section.

    Returns:
        The total loss and a dict of its parts (`td_loss`, `q_mean`, `prox`).
    """
    q = network.apply(params, batch.obs)
    q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
    next_q_target = network.apply(target_params, batch.next_obs)
    next_q_online = network.apply(params, batch.next_obs) if dqn.double else None
    target = jax.lax.stop_gradient(
        td_target(batch.reward, batch.terminal, dqn.gamma, next_q_target, next_q_online)
    )
    error = q_taken - target
    if dqn.loss == "huber":
        td_loss = jnp.mean(optax.huber_loss(error))
    else:
        td_loss = 0.5 * jnp.mean(error**2)
    prox = common.prox_term(params, reference.global_params, dqn.prox_mu)
    return td_loss + prox, {"td_loss": td_loss, "q_mean": jnp.mean(q_taken), "prox": prox}


def build(config: Config, env, env_params) -> Algorithm:
    """DQN for `env`; `env_params` is one client's (unbatched) default params."""
    dqn = config.algo.dqn
    obs_shape = tuple(env.observation_space(env_params).shape)
    num_actions = common.action_dim(env, env_params)
    network = QNetwork(
        num_actions, len(obs_shape), tuple(dqn.hidden_sizes), dqn.activation, dqn.dueling
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(dqn.max_grad_norm), optax.adam(dqn.learning_rate)
    )
    batch_size = dqn.num_envs * dqn.num_steps
    fed = config.federation
    horizon = schedule_horizon(fed)  # fixed at the run's start (docs/algorithms.md)
    decay_steps = dqn.exploration_fraction * horizon * fed.local_updates * batch_size
    # `--extend restart`: epsilon decays again over each restart's share of its rounds.
    restarted = common.restarted_linear(
        dqn.epsilon_start,
        dqn.epsilon_end,
        decay_steps,
        tuple(
            (first, first + dqn.exploration_fraction * (last - first))
            for first, last in schedule_restarts(fed)
        ),
        fed.local_updates * batch_size,
    )

    def init(key, client_env_params) -> DQNState:
        key_net, key_env = jax.random.split(key)
        obs0 = jnp.zeros(obs_shape, jnp.float32)
        params = network.init(key_net, obs0)
        example = offpolicy.Transition(obs0, jnp.zeros((), jnp.int32), 0.0, obs0, 0.0)
        fields = offpolicy.init_fields(
            key_env,
            env,
            client_env_params,
            dqn.num_envs,
            jax.tree.map(jnp.asarray, example),
            dqn.buffer_size,
        )
        return DQNState(
            params=params, target_params=params, opt_state=optimizer.init(params), **fields
        )

    def rollout(key, state: DQNState, client_env_params):
        def policy(key_explore, key_random, obs, env_steps):
            if restarted is None:
                epsilon = linear_epsilon(env_steps, dqn.epsilon_start, dqn.epsilon_end, decay_steps)
            else:
                epsilon = restarted(env_steps)
            greedy = jnp.argmax(network.apply(state.params, obs), axis=-1)
            random_action = jax.random.randint(key_random, greedy.shape, 0, num_actions)
            explore = jax.random.uniform(key_explore, greedy.shape) < epsilon
            action = jnp.where(explore, random_action, greedy).astype(jnp.int32)
            return action, action, epsilon

        return offpolicy.rollout(key, state, env, client_env_params, policy, dqn.num_steps)

    grad_fn = jax.grad(functools.partial(loss, network=network, dqn=dqn), has_aux=True)

    def local_update(key, state: DQNState, client_env_params, reference: Reference):
        key_rollout, key_train = jax.random.split(key)
        state, episodes, epsilons = rollout(key_rollout, state, client_env_params)
        learning = state.env_steps >= dqn.learning_starts

        def train_step(carry, sample_key):
            params, target_params, opt_state, updates = carry
            minibatch = replay.sample(sample_key, state.buffer, dqn.batch_size)
            grads, aux = grad_fn(params, target_params, minibatch, reference)
            deltas, new_opt_state = optimizer.update(grads, opt_state, params)
            params = tree_where(learning, optax.apply_updates(params, deltas), params)
            opt_state = tree_where(learning, new_opt_state, opt_state)
            updates = updates + learning.astype(jnp.int32)
            sync = jnp.logical_and(learning, updates % dqn.target_update_interval == 0)
            target_params = tree_where(
                sync, common.polyak(params, target_params, dqn.tau), target_params
            )
            return (params, target_params, opt_state, updates), aux

        carry = (state.params, state.target_params, state.opt_state, state.updates)
        (params, target_params, opt_state, updates), aux = jax.lax.scan(
            train_step, carry, jax.random.split(key_train, dqn.gradient_steps)
        )
        metrics = jax.tree.map(jnp.mean, aux)
        metrics["epsilon"] = jnp.mean(epsilons)
        metrics.update(offpolicy.round_metrics(state, learning, episodes))
        state = state.replace(
            params=params, target_params=target_params, opt_state=opt_state, updates=updates
        )
        return state, metrics

    def act(params, obs):
        return jnp.argmax(network.apply(params, obs.astype(jnp.float32)), axis=-1)

    return Algorithm(
        init=init,
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=functools.partial(offpolicy.set_params, target_sync=dqn.target_sync),
        act=act,
        env_steps_per_update=batch_size,
    )
