"""What a round and an evaluation report: the metrics, computed on the device.

`round_metrics` turns a round's screened updates and the strategy's output into
the scalars (and per-participant arrays) a block returns; `evaluate_clients`
runs the deterministic policy on every client's environment; `eval_views`
reduces its returns to the federated views the host logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.attacks.round import detection_metrics
from jfedrl.round.screening import Screened, final_values
from jfedrl.round.state import RoundInputs


def round_metrics(
    inputs: RoundInputs,
    screened: Screened,
    aggregate_ok: jax.Array,
    local_metrics: dict[str, jax.Array],
    strategy_metrics: dict[str, jax.Array],
    *,
    num_participants: int,
    padded_participants: int,
    local_updates: int,
    staleness: int,
    attacking: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """The metrics of one round (pure).

    Means over participants count only accepted updates (returns, update norms,
    the algorithm's metrics at each client's last real step) or only real
    participants (local steps, staleness); padding never counts. A strategy
    metric per padded participant is cut to the K real ones, as on one device.

    Args:
        inputs: what `Simulator.begin_round` produced for this round.
        screened: the screened updates (`screen_updates`).
        aggregate_ok: whether the aggregate was accepted (`strategy_step`).
        local_metrics: the participants' metrics, `[local_updates, P]` each.
        strategy_metrics: the strategy's metrics.
        num_participants: K, the real participants.
        padded_participants: P, the padded participant axis.
        local_updates: `federation.local_updates` (the most local updates).
        staleness: `federation.staleness`; k > 0 adds the staleness metrics.
        attacking: under an attack, the `[P]` participants that attacked: adds the
            `byzantine/*` detection metrics (`jfedrl.attacks.round.detection_metrics`),
            scored against the strategy metric `selected` where the rule reports it.
    """
    finite, returned, returns = screened.finite, screened.returned, screened.returns
    info, local_steps = screened.info, screened.info.local_steps
    valid = jnp.maximum(finite.sum(), 1)
    masked_returns = jnp.where(finite, returns, jnp.nan)
    participants = jnp.maximum(inputs.valid.sum(), 1)
    metrics = {
        "train_return_mean": jnp.nanmean(masked_returns),
        "train_return_min": jnp.nanmin(masked_returns),
        "train_return_max": jnp.nanmax(masked_returns),
        "clients_participating": jnp.sum(inputs.valid).astype(jnp.int32),
        "clients_excluded": jnp.sum(returned & ~finite).astype(jnp.int32),
        "clients_dropped": jnp.sum(inputs.valid & ~returned).astype(jnp.int32),
        "aggregate_rejected": jnp.logical_not(aggregate_ok).astype(jnp.int32),
        "update_norm_mean": jnp.sum(jnp.where(finite, screened.update_norms, 0.0)) / valid,
        "participants": inputs.ids[:num_participants],
        "local_steps_mean": jnp.sum(jnp.where(inputs.valid, local_steps, 0.0)) / participants,
        "local_steps_min": jnp.min(jnp.where(inputs.valid, inputs.num_updates, local_updates)),
        "local_steps_max": jnp.max(jnp.where(inputs.valid, inputs.num_updates, 0)),
        "env_steps_taken": jnp.sum(jnp.where(inputs.valid, info.num_steps, 0.0)),
    }
    if staleness > 0:
        stale = jnp.where(inputs.valid, inputs.staleness, 0)
        metrics["staleness_mean"] = jnp.sum(stale) / participants
        metrics["staleness_max"] = jnp.max(stale)
    for name, value in local_metrics.items():
        if name not in ("train_return",):
            metrics[name] = jnp.nanmean(
                jnp.where(finite, final_values(value, screened.last_step), jnp.nan)
            )
    for name, value in strategy_metrics.items():
        if value.ndim >= 1 and value.shape[0] == padded_participants:
            value = value[:num_participants]  # per participant, as on one device
        metrics["strategy/" + name] = value
    if attacking is not None:
        selected = strategy_metrics.get("selected")
        metrics.update(detection_metrics(attacking, finite, returned, selected))
    return metrics


def evaluate_clients(
    env: Any,
    act: Callable[[Any, jax.Array], jax.Array],
    keys: jax.Array,
    env_params: Any,
    params: Any,
    *,
    params_axis: int | None,
    episodes: int,
    max_steps: int,
) -> jax.Array:
    """Deterministic-policy returns of every client, `[C, episodes]` (pure).

    Each episode runs a static `max_steps` steps and sums the rewards up to its
    first termination or truncation, so every client's episodes vmap together.

    Args:
        env: the environment (gymnax-style `reset` / `step`).
        act: the algorithm's deterministic policy, `act(params, obs)`.
        keys: one key per client, `[C, 2]`.
        env_params: every client's env params, stacked.
        params: the params to act with: shared (`params_axis` None) or stacked (0).
        params_axis: None for one set of params for all, 0 for one set per client.
        episodes: evaluation episodes per client.
        max_steps: steps per episode.
    """

    def episode(key, env_params, params):
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = env.reset(key_reset, env_params)

        def step(carry, step_key):
            obs, env_state, total, done = carry
            action = act(params, obs)
            obs, env_state, reward, terminated, truncated, _ = env.step(
                step_key, env_state, action, env_params
            )
            total = total + jnp.where(done, 0.0, reward)
            done = jnp.logical_or(done, jnp.logical_or(terminated, truncated))
            return (obs, env_state, total, done), None

        init = (obs, env_state, jnp.zeros(()), jnp.asarray(False))
        (_, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(key_steps, max_steps))
        return total

    def client(key, env_params, params):
        keys = jax.random.split(key, episodes)
        return jax.vmap(episode, in_axes=(0, None, None))(keys, env_params, params)

    return jax.vmap(client, in_axes=(0, 0, params_axis))(keys, env_params, params)


@jax.jit
def eval_views(returns: jax.Array) -> dict[str, jax.Array]:
    """The federated views of an evaluation `returns [clients, episodes]`, on the device.

    Each client's score is its mean return over its episodes. Besides the mean over
    every episode (`eval_return`), the fairness views FL papers report (Li et al.
    2020, "Fair Resource Allocation in Federated Learning"): the worst and the best
    client, the 10th percentile over clients (linear interpolation, NumPy's
    default) and the spread (population std over clients). Computed in one small
    program, so the host fetches five scalars, not a value per client.
    """
    per_client = returns.mean(axis=1)
    return {
        "eval_return": returns.mean(),
        "eval_return_min_client": per_client.min(),
        "eval_return_max_client": per_client.max(),
        "eval_return_p10": jnp.percentile(per_client, 10.0),
        "eval_return_std": per_client.std(),
    }
