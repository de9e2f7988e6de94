"""The strategy interface and the tree maths every strategy shares.

A strategy is a pure pair (optax `GradientTransformation` style):

    init(global_params) -> server_state
    aggregate(server_state, global_params, client_params, info, key)
        -> (new_global_params, new_server_state, metrics)

`client_params` is a pytree whose leaves carry a leading client axis; `info`
holds per-client weights, returns and a participation mask, all of static
shape. Absent or rejected clients are masked, never removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jfedrl.tree import tree_where

Params = Any
ServerState = Any
Metrics = dict[str, jax.Array]


class ClientInfo(NamedTuple):
    """What the server knows about each client this round (leading axis = client)."""

    num_steps: jax.Array
    """Environment steps the client trained on (the FedAvg weight n_k)."""
    returns: jax.Array
    """The client's recent mean training return (fitness for reward-based rules)."""
    mask: jax.Array
    """True where the client participated and its update is valid."""
    local_steps: jax.Array | None = None
    """Local updates the client really ran this round (FedNova's tau_i); None where the
    caller does not know them (rules that need them then use `num_steps`)."""


class Strategy(NamedTuple):
    """A pure aggregation rule."""

    init: Callable[[Params], ServerState]
    aggregate: Callable[
        [ServerState, Params, Params, ClientInfo, jax.Array],
        tuple[Params, ServerState, Metrics],
    ]
    local_only: bool = False
    """True for the no-federation baseline (`local_only`): the simulator broadcasts nothing,
    so every client trains its own params from round to round."""


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: a builder and a validator.

    `build(strategy_config, num_clients)` returns the `Strategy`; `num_clients`
    is the length of the client axis `aggregate` will see (participants per
    round, plus any padding), or None where the caller does not know it. Only
    rules whose server state has a client axis (`evolutionary`) need it.
    `validate(config)` receives the whole `Config` and raises `ConfigError`.
    """

    name: str
    build: Callable[[Any, int | None], Strategy]
    description: str = ""
    validate: Callable[[Any], None] = lambda config: None


def normalized_weights(weights: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked weights summing to one (all zeros if no client is valid)."""
    weights = jnp.where(mask, jnp.maximum(weights, 0.0), 0.0).astype(jnp.float32)
    total = weights.sum()
    return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)


def weighted_mean(client_params: Params, weights: jax.Array) -> Params:
    """sum_k weights_k * params_k, leaf by leaf, in each leaf's dtype."""

    def leaf_mean(x):
        w = weights.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.sum(w * x.astype(jnp.float32), axis=0).astype(x.dtype)

    return jax.tree.map(leaf_mean, client_params)


def flatten_clients(client_params: Params) -> jax.Array:
    """The clients' params as one `[K, D]` float32 matrix (leaves in tree order)."""
    leaves = jax.tree.leaves(client_params)
    return jnp.concatenate([x.reshape(x.shape[0], -1).astype(jnp.float32) for x in leaves], axis=1)


def unflatten(flat: jax.Array, like: Params) -> Params:
    """Inverse of `flatten_clients` for ONE vector `[D]`, cast to `like`'s dtypes."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        out.append(flat[start : start + leaf.size].reshape(leaf.shape).astype(leaf.dtype))
        start += leaf.size
    return jax.tree.unflatten(treedef, out)


def keep_if_empty(mask: jax.Array, new: Params, old: Params) -> Params:
    """Keeps the old global params when no client contributed this round."""
    return tree_where(jnp.any(mask), new, old)


def stateless(
    combine: Callable[[Params, Params, ClientInfo, jax.Array], tuple[Params, Metrics]],
) -> Strategy:
    """A `Strategy` with no server state from `combine(global, clients, info, key)`."""

    def aggregate(state, global_params, client_params, info, key):
        new_params, metrics = combine(global_params, client_params, info, key)
        new_params = keep_if_empty(info.mask, new_params, global_params)
        return new_params, state, metrics

    return Strategy(init=lambda params: (), aggregate=aggregate)
