"""Robust federated aggregation (RFA): the weighted geometric median of the clients.

Pillutla, Kakade & Harchaoui 2022, "Robust Aggregation for Federated Learning"
(IEEE Transactions on Signal Processing). The aggregate is the point z that
minimises sum_k alpha_k ||x_k - z|| over the valid clients' full parameter
vectors x_k, alpha_k = n_k / n their FedAvg weights. Unlike the mean, it moves
by a bounded amount however far a minority of clients is from the rest (its
breakdown point is 1/2). The paper computes it with the smoothed Weiszfeld
algorithm (its Algorithm 2), run here for a fixed number of steps so that the
rule is one jitted function of static shape:

    z_0 = sum_k alpha_k x_k
    beta_k = alpha_k / max(nu, ||x_k - z_i||)
    z_{i+1} = sum_k beta_k x_k / sum_k beta_k

Defaults follow the authors' RFA code for TensorFlow Federated
(`num_communication_passes=5`, `tolerance=1e-6`).

Numerics (as the rules of `jfedrl.strategies.robust`): the params are scaled
by a power of two (exact) so that every entry is below 2 in magnitude and no
distance or weighted sum can overflow; the weights beta_k are divided by their
largest value before they are summed (the ratios are at most 1); and each
point is written as a reference client plus weighted differences from it, so
that clients which all coincide give exactly their params. Masked clients are
replaced by that reference and weighted 0, never removed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.strategies.base import (
    ClientInfo,
    Params,
    Strategy,
    normalized_weights,
    stateless,
    unflatten,
)
from jfedrl.strategies.geometric_median_config import GeometricMedianConfig
from jfedrl.strategies.robust import scaled_updates


def weiszfeld(
    flat: jax.Array, weights: jax.Array, iterations: int, eps: Any
) -> tuple[jax.Array, jax.Array]:
    """Smoothed Weiszfeld iterations on the rows of `flat` (Pillutla et al. 2022, Alg. 2).

    Args:
        flat: `[K, D]` points, finite where `weights` > 0 and small enough that their
            distances do not overflow (see `geometric_median`).
        weights: `[K]` non-negative weights alpha_k summing to one (0: the row is ignored).
        iterations: the fixed number of steps (>= 1).
        eps: the smoothing nu (> 0), in `flat`'s units.

    Returns:
        The approximate weighted geometric median `[D]` and the final weights
        beta_k / sum_j beta_j `[K]` (0 for ignored rows).
    """
    used = weights > 0
    # The reference point: the first used row (row 0 if none is used; then all weights are 0).
    ref = flat[jnp.argmax(used)]
    diff = jnp.where(used[:, None], flat - ref[None], 0.0)

    def combine(ratios):
        total = ratios.sum()
        share = jnp.where(total > 0, ratios / jnp.where(total > 0, total, 1.0), 0.0)
        return share @ diff, share

    def step(_, carry):
        offset, _ = carry
        distance = jnp.sqrt(jnp.sum(jnp.square(diff - offset[None]), axis=1))
        floor = jnp.maximum(distance, eps)
        nearest = jnp.min(jnp.where(used, floor, jnp.inf))
        # beta_k / max_j beta_j = alpha_k * nearest / floor_k, at most alpha_k <= 1.
        ratios = jnp.where(used, weights * (nearest / floor), 0.0)
        return combine(ratios)

    start = combine(weights)
    offset, share = jax.lax.fori_loop(0, iterations, step, start)
    return ref + offset, share


def geometric_median(
    client_params: Params, weights: jax.Array, mask: jax.Array, iterations: int, eps: Any
) -> tuple[Params, jax.Array]:
    """The weighted geometric median of the valid clients' params, leaf dtypes kept.

    Args:
        client_params: the stacked client params (leading client axis).
        weights: `[K]` raw weights (FedAvg's n_k); masked and non-positive ones count 0.
        mask: `[K]` True for the valid clients.
        iterations: smoothed Weiszfeld steps.
        eps: the smoothing nu, in the params' units.

    Returns:
        The median as one client's pytree, and the final Weiszfeld weights `[K]`.
    """
    alpha = normalized_weights(weights, mask)
    zeros = jax.tree.map(lambda x: jnp.zeros_like(x[0]), client_params)
    # Scaled by 2^-e so every valid entry is below 2 (exact): sums and squares stay finite.
    flat, exponent = scaled_updates(client_params, zeros, alpha > 0)
    # nu in the scaled units, kept a normal float32 so that nu / nu is 1 (never 0 / 0 or inf).
    f32 = jnp.finfo(jnp.float32)
    scaled_eps = jnp.clip(jnp.ldexp(jnp.asarray(eps, jnp.float32), -exponent), f32.tiny, f32.max)
    point, share = weiszfeld(flat, alpha, iterations, scaled_eps)
    first = jax.tree.map(lambda x: x[0], client_params)
    return unflatten(jnp.ldexp(point, exponent), first), share


def rfa(iterations: int, eps: Any) -> Strategy:
    """RFA's aggregation rule: the geometric median weighted by n_k (stateless).

    Args:
        iterations: smoothed Weiszfeld steps (static: the loop's length).
        eps: the smoothing nu (> 0, may be traced).
    """

    def combine(global_params, client_params, info: ClientInfo, key):
        new, share = geometric_median(client_params, info.num_steps, info.mask, iterations, eps)
        return new, {"weights": share, "clients_used": info.mask.sum().astype(jnp.int32)}

    return stateless(combine)


def build(section: GeometricMedianConfig, num_clients: int | None = None) -> Strategy:
    """The `geometric_median` strategy from its config section."""
    return rfa(section.iterations, section.eps)
