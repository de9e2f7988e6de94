"""The clients' side of a round: who takes part, how much each trains, the training.

Pure functions of keys and arrays, so the jitted round and the offload worker
run the same code. System heterogeneity (per-client local updates, stragglers,
drop-outs) keeps the static scan of `local_updates` steps and masks each
client's surplus steps, so no round recompiles.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.round.state import where_clients

#: Streams folded into the round key for the draws of system heterogeneity and
#: staleness, apart from the round key's `split`, so runs without them draw as before.
SYSTEM_STREAM = 1
STALENESS_STREAM = 2
#: Stream folded into each client's key for `Algorithm.prepare` (apart from its steps').
PREPARE_STREAM = 2**30


def sample_participants(
    key: jax.Array, num_clients: int, count: int, weights: jax.Array | None = None
) -> jax.Array:
    """`count` distinct client ids (sorted), uniformly or proportionally to `weights`."""
    if count == num_clients:
        return jnp.arange(num_clients)
    chosen = jax.random.choice(key, num_clients, (count,), replace=False, p=weights)
    return jnp.sort(chosen)


def client_local_updates(
    run_key: jax.Array,
    round_index: jax.Array,
    *,
    num_clients: int,
    dist: str,
    local_updates: int,
    local_updates_min: int,
    redraw: bool,
) -> jax.Array:
    """Every client's local updates in round `round_index`, `[C]` int32.

    Drawn before stragglers and drop-outs: once per client for the run (from
    `run_key`, the state's key) or, with `redraw`, from the round key.

    Args:
        run_key: the run's key (`FedState.key`).
        round_index: the round (used only with `redraw`).
        num_clients: C.
        dist: `federation.local_updates_dist`; "fixed" gives every client `local_updates`,
            else a uniform integer in `[local_updates_min, local_updates]`.
        local_updates: the most local updates (the scan's static length).
        local_updates_min: the fewest, for a non-fixed `dist`.
        redraw: draw afresh every round rather than once per run.
    """
    if dist == "fixed":
        return jnp.full((num_clients,), local_updates, jnp.int32)
    if redraw:
        key = jax.random.fold_in(jax.random.fold_in(run_key, round_index), SYSTEM_STREAM)
    else:
        key = jax.random.split(run_key, 3)[2]  # apart from the round and drift keys
    key = jax.random.fold_in(key, 0)
    shape = (num_clients,)
    return jax.random.randint(key, shape, local_updates_min, local_updates + 1)


def stragglers_and_dropouts(
    key: jax.Array, counts: jax.Array, straggler_prob: float, dropout_prob: float
) -> jax.Array:
    """The participants' counts after stragglers (partial work) and drop-outs (0).

    A straggler runs a uniform 1..count of its updates; a drop-out runs none and
    returns nothing, so the round masks it out.
    """
    key_straggle, key_partial, key_drop = jax.random.split(jax.random.fold_in(key, 1), 3)
    straggling = jax.random.uniform(key_straggle, counts.shape) < straggler_prob
    partial_work = jax.random.randint(key_partial, counts.shape, 1, counts + 1)
    counts = jnp.where(straggling, partial_work, counts)
    dropped = jax.random.uniform(key_drop, counts.shape) < dropout_prob
    return jnp.where(dropped, 0, counts).astype(jnp.int32)


def local_training(
    algorithm: Algorithm,
    local_updates: int,
    keys: jax.Array,
    clients: Any,
    env_params: Any,
    reference: Reference,
    num_updates: jax.Array | None = None,
    stacked_reference: bool = False,
) -> tuple[Any, dict[str, jax.Array]]:
    """The clients' local work for one round: `local_updates` vmapped updates.

    This is the one training step of the codebase: the simulator calls it
    inside its jitted round and the offload worker calls it on a shard. An
    algorithm's `prepare` (if any) runs first, once.

    Args:
        algorithm: the local learner.
        local_updates: local updates per client this round (the scan's static length).
        keys: one key per client, `[K, 2]`.
        clients: stacked client states (leading axis K).
        env_params: stacked environment params (leading axis K).
        reference: the broadcast global params (and peers), shared by all.
        num_updates: optional `[K]` updates each client really runs (<= local_updates).
            Client k's steps from `num_updates[k]` on are computed and discarded, so its
            state is exactly the state after its last real step. None: all run all.
        stacked_reference: `reference.global_params` has a leading client axis (each
            client regularises towards the params it started from; staleness).

    Returns:
        The new client states and metrics of shape `[local_updates, K]` (a client's
        metrics after its last real step belong to discarded steps).
    """
    reference_axes = Reference(0, None, None) if stacked_reference else None
    update = jax.vmap(algorithm.local_update, in_axes=(0, 0, 0, reference_axes))
    if algorithm.prepare is not None:
        prepare = jax.vmap(algorithm.prepare, in_axes=(0, 0, 0, reference_axes))
        prepare_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, PREPARE_STREAM)
        clients = prepare(prepare_keys, clients, env_params, reference)

    def one_update(clients, index):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, index)
        new, metrics = update(step_keys, clients, env_params, reference)
        if num_updates is not None:
            new = where_clients(index < num_updates, new, clients)
        return new, metrics

    return jax.lax.scan(one_update, clients, jnp.arange(local_updates))
