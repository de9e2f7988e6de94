"""Ditto (Li et al., ICML 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization"): a personal model per client, proximal to the global one.

Each client keeps a personal model v in its client state beside the state
that trains the global model w. Every local update trains both: w with the
algorithm's own update (exactly as without Ditto, same keys, so the global
model trains as FedAvg's does), and v with the same algorithm's update whose
proximal term is lambda/2 ||v - w_global||^2 towards the broadcast global
params (`personal.ditto.lam`, in the algorithm's own `prox_mu`). In RL v
collects its own rollouts, so a Ditto round takes twice the environment
steps. Only w is ever aggregated; v starts from the first global params the
client receives. The personal model is ordinary client state, so vmap,
checkpoints and offload need nothing special.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jfedrl.algorithms.base import Algorithm
from jfedrl.schema.checks import require
from jfedrl.schema.convert import replace_path

#: Stream folded into each local update's key for the personal model's update.
PERSONAL_UPDATE_STREAM = 1


class DittoState(struct.PyTreeNode):
    """A client's state under Ditto."""

    shared: Any
    """The algorithm's state that trains the global model (its params are aggregated)."""
    personal: Any
    """The personal model's own algorithm state (params, optimiser, buffers)."""
    started: jax.Array
    """bool: the personal model has been set from a global model and trained."""


def validate(config: Any) -> None:
    """`personal.ditto.lam` >= 0, and the algorithm has a proximal term."""
    lam = config.personal.ditto.lam
    require(lam >= 0, "personal.ditto.lam", ">= 0 (0: pure local training)", lam)
    section = getattr(config.algo, config.algo.name, None)
    require(
        hasattr(section, "prox_mu"),
        "personal.name",
        "an algorithm with a proximal term (algo.<name>.prox_mu) for ditto",
        config.algo.name,
    )


def wrap(config: Any, algorithm: Algorithm, build: Any, envs: Any) -> Algorithm:
    """`algorithm` with a Ditto personal model in every client's state.

    Args:
        config: the whole config (`personal.ditto.lam`).
        algorithm: the learner of the global model.
        build: `config -> Algorithm`, to build the personal learner with `prox_mu` = lambda.
        envs: unused (the signature of every wrap hook).
    """
    from jfedrl.algorithms import with_fedprox

    path = f"algo.{config.algo.name}.prox_mu"
    personal_config = replace_path(
        with_fedprox(config), path, config.personal.ditto.lam, coerce=False
    )
    # `build` applies FedProx's mu to prox_mu again: the personal learner's is lambda.
    personal_config = replace_path(personal_config, "strategy.name", "fedavg")
    learner = build(personal_config)
    return ditto_algorithm(algorithm, learner)


def ditto_algorithm(algorithm: Algorithm, learner: Algorithm) -> Algorithm:
    """The pair (global learner `algorithm`, personal `learner`) as one algorithm."""

    def init(key, env_params):
        key_personal = jax.random.fold_in(key, PERSONAL_UPDATE_STREAM)
        return DittoState(
            shared=algorithm.init(key, env_params),
            personal=learner.init(key_personal, env_params),
            started=jnp.asarray(False),
        )

    def local_update(key, state, env_params, reference):
        shared, metrics = algorithm.local_update(key, state.shared, env_params, reference)
        # v starts from the first global params the client receives.
        personal = jax.tree.map(
            lambda v, w: jnp.where(state.started, v, w),
            state.personal,
            learner.set_params(state.personal, reference.global_params),
        )
        key_personal = jax.random.fold_in(key, PERSONAL_UPDATE_STREAM)
        personal, personal_metrics = learner.local_update(
            key_personal, personal, env_params, reference
        )
        metrics = dict(metrics)
        metrics.update({f"personal/{k}": v for k, v in personal_metrics.items()})
        new = DittoState(shared=shared, personal=personal, started=jnp.asarray(True))
        return new, metrics

    return algorithm._replace(
        init=init,
        local_update=local_update,
        get_params=lambda state: algorithm.get_params(state.shared),
        set_params=lambda state, params: state.replace(
            shared=algorithm.set_params(state.shared, params)
        ),
        env_steps_per_update=algorithm.env_steps_per_update,
    )


def personal_params(simulator: Any, state: Any, key: jax.Array) -> Any:
    """Each client's personal model, `[C, ...]` (the global until the client first trains)."""
    clients = state.clients
    # Both learners come from one builder, so the personal state has the same params layout.
    own = jax.vmap(simulator.algorithm.get_params)(clients.replace(shared=clients.personal))
    return jax.tree.map(
        lambda v, w: jnp.where(clients.started.reshape((-1,) + (1,) * (v.ndim - 1)), v, w),
        own,
        state.global_params,
    )
