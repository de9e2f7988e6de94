"""TD3 with separate aggregation periods for actor and critic (issue 12 part 3, seed 001).

Seed 001 sends the critic every N critic updates and the actor every M * L and
claims that with N = L = 1 federated TD3 is centralised TD3. Prepare tiny TD3
federations on Pendulum; execute jitted rounds; assert the claim exactly for one
client, and that with two clients a component is averaged only when it is due.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jfedrl.algorithms.base import Reference
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import replace_path
from jfedrl.validation import validate
from tests.helpers import equal_trees, row, tiny_config

POLICY_DELAY = 2


def _config(num_clients: int, **fields):
    config = tiny_config(
        algo__name="td3",
        env__name="Pendulum-v1",
        federation__num_clients=num_clients,
        federation__local_updates=1,
    )
    base = {
        "hidden_sizes": [8],
        "num_envs": 2,
        "num_steps": 4,
        "batch_size": 16,
        "buffer_size": 256,
        "learning_starts": 16,
        "gradient_steps": 1,
        "policy_delay": POLICY_DELAY,
    }
    for name, value in {**base, **fields}.items():
        config = replace_path(config, f"algo.td3.{name}", value)
    return config


def test_one_client_with_n_l_1_is_centralised_td3():
    """N = 1 critic update per round (critic_period 1); the actor is updated every M =
    policy_delay critic updates and sent after each (L = 1): actor_period = M rounds."""
    rounds = 10
    sim = make_simulator(_config(1, critic_period=1, actor_period=POLICY_DELAY))
    state = jax.jit(sim.init)(jax.random.PRNGKey(0))
    agent = state.clients  # the centralised agent: one TD3 learner, no server
    step = jax.jit(sim.round_step)
    train = jax.jit(
        lambda keys, agent: local_training(
            sim.algorithm, 1, keys, agent, state.env_params, Reference(row(agent.params, 0))
        )
    )
    federated = state
    for r in range(rounds):
        federated, _ = step(federated)
        # The simulator's key for client 0 in round r (begin_round's derivation).
        _, key_clients, _ = jax.random.split(jax.random.fold_in(state.key, r), 3)
        agent, _ = train(jax.random.split(key_clients, 1), agent)
    assert int(agent.updates[0]) > 2 * POLICY_DELAY  # it learned, with delayed actor updates
    assert equal_trees(federated.clients, agent)
    assert equal_trees(federated.global_params, row(agent.params, 0))


@pytest.fixture(scope="module")
def two_clients():
    sim = make_simulator(
        _config(2, critic_period=1, actor_period=2, policy_delay=1, learning_starts=0)
    )
    state0 = jax.jit(sim.init)(jax.random.PRNGKey(1))
    step = jax.jit(sim.round_step)
    state1, _ = step(state0)
    state2, _ = step(state1)
    return sim, state0, state1, state2


def test_actor_is_averaged_only_every_actor_period(two_clients):
    sim, state0, state1, state2 = two_clients
    # After round 1 the critic is averaged, the actor is not (period 2).
    assert equal_trees(state1.global_params["actor"], state0.global_params["actor"])
    assert not equal_trees(state1.global_params["critic"], state0.global_params["critic"])
    # After round 2 both are: the actor is the mean of the clients' actors.
    assert not equal_trees(state2.global_params["actor"], state0.global_params["actor"])
    for got, clients in zip(
        jax.tree.leaves(state2.global_params["actor"]),
        jax.tree.leaves(state2.clients.params["actor"]),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(clients).mean(0), rtol=1e-6)


def test_a_component_not_due_stays_local_at_the_broadcast(two_clients):
    sim, _, state1, state2 = two_clients
    inputs = jax.jit(sim.begin_round)(state1)
    # Round 1: the clients keep their own actors and receive the averaged critic.
    assert equal_trees(inputs.clients.params["actor"], state1.clients.params["actor"])
    assert not equal_trees(row(inputs.clients.params["actor"], 0), state1.global_params["actor"])
    for i in range(2):
        assert equal_trees(row(inputs.clients.params["critic"], i), state1.global_params["critic"])
    # Round 2: both components are broadcast.
    inputs = jax.jit(sim.begin_round)(state2)
    for i in range(2):
        assert equal_trees(row(inputs.clients.params, i), state2.global_params)


@pytest.mark.parametrize("name", ["critic_period", "actor_period"])
def test_periods_must_be_positive(name):
    with pytest.raises(ConfigError, match=f"algo.td3.{name}: must be >= 1"):
        validate(_config(1, **{name: 0}))
