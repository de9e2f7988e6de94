"""The shards' results put back together as one round's client axis, on the host.

Pure NumPy on host arrays: what `OffloadRunner` hands to `Simulator.aggregate`
after the workers are done, and what it keeps when states come home.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np

from offload.shapes import decode_group, nonfinite_rows, shard_shapes, with_params_jit
from offload.task import Report

log = logging.getLogger("jfedrl.offload")


def rows_of(tree: Any, rows: slice) -> Any:
    """The `rows` of every leaf (client axis first), on the host."""
    return jax.tree.map(lambda x: np.asarray(x)[rows], tree)


def set_rows(full: Any, rows: slice, part: Any) -> Any:
    """A copy of the tree `full` with its `rows` replaced by `part`."""

    def put(whole: np.ndarray, new: np.ndarray) -> np.ndarray:
        whole = np.array(whole, copy=True)
        whole[rows] = new
        return whole

    return jax.tree.map(put, full, part)


def missing(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Metrics of clients that did not train: NaN (aggregate averages them out), or 0."""
    fill = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0
    return np.full(shape, fill, dtype)


def _masked(params: Any, bad: np.ndarray) -> Any:
    """`params` with the rows of rejected clients set to NaN (`aggregate` masks them)."""
    return jax.tree.map(
        lambda p: np.where(bad.reshape((-1,) + (1,) * (p.ndim - 1)), np.nan, p).astype(p.dtype),
        params,
    )


def _shard(simulator, shapes, states: Any, arrays: dict, report: Report, ids: np.ndarray):
    """One returned shard: its clients, metrics, quantisation error and rejected rows."""
    params = decode_group("params", arrays, shapes.new_params, rows=True)
    if any(name.startswith("clients/") for name in arrays):
        states = decode_group("clients", arrays, shapes.new_clients, rows=False)
    metrics = {name: arrays[f"metrics/{name}"] for name in shapes.metrics}
    bad = nonfinite_rows(arrays, len(ids))
    if bad.any():
        log.warning(
            "offload: shard %d returned non-finite values for client(s) %s; "
            "they are left out of this round",
            report.shard,
            ", ".join(str(i) for i in ids[bad]),
        )
        params = _masked(params, bad)
    clients = with_params_jit(simulator.algorithm, states, params, True)
    return jax.device_get(clients), metrics, report.relative_error, bad


def assemble(simulator, slices: list[slice], host, stripped, results: dict) -> tuple:
    """The participants' new states and metrics, padded to the simulator's client axis.

    A lost shard's clients, and any client whose returned values are not
    finite, get NaN params, which `Simulator.aggregate` masks (they keep
    their old state and stay out of the average). Clients whose worker kept
    their states (sticky clients) get this side's last synced copy with
    their new params.

    Args:
        simulator: the requestor's `Simulator`.
        slices: each shard's rows of the participants.
        host: the round's `begin_round` inputs, on the host.
        stripped: the participants' pre-round states, params stripped.
        results: shard -> (arrays, `Report`) for every shard with a valid result.

    Returns:
        The clients, the metrics, the largest quantisation error the workers
        reported, and `[K]` True for each rejected client.
    """
    trees, metric_parts = [], []
    received_error = 0.0
    bad = np.zeros(simulator.num_participants, bool)
    ids = np.asarray(host.ids)
    for shard, rows in enumerate(slices):
        shapes = shard_shapes(simulator, rows.stop - rows.start)
        states = rows_of(stripped, rows)
        if shard in results:
            clients, part, error, bad[rows] = _shard(
                simulator, shapes, states, *results[shard], ids[rows]
            )
            if math.isfinite(error):
                received_error = max(received_error, error)
        else:
            params = jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), shapes.new_params)
            clients = jax.device_get(with_params_jit(simulator.algorithm, states, params, True))
            part = {name: missing(s.shape, s.dtype) for name, s in shapes.metrics.items()}
        trees.append(clients)
        metric_parts.append(part)
    padded = ids.shape[0] - simulator.num_participants
    if padded:
        # Padding slots are masked by `aggregate`; give them their broadcast state.
        trees.append(rows_of(host.clients, slice(simulator.num_participants, None)))
        metric_parts.append(
            {
                name: missing(v.shape[:1] + (padded,) + v.shape[2:], v.dtype)
                for name, v in metric_parts[0].items()
            }
        )
    clients = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *trees)
    clients = jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), clients, host.clients)
    metrics = {
        name: np.concatenate([part[name] for part in metric_parts], axis=1)
        for name in metric_parts[0]
    }
    return clients, metrics, received_error, bad
