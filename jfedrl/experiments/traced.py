"""Traced hyperparameters: setups that differ only in them share one compiled program.

A float hyperparameter that the jitted round uses only arithmetically (a learning
rate, a loss coefficient, a server step size) can be a traced scalar instead of a
Python constant: the sweep builds the simulator INSIDE the vmapped program from a
config whose such fields hold tracers (`with_traced`), so `optax.adam(lr)`, the
losses and the strategies use them as they are. Fields that change shapes or
choose code paths in Python (`if mu > 0`) cannot be traced; setups differing in
them are compiled as separate groups (`static_differences` says which field split
them).

The attack is the one name that is traced: setups that differ only in
`attack.name`, each an `update` or `env` attack, form one group too
(`ATTACK`; `jfedrl.attacks.round.AttackChoice`), the run's attack a traced index.

A field declares itself traceable (`param(..., traceable=True)` or `switch=True`,
`jfedrl.schema.fields`); `jfedrl.config.traceable()` lists them. tests/test_traced.py
traces every such field through every algorithm and strategy that reads it, and
checks that none of them reaches the evaluation (the sweep evaluates all runs of a
group with one program).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from jfedrl import algorithms, personal, strategies
from jfedrl import config as jconfig
from jfedrl.config import Config
from jfedrl.schema.convert import replace_path


def get_path(config: Any, dotted: str) -> Any:
    """The value of the field at `a.b.c`."""
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def set_path(config: Any, dotted: str, value: Any) -> Any:
    """`config` with the field at `a.b.c` set to `value` as it is (no coercion: a tracer)."""
    return replace_path(config, dotted, value, coerce=False)


ATTACK = "attack.name"
"""The traced choice: a group's runs may differ in it (their `update` / `env` attack)."""

#: `static_value` of every attack that can share a program with other attacks.
SWITCHED_ATTACK = "<an update or env attack: traced>"


def with_traced(config: Config, values: Mapping[str, Any]) -> Config:
    """`config` with each `dotted.path -> value` of `values` set (values may be tracers)."""
    allowed = jconfig.traceable()
    for path in values:
        if path not in allowed:
            raise ValueError(f"{path}: not a traceable field (see jfedrl.config.traceable)")
    for path, value in values.items():
        config = set_path(config, path, value)
    return config


def simulator_with(simulator: Any, values: Mapping[str, Any]) -> Any:
    """`simulator` rebuilt with the fields of `values` set (inside a trace: tracers).

    Only the algorithm and the strategy read traceable fields; the environments,
    the mesh and the participants are the (validated) simulator's own.
    """
    if ATTACK in values:
        simulator = dataclasses.replace(
            simulator, attack_choice=simulator.attack_choice.with_index(values[ATTACK])
        )
        values = {path: value for path, value in values.items() if path != ATTACK}
    if not values:
        return simulator
    traced = with_traced(simulator.config, values)
    # Builders compute shapes with jnp on constants: evaluate those now, not as tracers.
    with jax.ensure_compile_time_eval():
        env, env_params = simulator.envs.env, simulator.envs.default_params
        algorithm = personal.wrap_algorithm(
            traced,
            algorithms.make(traced, env, env_params),
            lambda c: algorithms.make(c, env, env_params),
            simulator.envs,
        )
        strategy = strategies.make(traced.strategy, num_clients=simulator.padded_participants)
        strategy = personal.wrap_strategy(traced, strategy)
    return dataclasses.replace(simulator, config=traced, algorithm=algorithm, strategy=strategy)


def static_value(path: str, value: Any) -> Any:
    """What of a field's value is compiled into the program: nothing for a traceable
    field (0.0), whether it is on for a switch, the value itself otherwise.
    """
    if path == ATTACK:
        from jfedrl.attacks.round import switchable

        return SWITCHED_ATTACK if switchable(value) else value
    if path in jconfig.switches():
        return None if value is None else float(value > 0)
    return 0.0 if path in jconfig.traceable() else value


def static_part(config: Config) -> Config:
    """`config` with every traceable field reduced to `static_value`: equal static parts
    compile alike.
    """
    for path in (*jconfig.traceable(), ATTACK):
        config = set_path(config, path, static_value(path, get_path(config, path)))
    return config


def varying(configs: list[Config]) -> list[str]:
    """The traced fields whose values differ between `configs` (in field order; the
    attack last).
    """
    paths = (*jconfig.traceable(), ATTACK)
    return [p for p in paths if len({get_path(c, p) for c in configs}) > 1]


def why_static(path: str) -> str:
    """Why a field splits setups into groups, for the sweep's log."""
    return jconfig.static_reason(path) or "changes shapes or static structure"
