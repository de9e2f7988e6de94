"""Averaging rules.

- `fedavg`: weighted by environment steps, p_k = n_k / n (McMahan et al. 2017,
  "Communication-Efficient Learning of Deep Networks from Decentralized Data").
- `mean`: the unweighted mean (DeRL "Average", done once over all clients
  rather than the seed's iterative halving that over-weighted later models).
"""

from __future__ import annotations

import jax.numpy as jnp

from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    normalized_weights,
    stateless,
    weighted_mean,
)


def fedavg(section=None, num_clients: int | None = None) -> Strategy:
    """FedAvg: the n_k / n weighted mean of the valid clients' params."""

    def combine(global_params, client_params, info: ClientInfo, key):
        weights = normalized_weights(info.num_steps, info.mask)
        return weighted_mean(client_params, weights), {"weights": weights}

    return stateless(combine)


def mean(section=None, num_clients: int | None = None) -> Strategy:
    """The plain mean of the valid clients' params."""

    def combine(global_params, client_params, info: ClientInfo, key):
        weights = normalized_weights(jnp.ones_like(info.num_steps), info.mask)
        return weighted_mean(client_params, weights), {"weights": weights}

    return stateless(combine)
