"""FedPer, fine-tuning and the no-personalization baseline; `personal_params`' dispatch.

FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization
Layers"): the layers matching `personal.fedper.local` are each client's own.
They are never broadcast over the client's copy and never reach the
aggregation rule (`Algorithm.local_params`, `jfedrl.round.aggregation`); the
global keeps the participants' weighted mean of them, a model for evaluating
the global policy and for new clients that no client ever receives.

Fine-tuning ("FedAvg + FT", Wang et al. 2019, "Federated Evaluation of
On-device Personalization"): training is untouched; a client's personalized
policy is the global one after `personal.finetune.updates` local updates of the
algorithm on the client's own env, computed at evaluation and never kept.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.algorithms.spec import resolve
from jfedrl.round.aggregation import component_where, leaf_periods, param_path
from jfedrl.round.local import local_training
from jfedrl.schema.checks import ConfigError, require

#: Stream folded into the state's key for the randomness of personalized evaluation.
PERSONAL_STREAM = 23


def stacked(tree: Any, n: int) -> Any:
    """`n` copies of `tree` on a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


def own_params(simulator: Any, state: Any, key: jax.Array) -> Any:
    """Each client's own params after its last local training (no personalization)."""
    return jax.vmap(simulator.algorithm.get_params)(state.clients)


# ---------------------------------------------------------------- FedPer


def validate_fedper(config: Any) -> None:
    """`personal.fedper.local` is a regular expression (matched at build); no clipping."""
    pattern = config.personal.fedper.local
    require(bool(pattern), "personal.fedper.local", "a non-empty regular expression", pattern)
    try:
        re.compile(pattern)
    except re.error as error:
        raise ConfigError(
            f"personal.fedper.local: must be a regular expression, got {pattern!r} ({error})"
        ) from None
    clip = config.strategy.clip_update_norm
    if clip > 0:
        raise ConfigError(
            "strategy.clip_update_norm: must be 0 with personal.name fedper (a client's own "
            f"head would count in its update's norm), got {clip}"
        )


def fedper_algorithm(config: Any, algorithm: Algorithm, build: Any, envs: Any) -> Algorithm:
    """`algorithm` with FedPer's local layers (`Algorithm.local_params`).

    Raises:
        ConfigError: the pattern matches no params leaf, or every one (nothing shared).
    """
    pattern = config.personal.fedper.local
    params = jax.eval_shape(
        lambda: algorithm.get_params(algorithm.init(jax.random.key(0), envs.default_params))
    )
    kinds = jax.tree.leaves(leaf_periods((), params, pattern))
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
    if 0 not in kinds:
        raise ConfigError(
            f"personal.fedper.local: {pattern!r} matches no params leaf of "
            f"{config.algo.name}; its leaves: {shown}"
        )
    if all(k == 0 for k in kinds):
        raise ConfigError(
            f"personal.fedper.local: {pattern!r} matches every params leaf of "
            f"{config.algo.name} (nothing would be federated); its leaves: {shown}"
        )
    return algorithm._replace(local_params=pattern)


def fedper_params(simulator: Any, state: Any, key: jax.Array) -> Any:
    """The global body with each client's own local layers, `[C, ...]`."""
    own = own_params(simulator, state, key)
    local = simulator.algorithm.local_params
    return component_where((), state.round, state.global_params, own, local)


# ---------------------------------------------------------------- fine-tuning


def validate_finetune(config: Any) -> None:
    """`personal.finetune.updates` >= 0."""
    updates = config.personal.finetune.updates
    require(updates >= 0, "personal.finetune.updates", ">= 0 (0: the global policy)", updates)


def finetune(
    algorithm: Algorithm,
    updates: int,
    key: jax.Array,
    clients: Any,
    env_params: Any,
    reference: Reference,
) -> Any:
    """The broadcast global params after `updates` local updates on each client, `[C, ...]`.

    The clients' states (optimiser, schedules, buffers) start the fine-tuning with
    the global params set in; nothing is written back.

    Args:
        algorithm: the local learner.
        updates: local updates (0: the global params themselves).
        key: randomness of the fine-tuning rollouts.
        clients: every client's state, stacked.
        env_params: every client's env params, stacked.
        reference: the global params (and peers) the updates regularise towards.
    """
    count = jax.tree.leaves(env_params)[0].shape[0]
    if updates == 0:
        return stacked(reference.global_params, count)
    clients = jax.vmap(algorithm.set_params, in_axes=(0, None))(clients, reference.global_params)
    keys = jax.random.split(key, count)
    tuned, _ = local_training(algorithm, updates, keys, clients, env_params, reference)
    return jax.vmap(algorithm.get_params)(tuned)


def finetune_params(simulator: Any, state: Any, key: jax.Array) -> Any:
    """The global policy fine-tuned for `personal.finetune.updates` on each client's env."""
    section = simulator.config.personal.finetune
    env_params = simulator.current_env_params(state, jnp.maximum(state.round - 1, 0))
    reference = Reference(state.global_params, state.peer_params, state.peer_weights)
    key_init, key_tune = jax.random.split(key)
    clients = state.clients
    if section.fresh_state:
        init_keys = jax.random.split(key_init, simulator.num_clients)
        clients = jax.vmap(simulator.algorithm.init)(init_keys, env_params)
    return finetune(simulator.algorithm, section.updates, key_tune, clients, env_params, reference)


# ---------------------------------------------------------------- dispatch


@partial(jax.jit, static_argnums=0)
def personal_params_jit(simulator: Any, state: Any, key: jax.Array | None) -> Any:
    """`jfedrl.personal.personal_params`, jitted per simulator."""
    from jfedrl import personal

    if key is None:
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), PERSONAL_STREAM)
    method = resolve(personal.get(simulator.config.personal.name).personal_params)
    return method(simulator, state, key)
