"""The server's step of a round: the strategy, and what the state keeps of it.

The strategy aggregates the screened updates; a non-finite aggregate (an
overflowing rule or server optimiser) is rejected and the round keeps the
previous global params and server state (metric `aggregate_rejected`;
`federation.on_rejected_aggregate` decides whether the run goes on). Components with an aggregation
period (RLlab FRL's TD3) keep their global params in the rounds they are not
due. The staleness ring buffer and the peers of
mixture-KL communication are updated here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from jfedrl.round.state import FedState, inexact_finite
from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights
from jfedrl.tree import tree_where


def component_where(
    periods: Sequence[tuple[str, int]], round_index: jax.Array, new: Any, old: Any
) -> Any:
    """Params whose periodic components come from `new` where due, else from `old`.

    A component with period p is due when `round_index % p == 0`; components
    without a period always come from `new`.

    Args:
        periods: `(component name, period)` pairs (`Algorithm.aggregation_periods`).
        round_index: the round counter the periods are measured on.
        new: params (a dict of components) to take where due.
        old: params to keep where not due.
    """
    out = dict(new)
    for name, period in periods:
        out[name] = tree_where(round_index % period == 0, new[name], old[name])
    return out


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

    Returns:
        `state` with new global params, server state, history and peers (its
        clients and round untouched), whether the aggregate was accepted (a
        scalar bool) and the strategy's metrics.
    """
    global_params, server_state, strategy_metrics = strategy.aggregate(
        state.server_state, state.global_params, safe_params, info, key
    )
    # A non-finite aggregate (an overflowing rule or server optimiser) is rejected: the
    # round keeps the previous global params and server state, and says so in its metrics.
    aggregate_ok = inexact_finite(global_params)
    global_params = tree_where(aggregate_ok, global_params, state.global_params)
    server_state = tree_where(aggregate_ok, server_state, state.server_state)
    if any(period > 1 for _, period in periods):
        # A component not due after this round keeps its global params.
        due = state.round + 1
        global_params = component_where(periods, due, global_params, state.global_params)
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
