"""Norm bounding: FedAvg of the client updates clipped to an L2 norm M.

Sun, Kairouz, Suresh & McMahan 2019, "Can You Really Backdoor Federated
Learning?" (arXiv:1911.07963), section 4 "norm thresholding of updates": the
server scales each update Delta_k = w_k - w_global by min(1, M / ||Delta_k||)
and averages them with FedAvg's weights n_k / n, so a boosted (scaled or model-
replacement) update moves the global params by at most n_k M / n. The paper
fixes M (`bound: fixed`, `max_norm`); `bound: median` sets it each round to
`median_factor` times the median update norm of the valid clients, an adaptive
bound in the spirit of the paper's observation that M must track the honest
updates' norm: fewer than half of the clients cannot raise it.

It differs from the shared `strategy.clip_update_norm`, which clips every
update to a fixed norm in the round's screening, before *any* rule sees it (so
it also feeds Krum or the median clipped updates); `norm_bound` is itself the
rule, with the median-adaptive option and its own metrics. (The paper's "weak
differential privacy" noise is `dp_fedavg`'s, with equal weights.)

Not in the seeds: one of the robust rules the Byzantine-FL literature
compares against (issue 22). Numerics as `jfedrl.strategies.robust`: the
updates are scaled by a power of two (exact) so that no norm overflows.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights, stateless, unflatten
from jfedrl.strategies.norm_bound_config import NormBoundConfig
from jfedrl.strategies.robust import midpoint, scaled_updates


def masked_median(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The median of `values[mask]` (mean of the two middle ones if even; 0 if none)."""
    n = mask.sum()
    ordered = jnp.sort(jnp.where(mask, values, jnp.inf))
    low, high = jnp.maximum((n - 1) // 2, 0), jnp.maximum(n // 2, 0)
    return jnp.where(n > 0, midpoint(ordered[low], ordered[high]), 0.0)


def update_norms(flat: jax.Array, mask: jax.Array) -> jax.Array:
    """The L2 norm of each valid row of `flat` `[K]` (0 for masked rows)."""
    return jnp.sqrt(jnp.sum(jnp.square(jnp.where(mask[:, None], flat, 0.0)), axis=1))


def bounded_mean(
    flat: jax.Array, weights: jax.Array, norms: jax.Array, bound: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The mean of the rows of `flat` weighted by `weights`, each clipped to norm `bound`.

    Args:
        flat: `[K, D]` rows (finite where `weights` > 0).
        weights: `[K]` non-negative weights (0: the row is ignored).
        norms: `[K]` the rows' L2 norms.
        bound: the norm bound (>= 0), in `flat`'s units.

    Returns:
        The mean `[D]` and the per-row scale min(1, bound / norm) `[K]`.
    """
    scale = jnp.minimum(1.0, bound / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny))
    used = weights > 0
    return (weights * scale) @ jnp.where(used[:, None], flat, 0.0), scale


def norm_bound(max_norm: Any, adaptive: bool = False, median_factor: Any = 1.0) -> Strategy:
    """Norm bounding (Sun et al. 2019), stateless.

    Args:
        max_norm: the fixed bound M (> 0, may be traced), in the params' units.
        adaptive: set M each round to `median_factor` x the median valid update norm.
        median_factor: the multiple of the median norm (> 0, may be traced).
    """

    def combine(global_params, client_params, info: ClientInfo, key):
        weights = normalized_weights(info.num_steps, info.mask)
        flat, exponent = scaled_updates(client_params, global_params, info.mask)
        norms = update_norms(flat, info.mask)
        if adaptive:
            bound = median_factor * masked_median(norms, info.mask)
        else:
            f32 = jnp.finfo(jnp.float32)
            bound = jnp.clip(jnp.ldexp(jnp.asarray(max_norm, jnp.float32), -exponent), 0, f32.max)
        mean, scale = bounded_mean(flat, weights, norms, bound)
        like = jax.tree.map(lambda g: jnp.zeros(g.shape, jnp.float32), global_params)
        update = unflatten(jnp.ldexp(mean, exponent), like)
        new = jax.tree.map(
            lambda g, u: (g.astype(jnp.float32) + u).astype(g.dtype), global_params, update
        )
        n = jnp.maximum(info.mask.sum(), 1)
        metrics = {
            "weights": weights,
            "clipped_fraction": jnp.sum(info.mask & (scale < 1.0)) / n,
            "bound": jnp.ldexp(bound, exponent),
        }
        return new, metrics

    return stateless(combine)


def build(section: NormBoundConfig, num_clients: int | None = None) -> Strategy:
    """The `norm_bound` strategy from its config section."""
    return norm_bound(section.max_norm, section.bound == "median", section.median_factor)
