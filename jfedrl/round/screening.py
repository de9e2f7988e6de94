"""The server's check of the participants' updates before it aggregates them.

A client that dropped out or returned non-finite params is masked out and keeps
its state from before the round. With `strategy.clip_update_norm` S > 0 every
update is clipped to L2 norm S before any rule sees it, so clipping works with
every strategy. With staleness, an update is measured from the client's
stale start params and applied to the current global params (as A3C applies
stale gradients), scaled by (1 + s)^-a with `federation.staleness_decay` a
(FedAsync, Xie et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jfedrl.round.state import RoundInputs, tree_all_finite, where_clients
from jfedrl.strategies.base import ClientInfo
from jfedrl.strategies.dp import clip_factors


class Screened(NamedTuple):
    """The participants' updates as the strategy receives them, and what was masked."""

    clients: Any
    """The participants' states after the round; a rejected client's is its state before."""
    safe_params: Any
    """Each participant's params (clipped, rebased); the global params where rejected."""
    info: ClientInfo
    """Steps, returns and the mask of accepted updates, for the strategy."""
    finite: jax.Array
    """`[P]` True where the participant's update is accepted."""
    returned: jax.Array
    """`[P]` True where a real participant sent an update (did not drop out)."""
    returns: jax.Array
    """`[P]` each participant's training return at its last real local step."""
    update_norms: jax.Array
    """`[P]` the norm of each update before clipping."""
    last_step: jax.Array | None
    """`[1, P]` each participant's last real local step, or None if all run all."""


def final_values(values: jax.Array, last_step: jax.Array | None) -> jax.Array:
    """A metric `[local_updates, P]` at each participant's last real step, `[P]`."""
    if last_step is None:
        return values[-1]
    return jnp.take_along_axis(values, last_step, axis=0)[0]


def screen_updates(
    global_params: Any,
    inputs: RoundInputs,
    clients: Any,
    local_metrics: dict[str, jax.Array],
    *,
    get_params: Callable[[Any], Any],
    env_steps_per_update: int,
    heterogeneous: bool,
    clip_update_norm: float,
    staleness_decay: float,
) -> Screened:
    """Masks, clips and rebases the participants' updates (pure).

    Args:
        global_params: the global params the round started from.
        inputs: what `Simulator.begin_round` produced for this round.
        clients: the participants' states after local training (leading axis P).
        local_metrics: the participants' metrics, `[local_updates, P]` each; needs
            `train_return`.
        get_params: the algorithm's `get_params` (a client state to its params).
        env_steps_per_update: environment steps of one local update (the FedAvg weight).
        heterogeneous: participants may run unequal local updates (`inputs.num_updates`).
        clip_update_norm: S > 0 clips each update to norm S; 0 leaves updates as they are.
        staleness_decay: a, the FedAsync exponent for stale updates (with staleness).

    Returns:
        The screened updates (`Screened`).
    """
    client_params = jax.vmap(get_params)(clients)
    finite = jnp.logical_and(jax.vmap(tree_all_finite)(client_params), inputs.valid)
    returned = inputs.valid
    if heterogeneous:
        returned = jnp.logical_and(inputs.valid, inputs.num_updates > 0)
        finite = jnp.logical_and(finite, returned)
    start = global_params if inputs.start_params is None else inputs.start_params
    deltas = jax.tree.map(lambda c, g: c - g, client_params, start)
    max_norm = clip_update_norm
    clip_scale, update_norms = clip_factors(client_params, start, max_norm)
    scale = None
    if max_norm > 0:
        scale = clip_scale
        client_params = jax.tree.map(
            lambda g, d: g + d * scale.reshape((-1,) + (1,) * (d.ndim - 1)),
            global_params,
            deltas,
        )
    if inputs.start_params is not None:
        # A stale update moves the current global params, scaled by the FedAsync decay;
        # a fresh one (s = 0) is kept exactly as the synchronous round keeps it.
        factor = (1.0 + inputs.staleness.astype(jnp.float32)) ** -staleness_decay
        factor = factor if scale is None else factor * scale
        rebased = jax.tree.map(
            lambda g, d: g + d * factor.reshape((-1,) + (1,) * (d.ndim - 1)),
            global_params,
            deltas,
        )
        client_params = where_clients(inputs.staleness > 0, rebased, client_params)
    # Rejected clients keep the state they had before the round.
    clients = where_clients(finite, clients, inputs.before)
    last_step = jnp.maximum(inputs.num_updates - 1, 0)[None] if heterogeneous else None
    returns = final_values(local_metrics["train_return"], last_step)
    local_steps = inputs.num_updates.astype(jnp.float32)
    info = ClientInfo(
        num_steps=local_steps * float(env_steps_per_update),
        returns=jnp.where(finite, returns, 0.0),
        mask=finite,
        local_steps=local_steps,
    )
    safe_params = jax.tree.map(
        lambda p, g: jnp.where(finite.reshape((-1,) + (1,) * (p.ndim - 1)), p, g),
        client_params,
        global_params,
    )
    return Screened(
        clients=clients,
        safe_params=safe_params,
        info=info,
        finite=finite,
        returned=returned,
        returns=returns,
        update_norms=update_norms,
        last_step=last_step,
    )
