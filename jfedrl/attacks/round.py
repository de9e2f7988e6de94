"""The attack's side of a round, as `Simulator` calls it (jitted with the round).

Three hooks, each a no-op unless `attack.name` is an attack of the matching kind
(so a run without an attack traces exactly the round it always did):
`round_env_params` gives an `env` attack's Byzantine clients their flag in the
round's env params; `attack_updates` applies an `update` attack to the trained
participants before screening; `detection_metrics` scores a rule that reports
the participants it `selected` against the Byzantine set.

A sweep compiles setups that differ only in their attack as one program
(`jfedrl.experiments.traced`): the group's simulator holds an `AttackChoice`,
the group's attacks with a traced index of the run's own. The env is wrapped
once with every env kind of the group; `attack_updates` computes every update
attack of the group and keeps the run's (`lax.switch`; under the sweep's vmap,
a select). The same keys and the same arithmetic as the run alone reach the
selected attack, so a run of such a group equals the run alone (to float
reassociation); the price is every attack's work in every run.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True, eq=False)
class AttackChoice:
    """The attacks a sweep group compiles as one program, and the run's own.

    Attributes:
        names: the group's `attack.name` values, each an `update` or `env` attack.
        index: inside the program, the run's attack as a (traced) int32 index into
            `names`; None outside it.
        metric_keys: `name -> its diagnostic keys` (`attack/<key>`), recorded when
            the round is traced: every run of the group carries the union, and the
            sweep keeps a run's own keys only (`foreign_keys`).
    """

    names: tuple[str, ...]
    index: Any = None
    metric_keys: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def with_index(self, index: Any) -> AttackChoice:
        """The same choice (sharing `metric_keys`) for the run whose attack is `index`."""
        return AttackChoice(self.names, index, self.metric_keys)

    def foreign_keys(self, name: str) -> set[str]:
        """The metric keys of the group's other attacks that `name`'s runs do not have."""
        own = set(self.metric_keys.get(name, ()))
        return {k for keys in self.metric_keys.values() for k in keys} - own


def switchable(name: str) -> bool:
    """Whether runs of attack `name` can share a program with other attacks: an
    `update` or `env` attack (not `none`, whose round has no attack at all).
    """
    return attacks.get(name).kind in ("update", "env")


def kind(config: Any) -> str:
    """The configured attack's kind: `none`, `update` or `env`."""
    return attacks.get(config.attack.name).kind


def _section(config: Any, name: str | None = None) -> Any:
    return getattr(config.attack, name or config.attack.name, None)


def _names(config: Any, choice: AttackChoice | None) -> tuple[str, ...]:
    return choice.names if choice is not None else (config.attack.name,)


def _env_kinds(config: Any, choice: AttackChoice | None) -> tuple[str, ...]:
    """The distinct `EnvAttack.kind`s of the env attacks among the run's (group's) names."""
    kinds: list[str] = []
    for name in _names(config, choice):
        if attacks.get(name).kind == "env":
            env_kind = attacks.get(name).builder()(_section(config, name)).kind
            if env_kind not in kinds:
                kinds.append(env_kind)
    return tuple(kinds)


def active(config: Any, round_index: jax.Array) -> jax.Array:
    """Whether the Byzantine clients attack in round `round_index` (`attack.start_round`)."""
    return round_index >= config.attack.start_round


def round_env_params(
    config: Any,
    run_key: jax.Array,
    env_params: Any,
    round_index: jax.Array,
    choice: AttackChoice | None = None,
):
    """Every client's env params of the round: wrapped in `AttackParams` under an `env`
    attack (the Byzantine flag from `start_round` on), else `env_params` itself.

    With a `choice` holding env attacks, every run's params are wrapped; the flag is
    off unless the run's own attack is an env attack, `which` names its kind.
    """
    num_clients = config.federation.num_clients
    if choice is None:
        if kind(config) != "env":
            return env_params
        flags = mask_for(config.attack, num_clients, run_key) & active(config, round_index)
        attack = attacks.get(config.attack.name).builder()(_section(config))
        return attack_params(env_params, flags, attack.value)
    kinds = _env_kinds(config, choice)
    if not kinds:
        return env_params
    is_env, values, which = [], [], []
    for name in choice.names:
        env = attacks.get(name).kind == "env"
        attack = attacks.get(name).builder()(_section(config, name)) if env else None
        is_env.append(env)
        values.append(jnp.asarray(attack.value if env else 0.0, jnp.float32))
        which.append(kinds.index(attack.kind) if env else 0)
    index = choice.index
    flags = mask_for(config.attack, num_clients, run_key) & active(config, round_index)
    flags = flags & jnp.asarray(is_env)[index]
    return attack_params(
        env_params, flags, jnp.stack(values)[index], jnp.asarray(which, jnp.int32)[index]
    )


def attack_updates(
    config: Any,
    algorithm: Any,
    state: Any,
    inputs: Any,
    clients: Any,
    choice: AttackChoice | None = None,
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """The participants' states as the server receives them, the attacking ones, metrics.

    Args:
        config: the run's config (an attack is configured).
        algorithm: the algorithm (`get_params` / `set_params`).
        state: the state the round started from.
        inputs: the round's `RoundInputs`.
        clients: the participants' states after local training.
        choice: a sweep group's attacks and the run's own (module doc), or None.

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
    names = _names(config, choice)
    updates = [name for name in names if attacks.get(name).kind == "update"]
    if not updates:
        return clients, attacking, metrics
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), ATTACK_STREAM)
    params = jax.vmap(algorithm.get_params)(clients)
    reference = state.global_params if inputs.start_params is None else inputs.start_params
    honest = inputs.valid & (inputs.num_updates > 0)

    def branch(name: str):
        def run():
            if attacks.get(name).kind != "update":
                return params, {}
            return apply_update_attack(
                attacks.get(name).builder()(_section(config, name)),
                key,
                state.global_params,
                reference,
                params,
                attacking,
                honest,
            )

        return run

    if choice is None:
        sent, extra = branch(names[0])()
    else:
        shapes = {name: jax.eval_shape(branch(name))[1] for name in names}
        union = {k: v for extras in shapes.values() for k, v in extras.items()}
        choice.metric_keys.update(
            {name: tuple(f"attack/{k}" for k in extras) for name, extras in shapes.items()}
        )

        def filled(name: str):
            def run():
                sent, extra = branch(name)()
                missing = {
                    k: jnp.full(v.shape, jnp.nan, v.dtype)
                    if jnp.issubdtype(v.dtype, jnp.inexact)
                    else jnp.zeros(v.shape, v.dtype)
                    for k, v in union.items()
                    if k not in extra
                }
                return sent, {**extra, **missing}

            return run

        sent, extra = jax.lax.switch(choice.index, [filled(name) for name in names])
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


def attacked_envs(config: Any, client_envs: Any, choice: AttackChoice | None = None) -> Any:
    """`client_envs` with its env wrapped in `AttackedEnv` under an `env` attack (with a
    `choice`: every env kind of the group), else as is.

    With plain env params the wrapper is the env itself, so evaluation (which passes
    the base params) always runs the clean environment.
    """
    kinds = _env_kinds(config, choice)
    if not kinds:
        return client_envs
    from jfedrl.attacks.env import wrap_envs

    return wrap_envs(client_envs, kinds)
