"""The evaluation protocols of a block: global, personalized and held-out clients.

Federated evaluation asks more than "how good is the global model on average"
(Wang et al. 2021, "A Field Guide to Federated Optimization", section 4;
Yuan et al. 2022, "What Do We Mean by Generalization in Federated Learning?",
which separates the participation gap from the out-of-sample gap). Every block
reports, as columns of the same metrics record:

(a) the global policy on each training client's own env: `eval_return` (and its
    fairness views `eval_return_min_client`, `_p10`, ...) and `eval/global/*`;
(b) each training client's personalized policy on its own env: `eval/personal/*`;
(c) the held-out clients (`federation.holdout`: clients that never train, their
    envs drawn like the others') under the global policy: `eval/holdout/*`, and
    under their personalized policy where the personalization method adapts an
    unseen client (fine-tuning): `eval/holdout/personal/*`;
(d) the personalization gap (b) - (a) over the training clients: `eval/gap`, and
    the fraction of training clients the personalized policy serves better,
    `eval/gap/improved`.

Each group reports `mean` (over every client's episodes), `worst` (the worst
client's mean return) and `p10` (the 10th percentile over clients; Li et al.
2020, "Fair Resource Allocation in Federated Learning"). The global and the
personalized passes use the same keys per client, so the gap compares the same
episodes' randomness (common random numbers). The personalized pass is an extra
evaluation of every client (`log.eval_personal`).

`personal_params` is the one place that says what a client's personalized
policy is: `Simulator.personal_params(state)` where the simulator provides it
(the personalization methods), else each client's own last local params (its
state after its last local training; `jfedrl eval --policy local`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jfedrl.config import Config, holdout_clients, training_clients
from jfedrl.round.metrics import eval_views, evaluate_clients
from jfedrl.round.state import FedState

#: `log.eval_personal` values.
EVAL_PERSONAL = ("auto", "on", "off")
#: Personalization methods (`personal.name`) whose personalized policy is meaningful on a
#: client that never trained: fine-tuning adapts the global policy on the client's env.
#: FedPer's and Ditto's personal parts of a held-out client are untrained, and IFCA's
#: held-out client has chosen no cluster.
ADAPTS_UNSEEN = ("finetune",)


def personal_method(config: Config) -> str:
    """The configured personalization method (`personal.name`), or "" where there is none."""
    name = getattr(getattr(config, "personal", None), "name", "") or ""
    return "" if name == "none" else name


def eval_personal(config: Config) -> bool:
    """Whether a block evaluates the personalized policies (`log.eval_personal`).

    `auto`: when a personalization method is configured (`personal.name`) or the strategy
    is `local_only` (whose only policies are the clients' own).
    """
    choice = config.log.eval_personal
    if choice == "auto":
        return bool(personal_method(config)) or config.strategy.name == "local_only"
    return choice == "on"


def holdout_ids(config: Config) -> np.ndarray:
    """The held-out clients' ids: the last `holdout` of `federation.num_clients`."""
    fed = config.federation
    return np.arange(training_clients(fed), fed.num_clients)


def personal_params(simulator: Any, state: FedState, key: jax.Array) -> Any:
    """Every client's personalized params, stacked `[C, ...]` (pure, jittable).

    The simulator's own `personal_params(state, key)` where it has one (the
    personalization methods; `key` for those that adapt at evaluation, as
    fine-tuning does), else each client's last local params.
    """
    own = getattr(simulator, "personal_params", None)
    if own is not None:
        return own(state, key)
    return jax.vmap(simulator.algorithm.get_params)(state.clients)


@partial(jax.jit, static_argnums=(0,))
def evaluate_personal(simulator: Any, state: FedState, key: jax.Array) -> jax.Array:
    """Each client's personalized policy on its own env: `[C, episodes]`.

    The keys and env params are those of `Simulator.evaluate`, so a client's episodes
    differ from its global-policy episodes only in the policy.
    """
    keys = jax.random.split(key, simulator.num_clients)
    env_params = simulator.current_env_params(state, jnp.maximum(state.round - 1, 0))
    returns = evaluate_clients(
        simulator.envs.env,
        simulator.algorithm.act,
        keys,
        env_params,
        personal_params(simulator, state, jax.random.fold_in(key, 1)),
        params_axis=0,
        episodes=simulator.config.log.eval_episodes,
        max_steps=simulator.envs.max_episode_steps,
    )
    return simulator.layout.replicate(returns)


def _group(prefix: str, per_client: jax.Array, returns: jax.Array) -> dict[str, jax.Array]:
    return {
        f"{prefix}/mean": returns.mean(),
        f"{prefix}/worst": per_client.min(),
        f"{prefix}/p10": jnp.percentile(per_client, 10.0),
    }


@partial(jax.jit, static_argnums=(2, 3))
def protocol_views(
    global_returns: jax.Array,
    personal_returns: jax.Array | None,
    training: int,
    holdout_personal: bool,
) -> dict[str, jax.Array]:
    """The metrics of the protocols (module doc) from `[C, episodes]` returns, on the device.

    Args:
        global_returns: the global policy's returns on every client.
        personal_returns: the personalized policies' returns on every client, or None.
        training: how many clients train (the first ones; the rest are held out).
        holdout_personal: also report the held-out clients' personalized returns.
    """
    trained = global_returns[:training]
    views = dict(eval_views(trained))  # the existing keys: the training clients only
    per_client = trained.mean(axis=1)
    views.update(_group("eval/global", per_client, trained))
    num_clients = global_returns.shape[0]
    if training < num_clients:
        held = global_returns[training:]
        views.update(_group("eval/holdout", held.mean(axis=1), held))
    if personal_returns is not None:
        mine = personal_returns[:training]
        mine_per_client = mine.mean(axis=1)
        views.update(_group("eval/personal", mine_per_client, mine))
        views["eval/gap"] = mine.mean() - trained.mean()
        views["eval/gap/improved"] = jnp.mean(mine_per_client > per_client)
        if holdout_personal and training < num_clients:
            held = personal_returns[training:]
            views.update(_group("eval/holdout/personal", held.mean(axis=1), held))
            views["eval/holdout/gap"] = held.mean() - global_returns[training:].mean()
    return views


def eval_metrics(simulator: Any, state: FedState, round_key: jax.Array) -> dict[str, jax.Array]:
    """A block's evaluation: every protocol's metrics (device scalars; module doc).

    Args:
        simulator: the run's simulator.
        state: the state after the block.
        round_key: the evaluation key of this round (`runner.sim_eval`'s folded key).
    """
    config = simulator.config
    # Positional `False`, as `sim_eval` and `compile_ahead` pass it: one cache entry.
    global_returns = simulator.evaluate(state, round_key, False)
    personal_returns = None
    if eval_personal(config):
        personal_returns = evaluate_personal(simulator, state, round_key)
    holdout_personal = personal_method(config) in ADAPTS_UNSEEN
    return protocol_views(
        global_returns, personal_returns, training_clients(config.federation), holdout_personal
    )


def env_params_extras(config: Config, num_clients: int) -> dict[str, list]:
    """What env_params.json records besides the params: the held-out clients and the
    groups of a clustered variant (`envs.variants.variant_groups`).
    """
    import envs

    extras: dict[str, list] = {}
    groups = envs.variants.variant_groups(config.env.variant, num_clients)
    if groups is not None:
        extras["client_group"] = [int(g) for g in groups]
    if holdout_clients(config.federation):
        extras["holdout"] = [int(i) for i in holdout_ids(config)]
    return extras
