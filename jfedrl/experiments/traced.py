"""Traced hyperparameters: setups that differ only in them share one compiled program.

A float hyperparameter that the jitted round uses only arithmetically (a learning
rate, a loss coefficient, a server step size) can be a traced scalar instead of a
Python constant: the sweep builds the simulator INSIDE the vmapped program from a
config whose such fields hold tracers (`with_traced`), so `optax.adam(lr)`, the
losses and the strategies use them as they are. Fields that change shapes or
choose code paths in Python (`if mu > 0`) cannot be traced; setups differing in
them are compiled as separate groups (`static_differences` says which field split
them).

`TRACEABLE` is the declared set; tests/test_traced.py traces every field of it
through every algorithm and strategy that reads it, and checks that none of them
reaches the evaluation (the sweep evaluates all runs of a group with one program).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from jfedrl import algorithms, strategies
from jfedrl.config import Config
from jfedrl.schema.convert import replace_path

#: Coefficients that switch a loss term on when > 0 (`algorithms.common.switched_on`):
#: setups with the term on share a program with the coefficient traced; setups with it
#: off (0) and on compile apart.
SWITCHES: tuple[str, ...] = (
    "algo.ppo.comm_coef",
    "algo.ppo.prox_mu",
    "algo.ppo.kl_target",
    "algo.a2c.comm_coef",
    "algo.a2c.prox_mu",
    "algo.dqn.prox_mu",
    "algo.td3.comm_coef",
    "algo.td3.prox_mu",
    "strategy.prox_mu",
)

#: Config fields that may hold a traced scalar inside the jitted round.
TRACEABLE: tuple[str, ...] = (
    "algo.ppo.learning_rate",
    "algo.ppo.gamma",
    "algo.ppo.gae_lambda",
    "algo.ppo.clip_eps",
    "algo.ppo.ent_coef",
    "algo.ppo.vf_coef",
    "algo.ppo.max_grad_norm",
    "algo.ppo.kl_coef",
    "algo.a2c.learning_rate",
    "algo.a2c.gamma",
    "algo.a2c.gae_lambda",
    "algo.a2c.ent_coef",
    "algo.a2c.vf_coef",
    "algo.a2c.max_grad_norm",
    "algo.dqn.learning_rate",
    "algo.dqn.max_grad_norm",
    "algo.dqn.gamma",
    "algo.dqn.epsilon_start",
    "algo.dqn.epsilon_end",
    "algo.td3.actor_learning_rate",
    "algo.td3.critic_learning_rate",
    "algo.td3.gamma",
    "algo.td3.tau",
    "algo.td3.exploration_noise",
    "algo.td3.policy_noise",
    "algo.td3.noise_clip",
    "strategy.server_lr",
    "strategy.beta1",
    "strategy.beta2",
    "strategy.tau",
    "strategy.temperature",
    "strategy.evo_mutation",
    "strategy.evo_crossover",
    "strategy.pso_inertia",
    "strategy.pso_cognitive",
    "strategy.pso_social",
    "strategy.dp_clip",
    "strategy.dp_noise",
    "federation.staleness_decay",
    *SWITCHES,
)

#: Why some float fields are not traceable (they are compiled into the program).
NOT_TRACEABLE: dict[str, str] = {
    "prox_mu": "switches the proximal term on in Python (0 and > 0 compile apart)",
    "comm_coef": "switches the communication term (and the peers' params) on in Python "
    "(0 and > 0 compile apart)",
    "kl_target": "switches the adaptive KL penalty on in Python (0 and > 0 compile apart)",
    "exploration_fraction": "sets an integer decay horizon",
    "strategy.server_momentum": "switches the server momentum state off at 0",
    "strategy.trim_beta": "sets how many clients are trimmed (a shape)",
    "strategy.clip_update_norm": "switches update clipping on in Python",
    "strategy.dp_delta": "feeds the host's privacy accountant",
    "strategy.dp_epsilon_budget": "is read by the host between blocks",
    "federation.straggler_prob": "switches system heterogeneity on in Python",
    "federation.dropout_prob": "switches system heterogeneity on in Python",
    "federation.participation": "sets the number of participants (a shape)",
}


def get_path(config: Any, dotted: str) -> Any:
    """The value of the field at `a.b.c`."""
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def set_path(config: Any, dotted: str, value: Any) -> Any:
    """`config` with the field at `a.b.c` set to `value` as it is (no coercion: a tracer)."""
    return replace_path(config, dotted, value, coerce=False)


def with_traced(config: Config, values: Mapping[str, Any]) -> Config:
    """`config` with each `dotted.path -> value` of `values` set (values may be tracers)."""
    for path in values:
        if path not in TRACEABLE:
            raise ValueError(
                f"{path}: not a traceable field (see jfedrl.experiments.traced.TRACEABLE)"
            )
    for path, value in values.items():
        config = set_path(config, path, value)
    return config


def simulator_with(simulator: Any, values: Mapping[str, Any]) -> Any:
    """`simulator` rebuilt with the fields of `values` set (inside a trace: tracers).

    Only the algorithm and the strategy read traceable fields; the environments,
    the mesh and the participants are the (validated) simulator's own.
    """
    if not values:
        return simulator
    config = with_traced(simulator.config, values)
    # Builders compute shapes with jnp on constants: evaluate those now, not as tracers.
    with jax.ensure_compile_time_eval():
        algorithm = algorithms.make(config, simulator.envs.env, simulator.envs.default_params)
        strategy = strategies.make(config.strategy, num_clients=simulator.padded_participants)
    return dataclasses.replace(simulator, config=config, algorithm=algorithm, strategy=strategy)


def static_value(path: str, value: Any) -> Any:
    """What of a field's value is compiled into the program: nothing for a traceable
    field (0.0), whether it is on for a switch, the value itself otherwise.
    """
    if path in SWITCHES:
        return None if value is None else float(value > 0)
    return 0.0 if path in TRACEABLE else value


def static_part(config: Config) -> Config:
    """`config` with every traceable field reduced to `static_value`: equal static parts
    compile alike.
    """
    for path in TRACEABLE:
        config = set_path(config, path, static_value(path, get_path(config, path)))
    return config


def varying(configs: list[Config]) -> list[str]:
    """The traceable fields whose values differ between `configs` (in `TRACEABLE` order)."""
    return [p for p in TRACEABLE if len({get_path(c, p) for c in configs}) > 1]


def why_static(path: str) -> str:
    """Why a field splits setups into groups, for the sweep's log."""
    reason = NOT_TRACEABLE.get(path) or NOT_TRACEABLE.get(path.rsplit(".", 1)[-1])
    return reason or "changes shapes or static structure"
