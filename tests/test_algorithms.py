"""A2C, DQN (double / dueling) and TD3 (DDPG): the maths by hand, the federated loop,
tiny learning checks (the vmap equivalence of every algorithm: test_core_equivalences.py).

One simulator per algorithm is compiled once (module fixtures) and serves both the
"runs and counts its steps" checks and the learning check.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl.algorithms import a2c, common, dqn, onpolicy, replay, td3
from jfedrl.algorithms.base import Reference
from jfedrl.round.environment import make_client_envs
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.round.state import tree_all_finite
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import replace_path
from jfedrl.validation import validate
from tests.helpers import tiny_config


def _config(algo: str, env: str, fields: dict, **overrides):
    config = tiny_config(algo__name=algo, env__name=env, **overrides)
    for name, value in fields.items():
        config = replace_path(config, f"algo.{algo}.{name}", value)
    return config


class Run(NamedTuple):
    state: object
    returns: np.ndarray
    """`[blocks, rounds_per_block]` mean training return of the clients."""
    metrics: dict
    """The last block's metrics."""
    evals: np.ndarray
    steps_per_round: int


def _run(config, blocks: int) -> Run:
    sim = make_simulator(config)
    state = jax.jit(sim.init)(jax.random.PRNGKey(0))
    rounds = config.log.rounds_per_block
    returns = []
    for _ in range(blocks):
        state, metrics = sim.run_block(state, rounds)
        returns.append(np.asarray(metrics["train_return_mean"]))
    evals = np.asarray(sim.evaluate(state, jax.random.PRNGKey(1)))
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    return Run(state, np.stack(returns), metrics, evals, sim.env_steps_per_round)


# ------------------------------------------------------------------ replay buffer


def test_replay_buffer_wraps_around_and_samples_only_stored_items():
    example = {"x": jnp.zeros((2,)), "a": jnp.zeros((), jnp.int32)}
    buffer = replay.init(example, capacity=5)
    assert buffer.capacity == 5 and int(buffer.size) == 0

    def items(start, n):
        values = np.arange(start, start + n)
        return {"x": jnp.stack([values, -values], axis=1).astype(jnp.float32), "a": values}

    buffer = jax.jit(replay.add_batch)(buffer, items(0, 3))
    assert int(buffer.position) == 3 and int(buffer.size) == 3
    sampled = replay.sample(jax.random.PRNGKey(0), buffer, 64)
    assert set(np.asarray(sampled["a"]).tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(sampled["x"][:, 0], sampled["a"].astype(np.float32))

    # 4 more: items 3, 4 fill slots 3, 4; items 5, 6 overwrite slots 0, 1.
    buffer = jax.jit(replay.add_batch)(buffer, items(3, 4))
    assert int(buffer.position) == 2 and int(buffer.size) == 5
    np.testing.assert_array_equal(buffer.data["a"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.data["x"][:, 1], [-5, -6, -2, -3, -4])
    sampled = replay.sample(jax.random.PRNGKey(1), buffer, 256)
    assert set(np.asarray(sampled["a"]).tolist()) == {2, 3, 4, 5, 6}
    with pytest.raises(ValueError, match="capacity 5"):
        replay.add_batch(buffer, items(0, 6))


# ------------------------------------------------------------------ maths by hand


def test_dqn_and_double_dqn_targets_by_hand():
    reward = jnp.array([1.0, 0.5, -1.0])
    terminal = jnp.array([0.0, 1.0, 0.0])
    next_q_target = jnp.array([[1.0, 4.0, 2.0], [9.0, 9.0, 9.0], [3.0, -1.0, 0.5]])
    next_q_online = jnp.array([[5.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.1, 2.0]])
    gamma = 0.9
    vanilla = dqn.td_target(reward, terminal, gamma, next_q_target)
    # max_a Q_target(s', a): 4, (terminal), 3
    np.testing.assert_allclose(vanilla, [1.0 + 0.9 * 4.0, 0.5, -1.0 + 0.9 * 3.0], rtol=1e-6)
    double = dqn.td_target(reward, terminal, gamma, next_q_target, next_q_online)
    # online argmax: 0, 1, 2 -> Q_target = 1, (terminal), 0.5
    np.testing.assert_allclose(double, [1.0 + 0.9 * 1.0, 0.5, -1.0 + 0.9 * 0.5], rtol=1e-6)


def test_dueling_head_mean_advantage_identity():
    network = dqn.QNetwork(action_dim=3, hidden_sizes=(8,), dueling=True)
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    params = network.init(jax.random.PRNGKey(1), obs)
    q = network.apply(params, obs)
    value, advantage = network.apply(params, obs, method=dqn.QNetwork.heads)
    assert q.shape == (5, 3) and value.shape == (5,)
    np.testing.assert_allclose(q.mean(axis=-1), value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        q - value[:, None], advantage - advantage.mean(axis=-1, keepdims=True), atol=1e-6
    )
    np.testing.assert_allclose(
        dqn.dueling_q(jnp.array([2.0]), jnp.array([[1.0, 2.0, 6.0]])), [[0.0, 1.0, 5.0]]
    )


def test_linear_epsilon_schedule():
    eps = [float(dqn.linear_epsilon(jnp.asarray(s), 1.0, 0.1, 100.0)) for s in (0, 50, 100, 400)]
    np.testing.assert_allclose(eps, [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_td3_target_smoothing_clipping_and_min_of_twin_critics():
    target_action = jnp.array([[0.2], [0.9], [-0.7]])
    noise = jnp.array([[0.3], [0.05], [-0.9]])
    smoothed = td3.smoothed_target_action(target_action, noise, noise_clip=0.5)
    # 0.2 + clip(0.3) = 0.5; 0.9 + 0.05 = 0.95; -0.7 + clip(-0.9 -> -0.5) = -1.2 -> -1.
    np.testing.assert_allclose(smoothed, [[0.5], [0.95], [-1.0]], rtol=1e-6)
    target_qs = jnp.array([[3.0, -2.0, 5.0], [4.0, -3.0, 1.0]])
    y = td3.clipped_double_q_target(
        jnp.array([1.0, 0.0, 2.0]), jnp.array([0.0, 0.0, 1.0]), 0.5, target_qs
    )
    np.testing.assert_allclose(y, [1.0 + 0.5 * 3.0, 0.5 * -3.0, 2.0], rtol=1e-6)
    # One critic (DDPG): the target is that critic's value.
    y1 = td3.clipped_double_q_target(jnp.ones(3), jnp.zeros(3), 0.5, target_qs[1:])
    np.testing.assert_allclose(y1, 1.0 + 0.5 * target_qs[1], rtol=1e-6)


def test_nstep_advantages_by_hand():
    rewards = jnp.array([1.0, 2.0, 3.0])
    values = jnp.array([0.5, 1.0, 1.5])
    dones = jnp.array([False, True, False])
    gamma = 0.5
    adv, ret = onpolicy.compute_gae(rewards, values, dones, jnp.asarray(4.0), gamma, 1.0)
    # n-step returns, cut at the episode end after step 1, bootstrapped with V(s_3) = 4.
    expected_returns = [1.0 + 0.5 * 2.0, 2.0, 3.0 + 0.5 * 4.0]
    np.testing.assert_allclose(ret, expected_returns, rtol=1e-6)
    np.testing.assert_allclose(adv, np.array(expected_returns) - values, rtol=1e-6)
    # lambda = 0: one-step TD errors.
    adv0, _ = onpolicy.compute_gae(rewards, values, dones, jnp.asarray(4.0), gamma, 0.0)
    np.testing.assert_allclose(adv0, [1.0 + 0.5 * 1.0 - 0.5, 2.0 - 1.0, 3.0 + 2.0 - 1.5])


def test_prox_term_by_hand():
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    global_params = {"w": jnp.array([0.0, 0.0]), "b": jnp.array(1.0)}
    np.testing.assert_allclose(common.prox_term(params, global_params, 0.5), 0.25 * 9.0)
    assert float(common.prox_term(params, global_params, 0.0)) == 0.0


# ------------------------------------------------------------------ target networks at broadcast


@pytest.mark.parametrize(
    ("algo", "env", "fields"),
    [
        ("dqn", "CartPole-v1", {"hidden_sizes": [8], "buffer_size": 1024}),
        ("td3", "Pendulum-v1", {"hidden_sizes": [8], "buffer_size": 1024}),
    ],
)
def test_target_sync_global_resets_and_local_keeps_target(algo, env, fields):
    def build(target_sync):
        config = _config(algo, env, {**fields, "target_sync": target_sync})
        envs = make_client_envs(config.env, 1)
        return make_simulator(config).algorithm, envs.default_params

    for target_sync in ("global", "local"):
        algorithm, env_params = build(target_sync)
        state = algorithm.init(jax.random.PRNGKey(0), env_params)
        new = jax.tree.map(lambda x: x + 1.0, algorithm.get_params(state))
        fresh = algorithm.set_params(state, new)
        # Before any update the client adopts the broadcast as its target in both modes.
        for a, b in zip(jax.tree.leaves(fresh.target_params), jax.tree.leaves(new), strict=True):
            np.testing.assert_array_equal(a, b)
        trained = state.replace(updates=jnp.asarray(5, jnp.int32))
        synced = algorithm.set_params(trained, new)
        expected = new if target_sync == "global" else state.target_params
        for a, b in zip(
            jax.tree.leaves(synced.target_params), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ bad configs


@pytest.mark.parametrize(
    ("algo", "path", "value"),
    [
        ("a2c", "algo.a2c.num_steps", 0),
        ("a2c", "algo.a2c.gae_lambda", 1.5),
        ("a2c", "algo.a2c.optimizer", "sgd"),
        ("a2c", "algo.a2c.ent_coef", -0.1),
        ("dqn", "algo.dqn.buffer_size", 10),
        ("dqn", "algo.dqn.tau", 0.0),
        ("dqn", "algo.dqn.epsilon_end", 1.5),
        ("dqn", "algo.dqn.exploration_fraction", 0.0),
        ("dqn", "algo.dqn.target_update_interval", 0),
        ("dqn", "algo.dqn.loss", "l1"),
        ("dqn", "algo.dqn.target_sync", "server"),
        ("dqn", "algo.dqn.hidden_sizes", []),
        ("td3", "algo.td3.policy_delay", 0),
        ("td3", "algo.td3.noise_clip", -1.0),
        ("td3", "algo.td3.gamma", 1.5),
        ("td3", "algo.td3.batch_size", 0),
        ("td3", "algo.td3.activation", "sigmoid"),
    ],
)
def test_bad_config_values_name_the_field(algo, path, value):
    config = replace_path(tiny_config(algo__name=algo), path, value)
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        validate(config)


def test_action_space_mismatch_names_algo_name():
    with pytest.raises(ConfigError, match=r"algo\.name.*dqn.*discrete"):
        make_simulator(tiny_config(algo__name="dqn", env__name="Pendulum-v1"))
    with pytest.raises(ConfigError, match=r"algo\.name.*td3.*continuous"):
        make_simulator(tiny_config(algo__name="td3", env__name="CartPole-v1"))


# ------------------------------------------------------------------ DQN in the federated loop

DQN_FIELDS = {
    "num_envs": 4,
    "num_steps": 32,
    "gradient_steps": 32,
    "batch_size": 64,
    "buffer_size": 10000,
    "learning_starts": 256,
    "learning_rate": 1e-3,
    "hidden_sizes": [64, 64],
    "double": True,
    "dueling": True,
    "prox_mu": 1e-3,
}
DQN_BLOCKS = 4


@pytest.fixture(scope="module")
def dqn_run():
    config = _config(
        "dqn",
        "CartPole-v1",
        DQN_FIELDS,
        federation__num_clients=2,
        federation__rounds=16,
        federation__local_updates=4,
        log__rounds_per_block=4,
    )
    return _run(config, DQN_BLOCKS)


def test_dqn_runs_and_counts_its_steps(dqn_run):
    state = dqn_run.state
    assert bool(tree_all_finite(state.global_params))
    assert bool(tree_all_finite(state.clients.params))
    assert np.isfinite(dqn_run.evals).all() and dqn_run.evals.shape == (2, 2)
    assert dqn_run.metrics["prox"][-1] > 0  # the FedProx term is live
    rounds = 16
    per_client = rounds * 4 * 4 * 32
    # Every client trains every round: the buffer pointer counts the steps taken.
    np.testing.assert_array_equal(state.clients.buffer.position, [per_client] * 2)
    np.testing.assert_array_equal(state.clients.env_steps, [per_client] * 2)
    assert dqn_run.steps_per_round * rounds == int(state.clients.buffer.position.sum())
    # Learning starts at 256 steps: after the first local update (128 steps).
    np.testing.assert_array_equal(state.clients.updates, [(rounds * 4 - 1) * 32] * 2)


def test_dqn_learns_cartpole_with_two_clients(dqn_run):
    first, last = dqn_run.returns[0].mean(), dqn_run.returns[-1].mean()
    # Measured: first block ~25, last ~210, evaluation ~230; random play is ~20.
    assert last > 100.0 and last > 3 * first, dqn_run.returns
    assert dqn_run.evals.mean() > 100.0, dqn_run.evals


# ------------------------------------------------------------------ A2C

A2C_FIELDS = {"num_envs": 8, "num_steps": 16, "hidden_sizes": [64, 64]}


@pytest.fixture(scope="module")
def a2c_run():
    config = _config(
        "a2c",
        "CartPole-v1",
        A2C_FIELDS,
        federation__num_clients=2,
        federation__rounds=8,
        federation__local_updates=16,
        log__rounds_per_block=4,
    )
    return _run(config, 2)


def test_a2c_runs_and_learns_cartpole(a2c_run):
    assert bool(tree_all_finite(a2c_run.state.global_params))
    assert bool(tree_all_finite(a2c_run.state.clients.params))
    assert np.isfinite(a2c_run.evals).all() and a2c_run.evals.shape == (2, 2)
    assert a2c_run.steps_per_round == 2 * 16 * 8 * 16
    # Measured: the first rounds ~60-180, the second block ~250-460, evaluation 500.
    first_round, last_block = a2c_run.returns[0, 0], a2c_run.returns[1].mean()
    assert last_block > 150.0 and last_block > first_round + 50.0, a2c_run.returns
    assert a2c_run.evals.mean() > 150.0, a2c_run.evals


class CountingEnv:
    """Wraps an env and counts the `step` calls in its state."""

    def __init__(self, env):
        self.env = env

    def reset(self, key, params):
        obs, state = self.env.reset(key, params)
        return obs, (state, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        obs, inner, reward, terminated, truncated, info = self.env.step(
            key, state[0], action, params
        )
        return obs, (inner, state[1] + 1), reward, terminated, truncated, info

    def observation_space(self, params):
        return self.env.observation_space(params)

    def action_space(self, params):
        return self.env.action_space(params)


def test_a2c_continuous_counts_steps_and_uses_its_regularisers():
    fields = {"num_envs": 2, "num_steps": 8, "hidden_sizes": [16], "comm_coef": 0.1}
    config = _config("a2c", "Pendulum-v1", {**fields, "prox_mu": 0.01})
    envs = make_client_envs(config.env, 2)
    algorithm = a2c.build(config, CountingEnv(envs.env), envs.default_params)
    env_params = envs.client_params(jax.random.PRNGKey(0))
    clients = jax.vmap(algorithm.init)(jax.random.split(jax.random.PRNGKey(1), 2), env_params)
    global_params = jax.tree.map(lambda x: x[0], algorithm.get_params(clients))
    clients = jax.vmap(algorithm.set_params, in_axes=(0, None))(clients, global_params)
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    new, metrics = jax.jit(
        lambda k, c, p: local_training(algorithm, 2, k, c, p, Reference(global_params))
    )(keys, clients, env_params)
    assert bool(tree_all_finite(new.params))
    # Steps actually taken, per client: 2 updates x env_steps_per_update.
    assert algorithm.env_steps_per_update == 16
    np.testing.assert_array_equal(new.env_state[1].sum(axis=1), [2 * 16, 2 * 16])
    # The second update starts away from the global params: both terms are live.
    assert (np.asarray(metrics["prox"][1]) > 0).all()
    assert (np.asarray(metrics["comm_kl"][1]) > 0).all()
    params0 = jax.tree.map(lambda x: x[0], new.params)
    action = algorithm.act(params0, jnp.array([1.0, 0.0, 100.0]))
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0


# ------------------------------------------------------------------ TD3 / DDPG

TD3_FIELDS = {
    "num_envs": 4,
    "num_steps": 50,
    "gradient_steps": 100,
    "batch_size": 128,
    "buffer_size": 20000,
    "learning_starts": 800,
    "hidden_sizes": [64, 64],
    "comm_coef": 0.05,
    "prox_mu": 1e-4,
}
TD3_ROUNDS = 16


@pytest.fixture(scope="module")
def td3_run():
    config = _config(
        "td3",
        "Pendulum-v1",
        TD3_FIELDS,
        federation__num_clients=2,
        federation__rounds=TD3_ROUNDS,
        federation__local_updates=4,
        log__rounds_per_block=4,
    )
    return _run(config, TD3_ROUNDS // 4)


@pytest.mark.slow
def test_td3_runs_counts_steps_and_delays_the_actor(td3_run):
    state = td3_run.state
    assert bool(tree_all_finite(state.global_params))
    assert bool(tree_all_finite(state.clients.target_params))
    assert np.isfinite(td3_run.evals).all() and td3_run.evals.shape == (2, 2)
    assert td3_run.metrics["comm_l2"][-1] > 0  # the seed-001 regulariser is live
    per_client = TD3_ROUNDS * 4 * 4 * 50
    np.testing.assert_array_equal(state.clients.buffer.position, [per_client] * 2)
    assert td3_run.steps_per_round * TD3_ROUNDS == int(state.clients.buffer.position.sum())
    # Warm-up: learning starts after the 4th local update (800 steps).
    updates = (TD3_ROUNDS * 4 - 3) * 100
    np.testing.assert_array_equal(state.clients.updates, [updates] * 2)
    # Adam's step counts: the critics every update, the actor every policy_delay = 2.
    np.testing.assert_array_equal(state.clients.critic_opt_state[0].count, [updates] * 2)
    np.testing.assert_array_equal(state.clients.actor_opt_state[0].count, [updates // 2] * 2)


@pytest.mark.slow
def test_td3_learns_pendulum_with_two_clients(td3_run):
    # Measured: random play ~ -1200..-1500; evaluation after 8 rounds ~ -1200, after 12
    # ~ -900, after 16 ~ -190 (Pendulum is solved around -200).
    assert td3_run.evals.mean() > -600.0, td3_run.evals
    assert td3_run.returns[-1].mean() > td3_run.returns[0].mean(), td3_run.returns


def test_ddpg_switch_has_one_critic_and_updates():
    fields = {
        "ddpg": True,
        "num_envs": 2,
        "num_steps": 8,
        "gradient_steps": 4,
        "batch_size": 8,
        "buffer_size": 64,
        "learning_starts": 0,
        "hidden_sizes": [16],
    }
    sim = make_simulator(_config("td3", "Pendulum-v1", fields, federation__num_clients=2))
    state = jax.jit(sim.init)(jax.random.PRNGKey(0))
    assert list(state.global_params["critic"]["params"]) == ["MLP_0"]
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    new, metrics = jax.jit(
        lambda k, c, p: local_training(sim.algorithm, 1, k, c, p, Reference(state.global_params))
    )(keys, state.clients, state.env_params)
    assert bool(tree_all_finite(new))
    # No delay: the actor is updated with every critic update.
    np.testing.assert_array_equal(new.actor_opt_state[0].count, [4, 4])
    np.testing.assert_array_equal(new.critic_opt_state[0].count, [4, 4])
    assert not np.allclose(
        jax.tree.leaves(new.params["actor"])[0], jax.tree.leaves(state.clients.params["actor"])[0]
    )
