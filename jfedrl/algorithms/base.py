"""The algorithm interface: pure functions on ONE client.

    init(key, env_params) -> client_state
    local_update(key, client_state, env_params, reference) -> (client_state, metrics)

The simulator `vmap`s these over clients and the offload worker calls the very
same `local_update`; no algorithm code mentions the client axis. `reference`
carries what the server broadcast (the global params, and the peers' params
for communication terms), so client-side regularisers are plain loss terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

Params = Any
ClientState = Any
Metrics = dict[str, jax.Array]


class Reference(NamedTuple):
    """What a client may regularise towards during its local update."""

    global_params: Params
    """The broadcast global params (FedProx, KL to the global policy)."""
    peer_params: Params = None
    """The peers' params from the last round, stacked (KL to their mixture)."""
    peer_weights: jax.Array | None = None
    """Mixture weights of the peers (sum to one)."""


class Algorithm(NamedTuple):
    """A local learner, as pure functions."""

    init: Callable[[jax.Array, Any], ClientState]
    local_update: Callable[[jax.Array, ClientState, Any, Reference], tuple[ClientState, Metrics]]
    get_params: Callable[[ClientState], Params]
    """The federated part of the client state (what the server aggregates)."""
    set_params: Callable[[ClientState, Params], ClientState]
    act: Callable[[Params, jax.Array], jax.Array]
    """Deterministic action for one observation (evaluation)."""
    env_steps_per_update: int
    needs_peers: bool = False
    """True if `local_update` reads `reference.peer_params`."""
    aggregation_periods: tuple[tuple[str, int], ...] = ()
    """Rounds between aggregations of each named top-level component of the params
    (e.g. `(("actor", 2), ("critic", 1))`, RLlab FRL); between them each client keeps
    its own copy of the component. Unlisted components are aggregated every round."""
    local_params: str = ""
    """A regular expression over the params' leaf paths (`actor/params/Dense_2/kernel`):
    the matching leaves are each client's own, never broadcast nor aggregated (FedPer,
    `jfedrl.personal`); "" keeps none."""
    prepare: Callable[[jax.Array, ClientState, Any, Reference], ClientState] | None = None
    """Optional `prepare(key, client_state, env_params, reference) -> client_state`, run
    once per round before the local updates (IFCA's choice of a cluster model)."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: `build(config, env, env_params) -> Algorithm`."""

    name: str
    build: Callable[[Any, Any, Any], Algorithm]
    description: str = ""
    validate: Callable[[Any], None] = lambda config: None
