"""Actor-critic networks and the few distribution formulas PPO needs.

Discrete actions: a categorical over logits. Continuous actions: a diagonal
Gaussian with a state-independent log standard deviation. Distribution
parameters are plain arrays so rollouts can store them for KL terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "swish": nn.swish}


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.initializers.orthogonal(scale),
        bias_init=nn.initializers.zeros,
    )


class MLP(nn.Module):
    hidden_sizes: Sequence[int]
    out_features: int
    out_scale: float
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(_dense(size, np.sqrt(2))(x))
        return _dense(self.out_features, self.out_scale)(x)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (as in PureJaxRL and CleanRL PPO)."""

    action_dim: int
    continuous: bool
    obs_ndim: int = 1
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    def setup(self):
        self.actor = MLP(self.hidden_sizes, self.action_dim, 0.01, self.activation)
        self.critic = MLP(self.hidden_sizes, 1, 1.0, self.activation)
        if self.continuous:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    def _flat(self, obs):
        # Flatten image-like observations (MinAtar, gridworlds) to a vector.
        return obs.reshape(obs.shape[: obs.ndim - self.obs_ndim] + (-1,))

    def __call__(self, obs):
        obs = self._flat(obs)
        actor_out = self.actor(obs)
        if self.continuous:
            log_std = jnp.broadcast_to(self.log_std, actor_out.shape)
            actor_out = jnp.concatenate([actor_out, log_std], axis=-1)
        return actor_out, self.critic(obs)[..., 0]

    def value(self, obs):
        """The critic alone (bootstrapping needs no policy)."""
        return self.critic(self._flat(obs))[..., 0]


# Distribution parameters: logits [..., A] (discrete) or concat(mean, log_std) [..., 2A].


def sample(key, dist, continuous: bool):
    if continuous:
        mean, log_std = jnp.split(dist, 2, axis=-1)
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    return jax.random.categorical(key, dist)


def mode(dist, continuous: bool):
    if continuous:
        return jnp.split(dist, 2, axis=-1)[0]
    return jnp.argmax(dist, axis=-1)


def log_prob(dist, action, continuous: bool):
    if continuous:
        mean, log_std = jnp.split(dist, 2, axis=-1)
        z = (action - mean) / jnp.exp(log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
    logp = jax.nn.log_softmax(dist)
    return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(dist, continuous: bool):
    if continuous:
        log_std = jnp.split(dist, 2, axis=-1)[1]
        return jnp.sum(log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e), axis=-1)
    logp = jax.nn.log_softmax(dist)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def kl(p, q, continuous: bool):
    """KL[p || q] in closed form."""
    if continuous:
        mp, lp = jnp.split(p, 2, axis=-1)
        mq, lq = jnp.split(q, 2, axis=-1)
        return jnp.sum(
            lq - lp + (jnp.exp(2 * lp) + (mp - mq) ** 2) / (2 * jnp.exp(2 * lq)) - 0.5,
            axis=-1,
        )
    lp_, lq_ = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
    return jnp.sum(jnp.exp(lp_) * (lp_ - lq_), axis=-1)


def mixture_logits(stacked_logits, weights):
    """Logits of the categorical mixture sum_i w_i pi_i (leading axis = peer)."""
    logp = jax.nn.log_softmax(stacked_logits)
    w = jnp.log(jnp.maximum(weights, 1e-30)).reshape((-1,) + (1,) * (logp.ndim - 1))
    return jax.nn.logsumexp(logp + w, axis=0)
