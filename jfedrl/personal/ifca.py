"""IFCA (Ghosh et al., NeurIPS 2020, "An Efficient Framework for Clustered
Federated Learning"): k global models; each client trains the one that does best
on its own env, and each model is aggregated over the clients that chose it.

The k models are one params tree here: `{"models": [k, ...], "choice": [k]}`.
At the start of its round (`Algorithm.prepare`, in the one local-training
function every executor runs) each participant runs `personal.ifca.eval_episodes`
deterministic episodes with each model on its env and picks the highest mean
return (the paper's loss-based choice, with the return as the RL loss); it then
trains that model with the algorithm's own update (its proximal or KL terms
pull towards the chosen model) and returns the k models with only that row
trained, and its choice one-hot. The server runs the strategy once per model
(vmapped) over the clients that chose it (a masked aggregate; a model nobody
chose keeps its params and server state), and keeps in `choice` the clusters'
shares of the round's weight. The global policy (`act` on the global params)
is the largest cluster's model; a client's personalized policy is the model it
last chose. Metrics: `strategy/ifca/cluster_size_<j>` (participants per model)
and `ifca/switched` (the fraction of participants whose choice changed from
their previous round: the assignment's stability).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.round.metrics import evaluate_clients
from jfedrl.round.state import take_rows
from jfedrl.schema.checks import ConfigError, require
from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights
from jfedrl.tree import tree_where

#: Streams folded into a client's init key for the k models' initial params.
MODEL_STREAM = 7


class IFCAState(struct.PyTreeNode):
    """A client's state under IFCA."""

    inner: Any
    """The algorithm's state, training the chosen model."""
    models: Any
    """The k models, stacked: the broadcast ones, the chosen row replaced as it trains."""
    choice: jax.Array
    """float32 `[k]`: one-hot of the model chosen this round (zeros before the first choice).
    It is part of the params, so it travels wherever params travel (an offload worker
    that keeps the states returns only params)."""
    cluster: jax.Array
    """int32: the model chosen this round (-1 before the first choice)."""
    previous: jax.Array
    """int32: the model chosen in the client's previous round (-1 before it)."""


def validate(config: Any) -> None:
    """K in [1, num_clients], episodes >= 1, and what IFCA cannot combine with."""
    ifca, fed = config.personal.ifca, config.federation
    rule = f"in [1, federation.num_clients={fed.num_clients}]"
    require(1 <= ifca.k <= fed.num_clients, "personal.ifca.k", rule, ifca.k)
    require(ifca.eval_episodes >= 1, "personal.ifca.eval_episodes", ">= 1", ifca.eval_episodes)
    if fed.staleness > 0:
        raise ConfigError(
            "federation.staleness: must be 0 with personal.name ifca (a stale update "
            f"is rebased onto the current models and would move the wrong one), got {fed.staleness}"
        )
    clip = config.strategy.clip_update_norm
    if clip > 0:
        raise ConfigError(
            "strategy.clip_update_norm: must be 0 with personal.name ifca (clipping would "
            f"rescale the clients' cluster choices), got {clip}"
        )


def wrap_algorithm(config: Any, algorithm: Algorithm, build: Any, envs: Any) -> Algorithm:
    """`algorithm` training one of `personal.ifca.k` models per client.

    Raises:
        ConfigError: the algorithm reads its peers (mixture KL) or has aggregation
            periods, which IFCA's stacked models do not carry.
    """
    if algorithm.needs_peers:
        raise ConfigError(
            f"algo.{config.algo.name}.comm_reference: 'mixture' cannot be combined with "
            "personal.name ifca (the peers train different models); allowed: global"
        )
    if any(period > 1 for _, period in algorithm.aggregation_periods):
        raise ConfigError(
            f"algo.{config.algo.name}: aggregation periods above 1 cannot be combined with "
            "personal.name ifca; set them to 1"
        )
    if algorithm.local_params:
        raise ConfigError("personal.name: ifca cannot keep local layers (that is fedper)")
    ifca = config.personal.ifca
    return ifca_algorithm(
        algorithm,
        k=ifca.k,
        env=envs.env,
        episodes=ifca.eval_episodes,
        max_steps=envs.max_episode_steps,
    )


def ifca_algorithm(
    algorithm: Algorithm, *, k: int, env: Any, episodes: int, max_steps: int
) -> Algorithm:
    """`algorithm` whose params are k models, one trained per client per round."""

    def choice_of(cluster):
        return jnp.where(cluster >= 0, jax.nn.one_hot(cluster, k), 0.0).astype(jnp.float32)

    def init(key, env_params):
        inner = algorithm.init(key, env_params)
        model_keys = jax.random.split(jax.random.fold_in(key, MODEL_STREAM), k)
        models = jax.vmap(lambda kk: algorithm.get_params(algorithm.init(kk, env_params)))(
            model_keys
        )
        minus = jnp.asarray(-1, jnp.int32)
        choice = jnp.zeros((k,), jnp.float32)
        return IFCAState(inner=inner, models=models, choice=choice, cluster=minus, previous=minus)

    def get_params(state):
        return {"models": state.models, "choice": state.choice}

    def set_params(state, params):
        return state.replace(models=params["models"], choice=params["choice"])

    def scores(key, models, env_params):
        """Each model's mean deterministic return on this client's env, `[k]`."""
        stacked_env = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *jnp.shape(x))), env_params)
        returns = evaluate_clients(
            env,
            algorithm.act,
            jax.random.split(key, k),
            stacked_env,
            models,
            params_axis=0,
            episodes=episodes,
            max_steps=max_steps,
        )
        return returns.mean(axis=1)

    def prepare(key, state, env_params, reference):
        models = reference.global_params["models"]
        # The same key for every model: the choice compares them on the same episodes.
        cluster = jnp.argmax(scores(key, models, env_params)).astype(jnp.int32)
        inner = algorithm.set_params(state.inner, take_rows(models, cluster))
        return state.replace(
            inner=inner,
            models=models,
            choice=choice_of(cluster),
            cluster=cluster,
            previous=state.cluster,
        )

    def local_update(key, state, env_params, reference):
        cluster = state.cluster
        chosen = take_rows(reference.global_params["models"], cluster)
        inner_reference = Reference(chosen, reference.peer_params, reference.peer_weights)
        inner, metrics = algorithm.local_update(key, state.inner, env_params, inner_reference)
        trained = algorithm.get_params(inner)
        models = jax.tree.map(lambda m, p: m.at[cluster].set(p), state.models, trained)
        metrics = dict(metrics)
        switched = jnp.logical_and(state.previous >= 0, state.previous != cluster)
        metrics["ifca/switched"] = switched.astype(jnp.float32)
        return state.replace(inner=inner, models=models), metrics

    def act(params, obs):
        model = take_rows(params["models"], jnp.argmax(params["choice"]))
        return algorithm.act(model, obs)

    return algorithm._replace(
        init=init,
        local_update=local_update,
        get_params=get_params,
        set_params=set_params,
        act=act,
        prepare=prepare,
    )


def wrap_strategy(config: Any, strategy: Strategy) -> Strategy:
    """`strategy` run once per model over the clients that chose it."""
    return ifca_strategy(strategy, config.personal.ifca.k)


def ifca_strategy(strategy: Strategy, k: int) -> Strategy:
    """The per-cluster masked aggregate of `strategy` (vmapped over the k models)."""

    def init(global_params):
        return jax.vmap(strategy.init)(global_params["models"])

    def aggregate(server_state, global_params, client_params, info, key):
        choice = client_params["choice"]  # [P, k]; rows of rejected clients: the global's
        assigned = jnp.argmax(choice, axis=1)
        chose = jnp.logical_and(info.mask, choice.max(axis=1) > 0.5)

        def one(j, state_j, global_j, clients_j, key_j):
            mask = jnp.logical_and(chose, assigned == j)
            info_j = ClientInfo(info.num_steps, info.returns, mask, info.local_steps)
            new, new_state, metrics = strategy.aggregate(
                state_j, global_j, clients_j, info_j, key_j
            )
            anyone = mask.any()
            return (
                tree_where(anyone, new, global_j),
                tree_where(anyone, new_state, state_j),
                metrics,
            )

        by_model = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), client_params["models"])
        models, server_state, inner_metrics = jax.vmap(one)(
            jnp.arange(k), server_state, global_params["models"], by_model, jax.random.split(key, k)
        )
        weights = normalized_weights(info.num_steps, chose)
        shares = jnp.where(weights.sum() > 0, weights @ choice, global_params["choice"])
        metrics = {name: value.mean(axis=0) for name, value in inner_metrics.items()}
        sizes = jnp.sum(jnp.where(chose[:, None], choice > 0.5, False), axis=0)
        for j in range(k):
            metrics[f"ifca/cluster_size_{j}"] = sizes[j].astype(jnp.int32)
        return {"models": models, "choice": shares.astype(jnp.float32)}, server_state, metrics

    return Strategy(init=init, aggregate=aggregate)


def assignments(state: Any) -> jax.Array:
    """Every client's last chosen model, `[C]` int32 (-1: it has not trained yet)."""
    choice = state.clients.choice
    return jnp.where(choice.max(axis=1) > 0.5, choice.argmax(axis=1), -1).astype(jnp.int32)


def personal_params(simulator: Any, state: Any, key: jax.Array) -> Any:
    """Each client's personalized params: all k models, its own choice (`[C, ...]`).

    A client that has not chosen yet gets the global choice (the largest cluster's model).
    """
    own = state.clients.choice
    chose = (assignments(state) >= 0)[:, None]
    choice = jnp.where(chose, own, state.global_params["choice"][None, :]).astype(jnp.float32)
    count = own.shape[0]
    models = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (count, *x.shape)), state.global_params["models"]
    )
    return {"models": models, "choice": choice}
