"""`jfedrl.experiments.traced`: every declared traceable field traces through every algorithm and
strategy (no Python control flow on it), and none reaches the evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.extend.core import Literal

from jfedrl import algorithms, strategies
from jfedrl.config import Config, traceable
from jfedrl.experiments import traced
from jfedrl.round.simulator import Simulator, make_simulator
from jfedrl.strategies.base import ClientInfo
from tests.helpers import tiny_config

#: A tiny valid config per algorithm (TD3 and SAC need continuous actions).
ALGORITHM_CONFIGS = {
    "ppo": {},
    "a2c": {"algo__a2c__num_envs": 2, "algo__a2c__hidden_sizes": [8]},
    "dqn": {
        "algo__dqn__hidden_sizes": [8],
        "algo__dqn__buffer_size": 256,
        "algo__dqn__gradient_steps": 2,
    },
    "td3": {
        "env__name": "Pendulum-v1",
        "algo__td3__hidden_sizes": [8],
        "algo__td3__buffer_size": 256,
        "algo__td3__gradient_steps": 2,
    },
    "sac": {
        "env__name": "Pendulum-v1",
        "algo__sac__hidden_sizes": [8],
        "algo__sac__buffer_size": 256,
        "algo__sac__gradient_steps": 2,
    },
}


def fields_of(prefix: str) -> list[str]:
    return [p for p in traceable() if p.startswith(prefix)]


def values_of(config: Config, fields: list[str]) -> dict[str, jax.Array]:
    return {p: jnp.float32(traced.get_path(config, p)) for p in fields}


def reaches_outputs(jaxpr, inputs) -> bool:
    """True if one of `inputs` flows into an output of `jaxpr` (conservative over sub-jaxprs)."""
    live = set(inputs)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in live for v in eqn.invars):
            live.update(eqn.outvars)
    return any(not isinstance(v, Literal) and v in live for v in jaxpr.outvars)


def test_every_algorithm_and_strategy_has_a_case():
    assert set(ALGORITHM_CONFIGS) == set(algorithms.names())
    prefixes = ("algo.", "strategy.", "attack.", "federation.", "personal.")
    assert all(p.startswith(prefixes) for p in traceable())
    sections = {p.split(".")[1] for p in traceable() if p.startswith("algo.")}
    assert sections <= set(algorithms.names())


@pytest.mark.parametrize(
    "algo",
    ["ppo", *(pytest.param(a, marks=pytest.mark.slow) for a in ("a2c", "dqn", "td3", "sac"))],
)
def test_algorithm_fields_trace_through_the_round_but_not_the_evaluation(algo):
    config = tiny_config(algo__name=algo, **ALGORITHM_CONFIGS[algo])
    simulator = make_simulator(config)
    fields = fields_of(f"algo.{algo}.") + ["federation.staleness_decay"]
    assert len(fields) > 1
    values = values_of(config, fields)
    state = jax.eval_shape(simulator.init, jax.random.PRNGKey(0))

    def round_and_init(values):
        run = traced.simulator_with(simulator, values)
        start = Simulator.init.__wrapped__(run, jax.random.PRNGKey(0))
        return Simulator.run_block.__wrapped__(run, start, 1)

    # Raises (a concretization / bool conversion error) if a field steers Python code.
    jax.make_jaxpr(round_and_init)(values)

    def evaluate(values, state):
        run = traced.simulator_with(simulator, values)
        return Simulator.evaluate.__wrapped__(run, state, jax.random.PRNGKey(1))

    jaxpr = jax.make_jaxpr(evaluate)(values, state).jaxpr
    # The first inputs are the traced values (then the state's leaves): none reaches a return.
    assert not reaches_outputs(jaxpr, jaxpr.invars[: len(fields)])
    assert reaches_outputs(jaxpr, jaxpr.invars[len(fields) :])  # the check sees a dependence


def test_ditto_lambda_traces_into_the_personal_learner():
    config = tiny_config(personal__name="ditto")
    simulator = make_simulator(config)
    values = values_of(config, ["personal.ditto.lam"])

    def round_and_init(values):
        run = traced.simulator_with(simulator, values)
        start = Simulator.init.__wrapped__(run, jax.random.PRNGKey(0))
        return Simulator.run_block.__wrapped__(run, start, 1)

    jaxpr = jax.make_jaxpr(round_and_init)(values).jaxpr
    assert reaches_outputs(jaxpr, jaxpr.invars[:1])


@pytest.mark.parametrize("name", strategies.names())
def test_strategy_fields_trace_through_init_and_aggregate(name):
    config = traced.set_path(Config(), "strategy.name", name)
    fields = fields_of("strategy.")
    n = 6
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    stacked = jax.tree.map(lambda x: jnp.stack([x + i for i in range(n)]), params)
    info = ClientInfo(jnp.ones(n), jnp.arange(n, dtype=jnp.float32), jnp.ones(n, bool), jnp.ones(n))

    def aggregate(values):
        strategy_config = traced.with_traced(config, values).strategy
        with jax.ensure_compile_time_eval():
            strategy = strategies.make(strategy_config, num_clients=n)
        server_state = strategy.init(params)
        return strategy.aggregate(server_state, params, stacked, info, jax.random.PRNGKey(0))

    jax.make_jaxpr(aggregate)(values_of(config, fields))


def test_only_declared_fields_may_be_traced():
    with pytest.raises(ValueError, match="algo.ppo.num_envs: not a traceable field"):
        traced.with_traced(Config(), {"algo.ppo.num_envs": 3})


def test_static_part_ignores_exactly_the_traceable_fields():
    a = tiny_config(algo__ppo__learning_rate=1e-3, strategy__fedavgm__lr=0.5)
    b = tiny_config(algo__ppo__learning_rate=3e-3, strategy__fedavgm__lr=0.1)
    assert traced.static_part(a) == traced.static_part(b)
    assert traced.varying([a, b]) == ["algo.ppo.learning_rate", "strategy.fedavgm.lr"]
    c = tiny_config(algo__ppo__prox_mu=0.1)
    assert traced.static_part(a) != traced.static_part(c)


def test_fedprox_mu_traces_into_the_algorithms_proximal_term():
    config = tiny_config(strategy__name="fedprox", strategy__fedprox__mu=0.05)
    simulator = make_simulator(config)

    def loss_weight(mu):
        run = traced.simulator_with(simulator, {"strategy.fedprox.mu": mu})
        assert run.config.strategy.fedprox.mu is mu  # the tracer itself, not a coerced float
        start = Simulator.init.__wrapped__(run, jax.random.PRNGKey(0))
        state, _ = Simulator.run_block.__wrapped__(run, start, 1)
        return state.global_params

    jaxpr = jax.make_jaxpr(loss_weight)(jnp.float32(0.05)).jaxpr
    assert reaches_outputs(jaxpr, jaxpr.invars[:1])  # mu steers the trained params
