"""Averaging rules.

- `fedavg`: weighted by environment steps, p_k = n_k / n (McMahan et al. 2017,
  "Communication-Efficient Learning of Deep Networks from Decentralized Data").
- `mean`: the unweighted mean (DeRL "Average", done once over all clients
  rather than the seed's iterative halving that over-weighted later models).
- `local_only`: no federation, the baseline of personalization papers (e.g. Li
  et al. 2021, "Ditto", Table 2 "Local"): the global params never change and
  are never broadcast, so each client trains only its own model.
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


def local_only(section=None, num_clients: int | None = None) -> Strategy:
    """No federation: the global params stay as initialised; clients keep their own."""

    def aggregate(state, global_params, client_params, info: ClientInfo, key):
        return global_params, state, {}

    return Strategy(init=lambda params: (), aggregate=aggregate, local_only=True)
