"""The server's step of a round: the strategy, and what the state keeps of it.

The strategy aggregates the screened updates; a non-finite aggregate (an
overflowing rule or server optimiser) is rejected and the round keeps the
previous global params and server state (metric `aggregate_rejected`;
`federation.on_rejected_aggregate` decides whether the run goes on). Components with an aggregation
period (RLlab FRL's TD3) keep their global params in the rounds they are not
due. Param groups kept local (FedPer's heads, `Algorithm.local_params`) are
never aggregated: every rule sees the global's own value there, and the global
keeps the participants' weighted mean of them (a model for evaluation and for
new clients, never broadcast). The staleness ring buffer and the peers of
mixture-KL communication are updated here too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.round.state import FedState, inexact_finite
from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights, weighted_mean
from jfedrl.tree import tree_where


def param_path(path: Sequence[Any]) -> str:
    """A params leaf's path as `actor/params/Dense_0/kernel` (what `local` patterns match)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def leaf_periods(periods: Sequence[tuple[str, int]], params: Any, local: str = "") -> Any:
    """Each leaf's aggregation period, as a tree of Python ints shaped like `params`.

    A leaf under a top-level component named in `periods` has that component's
    period; a leaf whose path (`param_path`) matches the regular expression
    `local` has period 0 (never aggregated, never broadcast: FedPer's heads);
    every other leaf has period 1.
    """
    by_name = dict(periods)
    pattern = re.compile(local) if local else None

    def period(path, _):
        if pattern is not None and pattern.search(param_path(path)):
            return 0
        top = getattr(path[0], "key", None) if path else None
        return by_name.get(top, 1)

    return jax.tree_util.tree_map_with_path(period, params)


def component_where(
    periods: Sequence[tuple[str, int]],
    round_index: jax.Array,
    new: Any,
    old: Any,
    local: str = "",
) -> Any:
    """Params whose periodic components come from `new` where due, else from `old`.

    A component with period p is due when `round_index % p == 0`; components
    without a period always come from `new`, local leaves (period 0, see
    `leaf_periods`) never do.

    Args:
        periods: `(component name, period)` pairs (`Algorithm.aggregation_periods`).
        round_index: the round counter the periods are measured on.
        new: params (a dict of components) to take where due.
        old: params to keep where not due (or a stack of them, leading client axis,
            when `new` is one shared tree).
        local: regular expression over the leaf paths kept local (`Algorithm.local_params`).
    """

    def pick(period, n, o):
        if period == 1:
            return jnp.broadcast_to(n, jnp.shape(o)) if jnp.ndim(o) > jnp.ndim(n) else n
        if period == 0:
            return o
        return jnp.where(round_index % period == 0, n, o)

    return jax.tree.map(pick, leaf_periods(periods, new, local), new, old)


def selective(periods: Sequence[tuple[str, int]], local: str) -> bool:
    """True if some leaf is not aggregated every round (a period above 1, or local)."""
    return bool(local) or any(period > 1 for _, period in periods)


def strategy_step(
    strategy: Strategy,
    state: FedState,
    safe_params: Any,
    info: ClientInfo,
    key: jax.Array,
    *,
    periods: Sequence[tuple[str, int]],
    staleness: int,
    needs_peers: bool,
    local: str = "",
) -> tuple[FedState, jax.Array, dict[str, jax.Array]]:
    """Aggregates the screened updates into the server's side of the state (pure).

    Args:
        strategy: the aggregation rule.
        state: the state the round started from.
        safe_params: the participants' screened params (`Screened.safe_params`).
        info: what the server knows of each participant (`Screened.info`).
        key: the round's aggregation key.
        periods: the algorithm's aggregation periods; applied if any exceeds 1.
        staleness: `federation.staleness` k; k > 0 writes the new global params
            into the ring buffer.
        needs_peers: the algorithm reads last round's client params (mixture KL).
        local: regular expression over the leaf paths each client keeps
            (`Algorithm.local_params`, FedPer); "" keeps none.

    Returns:
        `state` with new global params, server state, history and peers (its
        clients and round untouched), whether the aggregate was accepted (a
        scalar bool) and the strategy's metrics.
    """
    shared_params = safe_params
    if local:
        # Local leaves never reach the rule: it sees the global's own value there.
        kinds = leaf_periods(periods, state.global_params, local)
        shared_params = jax.tree.map(
            lambda period, s, g: jnp.broadcast_to(g, s.shape) if period == 0 else s,
            kinds,
            safe_params,
            state.global_params,
        )
    global_params, server_state, strategy_metrics = strategy.aggregate(
        state.server_state, state.global_params, shared_params, info, key
    )
    # A non-finite aggregate (an overflowing rule or server optimiser) is rejected: the
    # round keeps the previous global params and server state, and says so in its metrics.
    aggregate_ok = inexact_finite(global_params)
    global_params = tree_where(aggregate_ok, global_params, state.global_params)
    server_state = tree_where(aggregate_ok, server_state, state.server_state)
    if selective(periods, local):
        # A component not due after this round keeps its global params.
        due = state.round + 1
        global_params = component_where(periods, due, global_params, state.global_params, local)
    if local:
        # The local leaves of the global: the participants' weighted mean (never broadcast).
        weights = normalized_weights(info.num_steps, info.mask)
        mean = weighted_mean(safe_params, weights)
        kept = tree_where(weights.sum() > 0, mean, state.global_params)
        global_params = jax.tree.map(
            lambda period, g, k: k if period == 0 else g, kinds, global_params, kept
        )
    history = state.global_history
    if staleness > 0:
        slot = (state.round + 1) % (staleness + 1)
        history = jax.tree.map(lambda h, g: h.at[slot].set(g), history, global_params)
    peers, peer_weights = state.peer_params, state.peer_weights
    if needs_peers:
        peers = safe_params
        peer_weights = normalized_weights(info.num_steps, info.mask)
    new_state = state.replace(
        global_params=global_params,
        server_state=server_state,
        peer_params=peers,
        peer_weights=peer_weights,
        global_history=history,
    )
    return new_state, aggregate_ok, strategy_metrics
