"""The equivalences that make federated results trustworthy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jfedrl import algorithms, strategies
from jfedrl.algorithms.base import Reference
from jfedrl.config import StrategyConfig
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.convert import replace_path
from jfedrl.strategies.base import ClientInfo
from tests.helpers import tiny_config

NUM_CLIENTS = 3


@pytest.fixture(scope="module")
def sim():
    return make_simulator(tiny_config(federation__num_clients=NUM_CLIENTS))


@pytest.fixture(scope="module")
def state(sim):
    return sim.init(jax.random.PRNGKey(0))


def _allclose_trees(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def _equal_trees(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _slice(tree, i):
    return jax.tree.map(lambda x: x[i : i + 1], tree)


#: A tiny config per registered algorithm (TD3 also as DDPG); learning starts inside
#: the two local updates, so the gradient path is compared too.
ALGORITHM_FIELDS = {
    "ppo": ("CartPole-v1", {}),
    "a2c": ("CartPole-v1", {"num_envs": 2, "num_steps": 8, "hidden_sizes": [16]}),
    "dqn": (
        "CartPole-v1",
        {
            "num_envs": 2,
            "num_steps": 8,
            "gradient_steps": 4,
            "batch_size": 8,
            "buffer_size": 64,
            "learning_starts": 16,
            "hidden_sizes": [16],
        },
    ),
    "td3": (
        "Pendulum-v1",
        {
            "num_envs": 2,
            "num_steps": 8,
            "gradient_steps": 4,
            "batch_size": 8,
            "buffer_size": 64,
            "learning_starts": 16,
            "hidden_sizes": [16],
        },
    ),
}
ALGORITHM_FIELDS["sac"] = ("Pendulum-v1", ALGORITHM_FIELDS["td3"][1])
VARIANTS = [(name, {}) for name in ALGORITHM_FIELDS] + [("td3", {"ddpg": True})]


def test_every_registered_algorithm_is_covered():
    assert set(ALGORITHM_FIELDS) == set(algorithms.names())


def _algorithm_config(name, extra):
    env, fields = ALGORITHM_FIELDS[name]
    config = tiny_config(algo__name=name, env__name=env, federation__num_clients=NUM_CLIENTS)
    for field, value in {**fields, **extra}.items():
        config = replace_path(config, f"algo.{name}.{field}", value)
    return config


@pytest.mark.parametrize(
    "name, extra", VARIANTS, ids=[n + ("-ddpg" if e else "") for n, e in VARIANTS]
)
def test_vmapped_clients_equal_each_client_alone(name, extra):
    """`jax.vmap` over clients == each client's update run on its own (`lax.map`), for
    every algorithm; and `set_params(get_params)` is the identity on a client."""
    sim = make_simulator(_algorithm_config(name, extra))
    algo = sim.algorithm
    state = jax.jit(sim.init)(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(7), NUM_CLIENTS)
    reference = Reference(state.global_params, state.peer_params, state.peer_weights)

    def both(keys, clients, env_params):
        batched = local_training(algo, 2, keys, clients, env_params, reference)

        def alone(args):
            one = jax.tree.map(lambda x: x[None], args)
            client, metrics = local_training(algo, 2, *one, reference)
            return jax.tree.map(lambda x: x[0], client), jax.tree.map(lambda x: x[:, 0], metrics)

        return batched, jax.lax.map(alone, (keys, clients, env_params))

    (batched, batched_metrics), (single, single_metrics) = jax.jit(both)(
        keys, state.clients, state.env_params
    )
    _allclose_trees(batched, single, rtol=1e-5, atol=1e-6)
    for metric, value in batched_metrics.items():
        # lax.map stacks clients first: [K, updates] vs the vmapped [updates, K].
        np.testing.assert_allclose(
            value, single_metrics[metric].T, rtol=1e-5, atol=1e-6, err_msg=metric
        )
    # The clients really differ (own keys and envs), so the comparison is not vacuous.
    params = algo.get_params(batched)
    assert any(not np.allclose(x[0], x[1]) for x in jax.tree.leaves(params))

    # get/set round trip on one client, exactly: set_params really sets what get_params
    # reads, and setting twice is setting once (set_params may also reset derived state,
    # e.g. DQN's target network under target_sync: global).
    client = jax.tree.map(lambda x: x[0], batched)
    other = jax.tree.map(lambda x: x + 1.0, algo.get_params(client))
    once = algo.set_params(client, other)
    _equal_trees(algo.get_params(once), other)
    _equal_trees(algo.set_params(once, other), once)
    _equal_trees(
        algo.get_params(algo.set_params(client, algo.get_params(client))), algo.get_params(client)
    )


def _stacked_params(key, num_clients):
    keys = jax.random.split(key, 3)
    return {
        "w": jax.random.normal(keys[0], (num_clients, 3, 2)),
        "b": jax.random.normal(keys[1], (num_clients, 2)),
        "scale": jax.random.normal(keys[2], (num_clients,)),
    }


def _aggregate(name, client_params, num_steps, mask=None):
    strategy = strategies.make(StrategyConfig(name=name))
    global_params = jax.tree.map(lambda x: jnp.zeros_like(x[0]), client_params)
    num_clients = num_steps.shape[0]
    info = ClientInfo(
        num_steps=num_steps,
        returns=jnp.zeros(num_clients),
        mask=jnp.ones(num_clients, bool) if mask is None else mask,
    )
    new, _, _ = jax.jit(strategy.aggregate)(
        strategy.init(global_params), global_params, client_params, info, jax.random.PRNGKey(0)
    )
    return new


def test_fedavg_equal_weights_is_plain_mean():
    params = _stacked_params(jax.random.PRNGKey(1), 4)
    new = _aggregate("fedavg", params, jnp.full(4, 100.0))
    _allclose_trees(new, jax.tree.map(lambda x: np.mean(np.asarray(x), axis=0), params), rtol=1e-6)


def test_fedavg_weights_by_env_steps():
    params = _stacked_params(jax.random.PRNGKey(2), 4)
    n = np.array([10.0, 30.0, 0.0, 60.0])
    p = n / n.sum()
    new = _aggregate("fedavg", params, jnp.asarray(n))
    expected = jax.tree.map(lambda x: np.tensordot(p, np.asarray(x), axes=1), params)
    _allclose_trees(new, expected, rtol=1e-5, atol=1e-6)


def test_fedavg_ignores_masked_clients_and_keeps_global_when_all_masked():
    params = _stacked_params(jax.random.PRNGKey(3), 3)
    mask = jnp.array([True, False, True])
    new = _aggregate("fedavg", params, jnp.array([1.0, 5.0, 3.0]), mask)
    expected = jax.tree.map(lambda x: (np.asarray(x)[0] * 1 + np.asarray(x)[2] * 3) / 4, params)
    _allclose_trees(new, expected, rtol=1e-5, atol=1e-6)
    none = _aggregate("fedavg", params, jnp.ones(3), jnp.zeros(3, bool))
    _allclose_trees(none, jax.tree.map(lambda x: np.zeros_like(x[0]), params))


def test_fedavg_of_one_sgd_step_equals_centralised_sgd_step():
    """Seed 001: with E = 1 plain-SGD step from a shared start and weights
    p_k = n_k / n, averaging the clients equals one SGD step on the union of
    their data, because the union's mean loss is sum_k p_k F_k."""
    key_w, key_data = jax.random.split(jax.random.PRNGKey(4))
    w0 = {"dense": {"kernel": jax.random.normal(key_w, (5, 1)), "bias": jnp.zeros((1,))}}
    sizes = [8, 8, 16, 32]  # equal and unequal data sizes, weighted by n_k
    data_keys = jax.random.split(key_data, len(sizes))
    data = [
        (jax.random.normal(k, (n, 5)), jax.random.normal(jax.random.fold_in(k, 1), (n, 1)))
        for k, n in zip(data_keys, sizes, strict=True)
    ]

    def loss(w, x, y):
        pred = jnp.tanh(x @ w["dense"]["kernel"] + w["dense"]["bias"])
        return jnp.mean((pred - y) ** 2)

    sgd = optax.sgd(0.1)

    def sgd_step(w, x, y):
        updates, _ = sgd.update(jax.grad(loss)(w, x, y), sgd.init(w), w)
        return optax.apply_updates(w, updates)

    client_params = [sgd_step(w0, x, y) for x, y in data]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *client_params)
    strategy = strategies.make(StrategyConfig(name="fedavg"))
    info = ClientInfo(
        num_steps=jnp.asarray(sizes, jnp.float32),
        returns=jnp.zeros(len(sizes)),
        mask=jnp.ones(len(sizes), bool),
    )
    federated, _, _ = strategy.aggregate(
        strategy.init(w0), w0, stacked, info, jax.random.PRNGKey(0)
    )
    x_all = jnp.concatenate([x for x, _ in data])
    y_all = jnp.concatenate([y for _, y in data])
    centralised = sgd_step(w0, x_all, y_all)
    _allclose_trees(federated, centralised, rtol=1e-5, atol=1e-6)
    # And it is not the trivial case: the clients moved differently.
    assert not np.allclose(client_params[0]["dense"]["kernel"], client_params[3]["dense"]["kernel"])


def test_rounds_compose_from_blocks_and_from_client_shards(sim, state):
    """A block is its rounds: `run_block(state, 2)` (one `lax.scan`, state donated) ==
    two jitted `round_step`s. And a round is its pieces even when the clients' local
    training runs in shards, as offload runs it: `begin_round`, `local_training` on
    clients [0] and [1, 2] separately, the results concatenated, then `aggregate`."""
    step = jax.jit(sim.round_step)
    once, _ = step(state)
    twice, twice_metrics = step(once)
    blocked, block_metrics = sim.run_block(jax.tree.map(jnp.copy, state), 2)
    _allclose_trees(blocked, twice, rtol=1e-6, atol=1e-7)
    assert int(blocked.round) == 2
    np.testing.assert_allclose(
        block_metrics["train_return_mean"][1], twice_metrics["train_return_mean"], rtol=1e-6
    )

    inputs = jax.jit(sim.begin_round)(state)

    def shard(lo, hi):
        part = jax.tree.map(
            lambda x: x[lo:hi], (inputs.client_keys, inputs.clients, inputs.env_params)
        )
        return jax.jit(lambda p: local_training(sim.algorithm, 2, *p, inputs.reference))(part)

    (c0, m0), (c1, m1) = shard(0, 1), shard(1, NUM_CLIENTS)
    clients = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), c0, c1)
    metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), m0, m1)
    manual, _ = jax.jit(sim.aggregate)(state, inputs, clients, metrics)
    _allclose_trees(manual, once, rtol=1e-5, atol=1e-6)
    # The round changed the global params, so the comparison is not vacuous.
    assert not np.allclose(
        jax.tree.leaves(once.global_params)[0], jax.tree.leaves(state.global_params)[0]
    )
