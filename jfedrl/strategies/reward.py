"""Reward-weighted averaging: better-performing clients count more.

Covers DeRL "Weighted Average" (DeRL on Golem): the global model is the
average of the clients' models weighted by their performance (mean reward).
The seed used the raw rewards as weights, which breaks for negative returns
(Pendulum: every return is negative, so weights are negative and the "average"
leaves the convex hull of the clients) and divides by zero when they sum to
zero. Here the returns are first made non-negative and normalised:

- `min_shift`: w_k = r_k - min_j r_j + eps. Works for any sign, all-equal
  returns give equal weights, and the worst client gets (almost) no weight.
- `softmax`: w_k = exp(r_k / T) / sum_j exp(r_j / T), the Boltzmann weighting
  familiar from reward-weighted regression (Peters & Schaal 2007, "Reinforcement
  Learning by Reward-Weighted Regression for Operational Space Control"); T -> 0
  picks the best client, T -> inf is the plain mean.

Masked clients, and clients whose return is not finite, get weight 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jfedrl.schema.checks import require_choice, require_positive
from jfedrl.strategies.base import ClientInfo, Strategy, keep_if_empty, stateless, weighted_mean
from jfedrl.strategies.reward_config import WEIGHTINGS

MIN_SHIFT_EPS = 1e-6
"""Added to every shifted return so all-equal returns give equal, non-zero weights."""


def reward_weights(
    returns: jax.Array, mask: jax.Array, weighting: str, temperature: float = 1.0
) -> jax.Array:
    """Non-negative weights summing to one over the valid clients (zeros if none).

    Args:
        returns: each client's recent mean return, `[K]`.
        mask: True for valid clients, `[K]`.
        weighting: `min_shift` or `softmax`.
        temperature: softmax temperature (> 0).

    Returns:
        The weights, `[K]`; a client that is masked or has a non-finite return gets 0.
    """
    returns = returns.astype(jnp.float32)
    valid = mask & jnp.isfinite(returns)
    if weighting == "min_shift":
        low = jnp.min(jnp.where(valid, returns, jnp.inf))
        raw = jnp.where(valid, returns - low + MIN_SHIFT_EPS, 0.0)
    elif weighting == "softmax":
        logits = jnp.where(valid, returns / temperature, -jnp.inf)
        high = jnp.max(logits)
        raw = jnp.where(valid, jnp.exp(logits - jnp.where(jnp.any(valid), high, 0.0)), 0.0)
    else:
        raise ValueError(
            f"strategy.reward_weighted.weighting: {weighting!r}; allowed: {WEIGHTINGS}"
        )
    total = raw.sum()
    return jnp.where(total > 0, raw / jnp.where(total > 0, total, 1.0), 0.0)


def reward_weighted(section, num_clients: int | None = None) -> Strategy:
    """The return-weighted mean of the valid clients' params (`strategy.reward_weighted`)."""
    weighting, temperature = section.weighting, section.temperature

    def combine(global_params, client_params, info: ClientInfo, key):
        weights = reward_weights(info.returns, info.mask, weighting, temperature)
        new = weighted_mean(client_params, weights)
        # Valid params but no finite return anywhere: nothing to weight by.
        new = keep_if_empty(weights > 0, new, global_params)
        return new, {"weights": weights}

    return stateless(combine)


def validate(config) -> None:
    section = config.strategy.reward_weighted
    require_choice("strategy.reward_weighted.weighting", section.weighting, WEIGHTINGS)
    require_positive("strategy.reward_weighted.temperature", section.temperature)
