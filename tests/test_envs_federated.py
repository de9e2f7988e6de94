"""Every environment family through the federated simulator with PPO.

Heterogeneous clients (`random` variant) plus a drift schedule: init, two
blocks of rounds (the second must not recompile although the round, and so
the dynamics, changed) and evaluation.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jfedrl.round.simulator import Simulator, make_simulator
from jfedrl.schema.convert import replace_path
from tests.helpers import tiny_config

CASES = {
    "CartPole-v1": {"env.disturbance": "impulse", "env.disturbance_prob": 0.05},
    "Breakout-MinAtar": {"env.disturbance": "obs_noise", "env.disturbance_prob": 0.05},
    "GridWorld-5x5": {},
    "brax-inverted_pendulum": {},
}


@pytest.mark.parametrize(
    "name",
    # One family in the quick suite; the others compile for over a minute each here.
    [
        name if name == "CartPole-v1" else pytest.param(name, marks=pytest.mark.slow)
        for name in CASES
    ],
)
def test_random_clients_with_drift_train_and_evaluate(name):
    config = tiny_config(
        federation__num_clients=2,
        federation__rounds=4,
        federation__local_updates=1,
        algo__ppo__num_steps=8,
        algo__ppo__update_epochs=1,
        log__eval_episodes=1,
        env__name=name,
        env__variant="random",
        env__drift="sinusoidal",
        env__drift_period=4,
        env__max_episode_steps=16,
    )
    for path, value in CASES[name].items():
        config = replace_path(config, path, value)
    sim = make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    table0 = sim.envs.param_table(sim.current_env_params(state, 0))
    table1 = sim.envs.param_table(sim.current_env_params(state, 1))
    assert set(table0) == set(sim.envs.param_names) and table0
    # Heterogeneous clients, and the drift moves some param between rounds 0 and 1.
    assert any(not np.all(v == v[0]) for v in table0.values())
    assert any(not np.array_equal(table0[k], table1[k]) for k in table0)

    state, metrics = sim.run_block(state, 2)
    compiled = Simulator.run_block._cache_size()
    state, metrics = sim.run_block(state, 2)
    assert Simulator.run_block._cache_size() == compiled  # round 2-3: no recompilation
    assert int(state.round) == 4
    assert np.all(np.isfinite(np.asarray(metrics["train_return_mean"])))
    returns = np.asarray(sim.evaluate(state, jax.random.PRNGKey(1)))
    assert returns.shape == (2, 1) and np.all(np.isfinite(returns))
