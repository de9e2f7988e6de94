"""A distance filter around a robust centre, in the spirit of FedPG-BR.

Fan, Ma, Dai, Jing, Tan & Low 2021, "Fault-Tolerant Federated Reinforcement
Learning with Theoretical Guarantee" (NeurIPS), Algorithm 1: the server keeps
the agents' gradients that lie within a concentration bound
T = 2 sigma sqrt(V / B) of a robust estimate of the honest mean (a gradient
close to more than half of the others), and averages them; the bound follows
from the honest gradients' variance sigma^2 and the batch size B. Here the
same idea acts on the clients' updates x_k = w_k - w_global:

1. a robust centre c: the coordinate-wise median (`centre: median`) or the
   geometric median (`geometric_median`, 8 smoothed Weiszfeld steps; breakdown
   point 1/2 either way);
2. each valid client's distance d_k = ||x_k - c||;
3. a threshold T: `bound: fixed` takes T = `threshold` (FedPG-BR's bound,
   computed by the user from sigma, V and B, in the params' units);
   `bound: median_distance` takes T = `factor` x median_k d_k, which needs no
   variance bound and scales with the honest updates (with the factor >= 1 it
   keeps at least half of the clients);
4. the next global params: w_global + the FedAvg (n_k) mean of the kept
   updates (d_k <= T) — or, if more than half of the valid clients would be
   dropped, w_global + c (the centre is robust where the filter cannot tell).

The strategy metric `selected` is the `[K]` mask of the clients averaged
(none in a fallback round, metric `fallback`), so the attack metrics can count
the malicious clients let through and the benign ones dropped.

Not in the seeds: FedPG-BR is the reference setting of Byzantine federated
RL (issue 22). Unlike FedPG-BR it filters whole local updates once per round,
not gradients with variance-reduced steps, and it needs no known sigma.
Numerics as `jfedrl.strategies.robust` (power-of-two scaling, masked clients
weighted 0, never removed).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights, stateless, unflatten
from jfedrl.strategies.frl_filter_config import FRLFilterConfig
from jfedrl.strategies.geometric_median import weiszfeld
from jfedrl.strategies.norm_bound import masked_median, update_norms
from jfedrl.strategies.robust import midpoint, scaled_updates, sort_clients

GEOMETRIC_MEDIAN_STEPS = 8
"""Smoothed Weiszfeld steps of `centre: geometric_median`."""


def robust_centre(flat: jax.Array, mask: jax.Array, geometric: bool) -> jax.Array:
    """The coordinate-wise or geometric median `[D]` of the valid rows of `flat`."""
    if geometric:
        weights = normalized_weights(jnp.ones(flat.shape[0], jnp.float32), mask)
        safe = jnp.where(mask[:, None], flat, 0.0)
        centre, _ = weiszfeld(safe, weights, GEOMETRIC_MEDIAN_STEPS, jnp.finfo(jnp.float32).tiny)
        return centre
    n = mask.sum()
    low, high = jnp.maximum((n - 1) // 2, 0), jnp.maximum(n // 2, 0)
    ordered = sort_clients(flat, mask)
    return midpoint(ordered[low], ordered[high])


def filter_clients(
    flat: jax.Array, mask: jax.Array, threshold: jax.Array | None, factor: Any, geometric: bool
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """The filter's decision on the rows of `flat`.

    Args:
        flat: `[K, D]` updates (finite where `mask`).
        mask: `[K]` the valid rows.
        threshold: a fixed T in `flat`'s units, or None for `factor` x the median distance.
        factor: the multiple of the median distance (used when `threshold` is None).
        geometric: the centre is the geometric median (else the coordinate median).

    Returns:
        The centre `[D]`, the distances `[K]`, T, the kept rows `[K]` and whether
        the round falls back to the centre (more than half of the valid rows dropped).
    """
    centre = robust_centre(flat, mask, geometric)
    distances = update_norms(flat - centre[None], mask)
    bound = factor * masked_median(distances, mask) if threshold is None else threshold
    kept = mask & (distances <= bound)
    fallback = 2 * kept.sum() < mask.sum()
    return centre, distances, bound, kept, fallback


def frl_filter(factor: Any, threshold: Any = None, geometric: bool = False) -> Strategy:
    """The filter rule, stateless.

    Args:
        factor: T = factor x the median distance (> 0, may be traced) when `threshold`
            is None.
        threshold: a fixed T (> 0, may be traced) in the params' units, or None.
        geometric: measure from the geometric median instead of the coordinate median.
    """

    def combine(global_params, client_params, info: ClientInfo, key):
        flat, exponent = scaled_updates(client_params, global_params, info.mask)
        fixed = None
        if threshold is not None:
            f32 = jnp.finfo(jnp.float32)
            fixed = jnp.clip(jnp.ldexp(jnp.asarray(threshold, jnp.float32), -exponent), 0, f32.max)
        centre, distances, bound, kept, fallback = filter_clients(
            flat, info.mask, fixed, factor, geometric
        )
        selected = kept & ~fallback
        weights = normalized_weights(info.num_steps, selected)
        mean = weights @ jnp.where(selected[:, None], flat, 0.0)
        step = jnp.where(fallback, centre, mean)
        like = jax.tree.map(lambda g: jnp.zeros(g.shape, jnp.float32), global_params)
        update = unflatten(jnp.ldexp(step, exponent), like)
        new = jax.tree.map(
            lambda g, u: (g.astype(jnp.float32) + u).astype(g.dtype), global_params, update
        )
        metrics = {
            "selected": selected,
            "weights": weights,
            "distances": jnp.where(info.mask, jnp.ldexp(distances, exponent), 0.0),
            "threshold": jnp.ldexp(bound, exponent),
            "fallback": fallback.astype(jnp.int32),
        }
        return new, metrics

    return stateless(combine)


def build(section: FRLFilterConfig, num_clients: int | None = None) -> Strategy:
    """The `frl_filter` strategy from its config section."""
    threshold = section.threshold if section.bound == "fixed" else None
    return frl_filter(section.factor, threshold, section.centre == "geometric_median")
