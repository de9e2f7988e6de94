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


def _mixture_log_prob(stacked_dists, weights, action):
    """Log density of the Gaussian mixture sum_i w_i N(peer i); peers `[P, ..., 2A]`."""
    logp = jax.vmap(log_prob, in_axes=(0, None, None))(stacked_dists, action, True)
    w = jnp.log(jnp.maximum(weights, 1e-30)).reshape((-1,) + (1,) * (logp.ndim - 1))
    return jax.nn.logsumexp(logp + w, axis=0)


def kl_from_mixture_mc(key, stacked_dists, weights, q, num_samples: int):
    """Monte-Carlo KL[sum_i w_i p_i || q] for diagonal Gaussians (no closed form exists).

    The unbiased estimate (1/S) sum_s [log m(a_s) - log q(a_s)] with a_s drawn from
    the mixture m (a component i ~ w, then a ~ p_i), S = `num_samples`. The samples
    do not depend on q, so its gradient is that of -(1/S) sum_s log q(a_s), an
    unbiased estimate of the true gradient (m is a fixed reference).

    Args:
        key: PRNG key of the samples.
        stacked_dists: the components' `concat(mean, log_std)`, `[P, ..., 2A]`.
        weights: mixture weights `[P]` (sum to one).
        q: the other Gaussian, `[..., 2A]`.
        num_samples: S.

    Returns:
        The estimate per state, shape `q.shape[:-1]`.
    """
    key_component, key_noise = jax.random.split(key)
    logits = jnp.log(jnp.maximum(weights, 1e-30))
    batch = q.shape[:-1]
    component = jax.random.categorical(key_component, logits, shape=(num_samples,) + batch)
    chosen = jax.vmap(lambda c: jnp.take_along_axis(stacked_dists, c[None, ..., None], 0)[0])(
        component
    )  # [S, ..., 2A]
    action = sample(key_noise, chosen, True)
    log_m = jax.vmap(_mixture_log_prob, in_axes=(None, None, 0))(stacked_dists, weights, action)
    return jnp.mean(log_m - log_prob(q, action, True), axis=0)


def kl_to_mixture_mc(key, p, stacked_dists, weights, num_samples: int):
    """Monte-Carlo KL[p || sum_i w_i p_i] for diagonal Gaussians (no closed form exists).

    (1/S) sum_s [log p(a_s) - log m(a_s)] with reparameterised samples
    a_s = mean_p + std_p eps_s, so the gradient with respect to p flows through the
    samples too (Kingma & Welling 2014), unbiased like the estimate itself.

    Args:
        key: PRNG key of eps.
        p: the policy's `concat(mean, log_std)`, `[..., 2A]`.
        stacked_dists: the mixture's components, `[P, ..., 2A]`.
        weights: mixture weights `[P]` (sum to one).
        num_samples: S.

    Returns:
        The estimate per state, shape `p.shape[:-1]`.
    """
    action = jax.vmap(lambda k: sample(k, p, True))(jax.random.split(key, num_samples))
    log_m = jax.vmap(_mixture_log_prob, in_axes=(None, None, 0))(stacked_dists, weights, action)
    log_p = jax.vmap(log_prob, in_axes=(None, 0, None))(p, action, True)
    return jnp.mean(log_p - log_m, axis=0)
