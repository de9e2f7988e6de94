"""Shapes of a shard: what a task and a result of `n` clients hold, derived from the config.

Both sides derive every array name, shape and dtype from the config
(`shard_shapes`), so a result is checked against what the config implies
before it is read. Trees travel as flat groups of arrays (`group/NNNN`),
quantised where `quantize` says so.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import numpy as np

from offload import quantize
from offload.archive import Spec


class ShardShapes(NamedTuple):
    """Abstract trees (shape/dtype structs) of one shard of `n` clients.

    `start_params` (each client's own starting params: aggregation periods or
    staleness) and `num_updates` (per-client local work) are None when the
    config does not need them; with staleness the reference `global_params`
    are per client (`stacked_reference`).
    """

    global_params: Any
    peer_params: Any
    peer_weights: Any
    clients: Any
    """Client states with the params stripped (see `strip_params`)."""
    env_params: Any
    keys: Any
    new_clients: Any
    new_params: Any
    metrics: dict[str, Any]
    start_params: Any = None
    num_updates: Any = None
    stacked_reference: bool = False


def _rows(tree: Any, n: int) -> Any:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((n,) + tuple(s.shape[1:]), s.dtype), tree)


def strip_params(algorithm, clients: Any) -> Any:
    """Stacked client states with each param leaf replaced by a scalar zero.

    The params travel separately (once for the broadcast, quantised on the way
    back), so a task does not carry K copies of the global params.
    """
    one = jax.eval_shape(algorithm.get_params, jax.tree.map(lambda x: x[0], clients))
    dummy = jax.tree.map(lambda s: np.zeros((), s.dtype), one)
    return jax.vmap(algorithm.set_params, in_axes=(0, None))(clients, dummy)


def with_params(algorithm, stripped: Any, params: Any, stacked: bool) -> Any:
    """Puts params back into stripped states (the algorithm's own `set_params`)."""
    return jax.vmap(algorithm.set_params, in_axes=(0, 0 if stacked else None))(stripped, params)


strip_params_jit = jax.jit(strip_params, static_argnums=0)
with_params_jit = jax.jit(with_params, static_argnums=(0, 3))


@lru_cache(maxsize=64)
def shard_shapes(simulator, n: int) -> ShardShapes:
    """What a task and a result of `n` clients hold, for this simulator's config."""
    from jfedrl.round.local import local_training

    algorithm = simulator.algorithm
    state = jax.eval_shape(simulator.init, jax.ShapeDtypeStruct((2,), np.uint32))
    inputs = jax.eval_shape(simulator.begin_round, state)
    clients = _rows(inputs.clients, n)
    env_params = _rows(inputs.env_params, n)
    keys = _rows(inputs.client_keys, n)
    stacked = inputs.start_params is not None
    reference = inputs.reference
    if stacked:
        reference = reference._replace(global_params=_rows(reference.global_params, n))
    num_updates = _rows(inputs.num_updates, n) if simulator.heterogeneous else None
    stripped = jax.eval_shape(partial(strip_params, algorithm), clients)
    new_clients, metrics = jax.eval_shape(
        partial(
            local_training,
            algorithm,
            simulator.config.federation.local_updates,
            stacked_reference=stacked,
        ),
        keys,
        clients,
        env_params,
        reference,
        num_updates,
    )
    per_client_start = stacked or simulator.periodic
    new_params = jax.eval_shape(jax.vmap(algorithm.get_params), new_clients)
    return ShardShapes(
        global_params=reference.global_params,
        peer_params=reference.peer_params,
        peer_weights=reference.peer_weights,
        clients=stripped,
        env_params=env_params,
        keys=keys,
        new_clients=jax.eval_shape(partial(strip_params, algorithm), new_clients),
        new_params=new_params,
        metrics=dict(metrics),
        start_params=new_params if per_client_start else None,
        num_updates=num_updates,
        stacked_reference=stacked,
    )


def shard_config(config: Any, n: int) -> Any:
    """The config of a federation of only `n` clients, all taking part, for `shard_shapes`.

    Every per-client shape is the same in it, so a worker derives a shard's shapes
    without tracing the whole federation (tracing init stacks one row per client:
    minutes and gigabytes for millions of clients). None when that is not smaller, or
    when `env.values` lists one value per client (the config itself is then that long).
    """
    import dataclasses

    fed = config.federation
    clients = max(n, config.offload.shards)
    if config.env.values or clients >= fed.num_clients:
        return None
    # Which clients are Byzantine changes no shape: explicit ids of the full federation
    # would be out of range in the small one.
    attack = dataclasses.replace(config.attack, clients=())
    return dataclasses.replace(
        config,
        federation=dataclasses.replace(
            fed, num_clients=clients, participation=1.0, holdout=0, holdout_fraction=0.0
        ),
        attack=attack,
    )


def with_participants(shapes: ShardShapes, participants: int) -> ShardShapes:
    """`shapes` (from a `shard_config` simulator) with the peer arrays every task carries
    for the real federation: one row per (padded) participant.
    """

    def rows(tree):  # keeps weak types, as the traced federation has them
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(
                (participants,) + tuple(s.shape[1:]), s.dtype, weak_type=s.weak_type
            ),
            tree,
        )

    return shapes._replace(
        peer_params=rows(shapes.peer_params), peer_weights=rows(shapes.peer_weights)
    )


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays an abstract tree describes."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- flat groups

#: Groups of a task / result: (name, field of ShardShapes, quantised, one scale per row).
TASK_GROUPS = (
    ("global", "global_params", True, False),
    ("peers", "peer_params", True, True),
    ("peer_weights", "peer_weights", False, False),
    ("clients", "clients", False, False),
    ("env", "env_params", False, False),
    ("keys", "keys", False, False),
    ("start", "start_params", True, True),
    ("updates", "num_updates", False, False),
)
RESULT_GROUPS = (
    ("clients", "new_clients", False, False),
    ("params", "new_params", True, True),
)


def _leaf_names(group: str, tree: Any) -> list[str]:
    return [f"{group}/{i:04d}" for i in range(len(jax.tree.leaves(tree)))]


def group_spec(group: str, abstract: Any, mode: str, quantised: bool, rows: bool) -> Spec:
    """Encoded names, shapes and dtypes of one group (zero-size leaves are not stored)."""
    spec: Spec = {}
    for name, leaf in zip(_leaf_names(group, abstract), jax.tree.leaves(abstract), strict=True):
        if int(np.prod(leaf.shape)) == 0:
            continue
        spec.update(
            quantize.encoded_spec(
                name, tuple(leaf.shape), leaf.dtype, mode if quantised else "none", rows
            )
        )
    return spec


def encode_group(
    group: str, tree: Any, mode: str, quantised: bool, rows: bool
) -> tuple[dict[str, np.ndarray], quantize.QuantError]:
    """Flattens (and quantises) a tree into `{group/NNNN: array}`."""
    arrays: dict[str, np.ndarray] = {}
    error = quantize.NO_ERROR
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    for name, leaf in zip(_leaf_names(group, tree), leaves, strict=True):
        if leaf.size == 0:
            continue
        encoded, leaf_error = quantize.encode(name, leaf, mode if quantised else "none", rows)
        arrays.update(encoded)
        if quantised:
            error = error + leaf_error
    return arrays, error


def decode_group(group: str, arrays: dict[str, np.ndarray], abstract: Any, rows: bool) -> Any:
    """Rebuilds a tree shaped like `abstract` from its flat (encoded) arrays."""
    leaves = []
    for name, leaf in zip(_leaf_names(group, abstract), jax.tree.leaves(abstract), strict=True):
        if int(np.prod(leaf.shape)) == 0:
            leaves.append(np.zeros(leaf.shape, leaf.dtype))
        else:
            leaves.append(quantize.decode(name, arrays, leaf.dtype, rows))
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def task_spec(shapes: ShardShapes, mode: str, op: str = "train", state: str = "task") -> Spec:
    """The arrays of a task's inputs (a `fetch`, or states kept by the worker, carry fewer)."""
    spec: Spec = {}
    if op == "fetch":
        return spec
    for group, field, quantised, rows in TASK_GROUPS:
        if (group == "clients" and state == "cache") or getattr(shapes, field) is None:
            continue
        rows = rows or (group == "global" and shapes.stacked_reference)
        spec.update(group_spec(group, getattr(shapes, field), mode, quantised, rows))
    return spec


def result_spec(
    shapes: ShardShapes, mode: str, op: str = "train", return_state: bool = True
) -> Spec:
    """The arrays of a result: new params and metrics, plus the states when asked for."""
    spec: Spec = {}
    for group, field, quantised, rows in RESULT_GROUPS:
        if group == "clients" and not (return_state or op == "fetch"):
            continue
        if group == "params" and op == "fetch":
            continue
        spec.update(group_spec(group, getattr(shapes, field), mode, quantised, rows))
    if op == "train":
        for name, leaf in shapes.metrics.items():
            spec[f"metrics/{name}"] = (tuple(leaf.shape), np.dtype(leaf.dtype))
    return spec


def spec_bytes(spec: Spec) -> int:
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())


def max_result_bytes(spec: Spec) -> int:
    """Download cap of a result: twice its arrays plus 1 MiB for metadata and JSON."""
    return 2 * spec_bytes(spec) + (1 << 20) + 4096 * len(spec)


def nonfinite_rows(arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
    """`[n]` True for each client with a non-finite returned state, param or return.

    Quantisation scales (`@scale`) are per client too; metrics are
    `[local_updates, n]`, everything else has the client axis first.
    """
    bad = np.zeros(n, bool)
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            continue
        if name.startswith(("clients/", "params/")) and array.ndim and array.shape[0] == n:
            bad |= ~np.isfinite(array.reshape(n, -1)).all(axis=1)
        elif name == "metrics/train_return":
            bad |= ~np.isfinite(array[-1])
    return bad
