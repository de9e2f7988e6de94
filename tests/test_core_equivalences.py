"""The equivalences that make federated results trustworthy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jfedrl import strategies
from jfedrl.algorithms import Reference
from jfedrl.config import StrategyConfig
from jfedrl.federated import local_training, make_simulator
from jfedrl.strategies import ClientInfo
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


def _slice(tree, i):
    return jax.tree.map(lambda x: x[i : i + 1], tree)


def test_vmapped_clients_equal_each_client_alone(sim, state):
    keys = jax.random.split(jax.random.PRNGKey(7), NUM_CLIENTS)
    reference = Reference(state.global_params)
    batched, batched_metrics = jax.jit(
        lambda k, c, p: local_training(sim.algorithm, 2, k, c, p, reference)
    )(keys, state.clients, state.env_params)

    single = jax.jit(lambda k, c, p: local_training(sim.algorithm, 2, k, c, p, reference))
    for i in range(NUM_CLIENTS):
        alone, alone_metrics = single(
            keys[i : i + 1], _slice(state.clients, i), _slice(state.env_params, i)
        )
        _allclose_trees(_slice(batched, i), alone, rtol=1e-5, atol=1e-6)
        _allclose_trees(
            {k: v[:, i : i + 1] for k, v in batched_metrics.items()},
            alone_metrics,
            rtol=1e-5,
            atol=1e-6,
        )
    # Clients really differ (different keys), so the comparison is not vacuous.
    p = batched.params["params"]["actor"]["Dense_0"]["kernel"]
    assert not np.allclose(p[0], p[1])


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


def test_round_step_matches_manual_composition(sim, state):
    """run_block = begin_round + local_training + aggregate, nothing else."""
    new_state, metrics = jax.jit(sim.round_step)(state)
    inputs = jax.jit(sim.begin_round)(state)
    clients, local_metrics = jax.jit(
        lambda i: local_training(
            sim.algorithm, 2, i.client_keys, i.clients, i.env_params, i.reference
        )
    )(inputs)
    manual, manual_metrics = jax.jit(sim.aggregate)(state, inputs, clients, local_metrics)
    _allclose_trees(new_state.global_params, manual.global_params, rtol=1e-5, atol=1e-6)
    assert int(new_state.round) == int(manual.round) == 1
