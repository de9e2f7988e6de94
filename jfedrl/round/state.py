"""The simulator's state, one round's inputs, and the pytree helpers of the round.

`FedState` is everything a run carries from round to round (a checkpoint is
exactly this tree); `RoundInputs` is what `Simulator.begin_round` hands to local
training, in process or on an offload worker. The helpers act on trees whose
leaves lead with a client axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jfedrl.algorithms.base import Reference


class RoundInputs(NamedTuple):
    """What one round's local training needs; also what an offload task carries."""

    ids: jax.Array
    """The participating client ids, `[P]`: K sampled ids (sorted), then padding."""
    valid: jax.Array
    """`[P]` True for the K real participants, False for padding (P is a multiple of
    the device count, so the client axis shards evenly; padding is masked out)."""
    before: Any
    """The participants' states before the round (restored if an update is rejected)."""
    clients: Any
    """The participants' states with the global params broadcast in."""
    env_params: Any
    client_keys: jax.Array
    reference: Reference
    """The broadcast: global params (stacked per client, `[P, ...]`, with staleness:
    each client's own stale global), peers and their weights."""
    key_aggregate: jax.Array
    num_updates: jax.Array
    """`[P]` int32 local updates each participant really runs this round (0: dropped out)."""
    staleness: jax.Array
    """`[P]` int32 rounds by which each participant's start params are stale (0: fresh)."""
    start_params: Any = None
    """With staleness, the global params each participant started from, stacked; else None."""


class FedState(struct.PyTreeNode):
    """The whole simulator state; a checkpoint is exactly this tree."""

    global_params: Any
    server_state: Any
    clients: Any
    """Every client's algorithm state, stacked on a leading client axis."""
    env_params: Any
    """Every client's base environment params, stacked (drift is applied on top)."""
    peer_params: Any
    """Last round's client params (for mixture-KL communication), or ()."""
    peer_weights: jax.Array
    round: jax.Array
    key: jax.Array
    global_history: Any = ()
    """With `federation.staleness` k > 0, a ring buffer of the last k + 1 global params,
    stacked: slot `r % (k + 1)` holds the global params after r rounds; else ()."""


def initial_history(global_params: Any, staleness: int) -> Any:
    """The staleness ring buffer at the start: `staleness + 1` copies of the params.

    Empty (`()`) without staleness, so a synchronous state carries nothing extra.
    """
    slots = staleness + 1
    if slots == 1:
        return ()
    return jax.tree.map(lambda x: jnp.stack([x] * slots), global_params)


def tree_all_finite(tree: Any) -> jax.Array:
    """True if every leaf of `tree` is finite everywhere (a scalar bool array)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def inexact_finite(tree: Any) -> jax.Array:
    """True if every float leaf of `tree` is finite (integer leaves always are)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return tree_all_finite(leaves)


def take_rows(tree: Any, index: jax.Array) -> Any:
    """The rows `index` of every leaf's leading axis."""
    return jax.tree.map(lambda x: x[index], tree)


def put_rows(tree: Any, index: jax.Array, values: Any) -> Any:
    """`tree` with rows `index` set to `values`; out-of-range indices are dropped."""
    return jax.tree.map(lambda x, v: x.at[index].set(v, mode="drop"), tree, values)


def where_clients(condition: jax.Array, new: Any, old: Any) -> Any:
    """Per client (leading axis): `new` where `condition[k]`, else `old`."""
    return jax.tree.map(
        lambda n, o: jnp.where(condition.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
    )
