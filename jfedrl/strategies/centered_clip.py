"""Centred clipping: the Byzantine-robust aggregator of Karimireddy, He & Jaggi.

Karimireddy, He & Jaggi 2021, "Learning from History for Byzantine Robust
Optimization" (ICML), eq. (CC). With the valid clients' updates
x_i = w_i - w_global, a radius tau and a starting centre v_0, it runs a fixed
number L of steps

    v_{l+1} = v_l + (1 / n) sum_i clip_tau(x_i - v_l),
    clip_tau(z) = z * min(1, tau / ||z||),

and the next global params are w_global + v_L. Each client moves the centre by
at most tau / n per step, however far away it is, so a minority of Byzantine
clients shifts the aggregate by a bounded amount; clients within tau of the
centre count exactly as in the mean. In the paper the x_i are the workers'
momenta and v_0 is the previous round's aggregate (its "history"):
`start: previous_update` keeps last round's aggregate update in the server
state and starts from it, `start: global` (the default) starts from no update
(the previous global params), so that a round does not depend on the last one.
The clients count equally (1 / n, as in the paper), whatever their n_k.

Not in the seeds: one of the robust rules the Byzantine-FL literature
compares against (issue 22). Numerics as `jfedrl.strategies.robust`: the
updates are scaled by a power of two (exact) so that no norm overflows, and tau
with them; masked clients are weighted 0, never removed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.strategies.base import (
    ClientInfo,
    Params,
    Strategy,
    flatten_clients,
    normalized_weights,
    unflatten,
)
from jfedrl.strategies.centered_clip_config import CenteredClipConfig
from jfedrl.strategies.robust import scaled_updates
from jfedrl.tree import tree_where


def centered_clip_steps(
    flat: jax.Array, weights: jax.Array, start: jax.Array, tau: Any, iterations: int
) -> tuple[jax.Array, jax.Array]:
    """`iterations` centred-clipping steps on the rows of `flat`.

    Args:
        flat: `[K, D]` updates (finite where `weights` > 0).
        weights: `[K]` non-negative weights summing to one (0: the row is ignored).
        start: `[D]` the first centre v_0.
        tau: the clipping radius (> 0), in `flat`'s units.
        iterations: the number of steps L (static).

    Returns:
        The final centre v_L `[D]` and `[K]` True where the last step clipped the row.
    """
    used = weights > 0

    def step(_, carry):
        v, _ = carry
        diff = jnp.where(used[:, None], flat - v[None], 0.0)
        norms = jnp.sqrt(jnp.sum(jnp.square(diff), axis=1))
        factor = jnp.minimum(1.0, tau / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny))
        return v + (weights * factor) @ diff, used & (norms > tau)

    return jax.lax.fori_loop(0, iterations, step, (start, jnp.zeros(flat.shape[0], bool)))


def centered_clip(tau: Any, iterations: int, from_previous: bool = False) -> Strategy:
    """The centred-clipping rule (Karimireddy et al. 2021).

    Args:
        tau: the clipping radius (> 0, may be traced), in the params' units.
        iterations: the clipping steps L (static).
        from_previous: start from last round's aggregate update (kept in the server
            state) instead of from no update.
    """

    def init(global_params: Params):
        if not from_previous:
            return ()
        return jax.tree.map(lambda g: jnp.zeros(g.shape, jnp.float32), global_params)

    def aggregate(state, global_params, client_params, info: ClientInfo, key):
        weights = normalized_weights(jnp.ones_like(info.num_steps), info.mask)
        flat, exponent = scaled_updates(client_params, global_params, info.mask)
        f32 = jnp.finfo(jnp.float32)
        scaled_tau = jnp.clip(
            jnp.ldexp(jnp.asarray(tau, jnp.float32), -exponent), f32.tiny, f32.max
        )
        if from_previous:
            previous = flatten_clients(jax.tree.map(lambda x: x[None], state))[0]
            start = jnp.ldexp(previous, -exponent)
        else:
            start = jnp.zeros(flat.shape[1], jnp.float32)
        v, clipped = centered_clip_steps(flat, weights, start, scaled_tau, iterations)
        like = jax.tree.map(lambda g: jnp.zeros(g.shape, jnp.float32), global_params)
        update = unflatten(jnp.ldexp(v, exponent), like)
        new = jax.tree.map(
            lambda g, u: (g.astype(jnp.float32) + u).astype(g.dtype), global_params, update
        )
        any_valid = jnp.any(info.mask)
        new = tree_where(any_valid, new, global_params)
        new_state = tree_where(any_valid, update, state) if from_previous else state
        n = jnp.maximum(info.mask.sum(), 1)
        metrics = {
            "clients_used": info.mask.sum().astype(jnp.int32),
            "clipped_fraction": jnp.sum(clipped) / n,
            "update_norm": jnp.ldexp(jnp.sqrt(jnp.sum(jnp.square(v))), exponent),
        }
        return new, new_state, metrics

    return Strategy(init=init, aggregate=aggregate)


def build(section: CenteredClipConfig, num_clients: int | None = None) -> Strategy:
    """The `centered_clip` strategy from its config section."""
    return centered_clip(section.tau, section.iterations, section.start == "previous_update")
