"""The attack's side of a round, as `Simulator` calls it (jitted with the round).

Three hooks, each a no-op unless `attack.name` is an attack of the matching kind
(so a run without an attack traces exactly the round it always did):
`round_env_params` gives an `env` attack's Byzantine clients their flag in the
round's env params; `attack_updates` applies an `update` attack to the trained
participants before screening; `detection_metrics` scores a rule that reports
the participants it `selected` against the Byzantine set.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl import attacks
from jfedrl.attacks.byzantine import mask_for
from jfedrl.attacks.env import attack_params
from jfedrl.attacks.update import apply_update_attack

#: Stream folded into the round key for the attacks' own randomness (the system
#: heterogeneity and staleness draws use 1 and 2, `jfedrl.round.local`).
ATTACK_STREAM = 3


def kind(config: Any) -> str:
    """The configured attack's kind: `none`, `update` or `env`."""
    return attacks.get(config.attack.name).kind


def _section(config: Any) -> Any:
    return getattr(config.attack, config.attack.name, None)


def active(config: Any, round_index: jax.Array) -> jax.Array:
    """Whether the Byzantine clients attack in round `round_index` (`attack.start_round`)."""
    return round_index >= config.attack.start_round


def round_env_params(config: Any, run_key: jax.Array, env_params: Any, round_index: jax.Array):
    """Every client's env params of the round: wrapped in `AttackParams` under an `env`
    attack (the Byzantine flag from `start_round` on), else `env_params` itself.
    """
    if kind(config) != "env":
        return env_params
    num_clients = config.federation.num_clients
    flags = mask_for(config.attack, num_clients, run_key) & active(config, round_index)
    attack = attacks.get(config.attack.name).builder()(_section(config))
    return attack_params(env_params, flags, attack.value)


def attack_updates(
    config: Any, algorithm: Any, state: Any, inputs: Any, clients: Any
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """The participants' states as the server receives them, the attacking ones, metrics.

    Args:
        config: the run's config (an attack is configured).
        algorithm: the algorithm (`get_params` / `set_params`).
        state: the state the round started from.
        inputs: the round's `RoundInputs`.
        clients: the participants' states after local training.

    Returns:
        The clients (an `update` attack's params set into the Byzantine ones), the
        `[P]` mask of the participants that attacked, and `byzantine/count` (the
        Byzantine participants), `attack/active` and the attack's diagnostics.
    """
    num_clients = config.federation.num_clients
    mask = mask_for(config.attack, num_clients, state.key)
    byzantine = jnp.take(mask, inputs.ids, mode="fill", fill_value=False) & inputs.valid
    on = active(config, state.round)
    attacking = byzantine & on
    metrics = {
        "byzantine/count": byzantine.sum().astype(jnp.int32),
        "attack/active": on.astype(jnp.int32),
    }
    spec = attacks.get(config.attack.name)
    if spec.kind == "update":
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), ATTACK_STREAM)
        params = jax.vmap(algorithm.get_params)(clients)
        reference = state.global_params if inputs.start_params is None else inputs.start_params
        honest = inputs.valid & (inputs.num_updates > 0)
        sent, extra = apply_update_attack(
            spec.builder()(_section(config)),
            key,
            state.global_params,
            reference,
            params,
            attacking,
            honest,
        )
        clients = jax.vmap(algorithm.set_params)(clients, sent)
        metrics.update({f"attack/{name}": value for name, value in extra.items()})
    return clients, attacking, metrics


def detection_metrics(
    attacking: jax.Array, finite: jax.Array, returned: jax.Array, selected: jax.Array | None
) -> dict[str, jax.Array]:
    """How the server's screening and a selecting rule treated the malicious updates.

    Args:
        attacking: `[P]` the participants that attacked.
        finite: `[P]` the updates screening accepted (what the rule saw).
        returned: `[P]` the participants that sent an update.
        selected: `[P]` the rule's selection among the accepted updates (strategy
            metric `selected`), or None for a rule that selects nothing.

    Returns:
        `byzantine/screened_out` (malicious updates screening masked: non-finite) and,
        with `selected`: `byzantine/passed` (malicious updates the rule used),
        `byzantine/benign_dropped`, `byzantine/detection_rate` (malicious updates
        dropped / malicious updates seen; NaN when none was seen) and
        `byzantine/false_positive_rate` (benign dropped / benign seen).
    """
    out = {"byzantine/screened_out": (attacking & returned & ~finite).sum().astype(jnp.int32)}
    if selected is None:
        return out
    chosen = selected > 0
    malicious, benign = attacking & finite, ~attacking & finite
    caught = (malicious & ~chosen).sum()
    benign_dropped = (benign & ~chosen).sum()
    seen_malicious, seen_benign = malicious.sum(), benign.sum()
    out.update(
        {
            "byzantine/passed": (malicious & chosen).sum().astype(jnp.int32),
            "byzantine/benign_dropped": benign_dropped.astype(jnp.int32),
            "byzantine/detection_rate": jnp.where(
                seen_malicious > 0, caught / jnp.maximum(seen_malicious, 1), jnp.nan
            ),
            "byzantine/false_positive_rate": benign_dropped / jnp.maximum(seen_benign, 1),
        }
    )
    return out


def attacked_envs(config: Any, client_envs: Any) -> Any:
    """`client_envs` with its env wrapped in `AttackedEnv` under an `env` attack, else as is.

    With plain env params the wrapper is the env itself, so evaluation (which passes
    the base params) always runs the clean environment.
    """
    if kind(config) != "env":
        return client_envs
    from jfedrl.attacks.env import wrap_envs

    return wrap_envs(client_envs, attacks.get(config.attack.name).builder()(_section(config)))
