"""The Byzantine set: which clients are malicious, drawn once from the run key.

The set is a pure function of the run key (`FedState.key`), so the jitted round
recomputes it from the state it already carries: a checkpoint holds nothing
new, a resumed run and an offloaded run see the same set, and every seed of a
sweep draws its own. It is fixed for the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

#: Stream folded into the run key's third split for the Byzantine draw (the
#: per-client local-update counts use stream 0 of the same split).
BYZANTINE_STREAM = 1


def byzantine_count(fraction: float, num_clients: int, clients: Sequence[int] = ()) -> int:
    """How many clients are Byzantine: `len(clients)` if given, else floor(fraction·C).

    The floor (with an epsilon for float rounding: 0.3 x 10 is 3) keeps the count
    at most the stated fraction, as the robust rules' guarantees are stated.
    """
    if clients:
        return len(clients)
    return int(math.floor(fraction * num_clients + 1e-9))


def byzantine_key(run_key: jax.Array) -> jax.Array:
    """The key of the Byzantine draw, a stream apart from the round and drift keys."""
    return jax.random.fold_in(jax.random.split(run_key, 3)[2], BYZANTINE_STREAM)


def byzantine_mask(
    run_key: jax.Array, num_clients: int, count: int = 0, ids: Sequence[int] = ()
) -> jax.Array:
    """`[C]` bool: True for the Byzantine clients (pure, jittable).

    Args:
        run_key: the run's key (`FedState.key`).
        num_clients: C.
        count: Byzantine clients drawn uniformly without replacement (ignored if `ids`).
        ids: explicit Byzantine client ids (`attack.clients`).
    """
    if ids:
        return jnp.zeros((num_clients,), bool).at[jnp.asarray(tuple(ids))].set(True)
    if count <= 0:
        return jnp.zeros((num_clients,), bool)
    chosen = jax.random.permutation(byzantine_key(run_key), num_clients)[:count]
    return jnp.zeros((num_clients,), bool).at[chosen].set(True)


def mask_for(attack: Any, num_clients: int, run_key: jax.Array) -> jax.Array:
    """`byzantine_mask` for the `attack` config section."""
    count = byzantine_count(attack.fraction, num_clients, attack.clients)
    return byzantine_mask(run_key, num_clients, count, attack.clients)


def record(attack: Any, num_clients: int, run_key: jax.Array) -> dict[str, Any]:
    """What byzantine.json holds: the attack, the Byzantine ids and from when they attack."""
    import numpy as np

    mask = np.asarray(mask_for(attack, num_clients, run_key))
    ids = [int(i) for i in np.flatnonzero(mask)]
    return {
        "attack": attack.name,
        "start_round": int(attack.start_round),
        "num_clients": int(num_clients),
        "count": len(ids),
        "clients": ids,
        "drawn": not attack.clients,
    }
