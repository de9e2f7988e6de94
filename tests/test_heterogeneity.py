"""System heterogeneity (issue 12 part 1): unequal local work, stragglers, drop-outs, FedNova.

Prepare hand-made stacked params or a tiny PPO federation with per-client local
updates; execute the strategy or the jitted round pieces; assert exactly where
the maths is exact (masked steps, drop-outs, determinism) and against a float64
NumPy reference for FedNova.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl import strategies
from jfedrl.algorithms.base import Reference
from jfedrl.config import StrategyConfig
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from jfedrl.strategies.base import ClientInfo
from jfedrl.validation import validate
from tests.helpers import equal_trees, row, tiny_config

NUM_CLIENTS = 4
LOCAL_UPDATES = 3


# ------------------------------------------------------------------ FedNova maths


def _stacked(seed: int, k: int):
    rng = np.random.default_rng(seed)
    global_params = {
        "w": rng.normal(size=(3, 2)).astype(np.float32),
        "b": rng.normal(size=(2,)).astype(np.float32),
    }
    clients = {name: g[None] + rng.normal(size=(k,) + g.shape) for name, g in global_params.items()}
    return global_params, {name: c.astype(np.float32) for name, c in clients.items()}


def _aggregate(name, global_params, clients, tau, mask, env_steps_per_update=32.0):
    strategy = strategies.make(StrategyConfig(name=name))
    tau = jnp.asarray(tau, jnp.float32)
    info = ClientInfo(
        num_steps=tau * env_steps_per_update,
        returns=jnp.zeros(tau.shape),
        mask=jnp.asarray(mask),
        local_steps=tau,
    )
    new, _, metrics = jax.jit(strategy.aggregate)(
        strategy.init(global_params), global_params, clients, info, jax.random.PRNGKey(0)
    )
    return new, metrics


def test_fednova_matches_numpy_with_unequal_steps_and_a_mask():
    global_params, clients = _stacked(0, 5)
    tau = np.array([1.0, 4.0, 2.0, 3.0, 6.0])
    mask = np.array([True, True, False, True, True])
    new, metrics = _aggregate("fednova", global_params, clients, tau, mask)
    # Wang et al. 2020, eq. 6, plain local solver, p_i uniform over the valid clients.
    p = mask / mask.sum()
    tau_eff = np.sum(p * tau)
    for name, g in global_params.items():
        g64, x64 = g.astype(np.float64), clients[name].astype(np.float64)
        d = (g64[None] - x64) / tau.reshape((-1,) + (1,) * g.ndim)
        expected = g64 - tau_eff * np.tensordot(p, d, axes=1)
        np.testing.assert_allclose(np.asarray(new[name]), expected, rtol=1e-6, atol=1e-6)
    assert float(metrics["tau_eff"]) == pytest.approx(tau_eff)
    # It is not FedAvg: FedAvg weights clients by their work.
    fedavg, _ = _aggregate("fedavg", global_params, clients, tau, mask)
    assert not np.allclose(np.asarray(fedavg["w"]), np.asarray(new["w"]), atol=1e-3)


def test_fednova_with_equal_steps_is_fedavg_and_keeps_global_when_all_masked():
    global_params, clients = _stacked(1, 4)
    tau = np.full(4, 3.0)
    mask = np.array([True, False, True, True])
    nova, _ = _aggregate("fednova", global_params, clients, tau, mask)
    fedavg, _ = _aggregate("fedavg", global_params, clients, tau, mask)
    for name in global_params:
        np.testing.assert_allclose(np.asarray(nova[name]), np.asarray(fedavg[name]), rtol=1e-6)
    none, _ = _aggregate("fednova", global_params, clients, tau, np.zeros(4, bool))
    assert equal_trees(none, global_params)


def test_fednova_without_local_steps_uses_num_steps():
    global_params, clients = _stacked(2, 3)
    strategy = strategies.make(StrategyConfig(name="fednova"))
    tau = jnp.array([1.0, 2.0, 5.0])
    mask = jnp.ones(3, bool)
    with_tau, _ = _aggregate("fednova", global_params, clients, tau, mask)
    info = ClientInfo(num_steps=tau * 64.0, returns=jnp.zeros(3), mask=mask)
    without, _, _ = strategy.aggregate((), global_params, clients, info, jax.random.PRNGKey(0))
    for name in global_params:
        np.testing.assert_allclose(np.asarray(with_tau[name]), np.asarray(without[name]), 1e-6)


# ------------------------------------------------------------------ the round


@pytest.fixture(scope="module")
def sim():
    config = tiny_config(
        federation__num_clients=NUM_CLIENTS,
        federation__local_updates=LOCAL_UPDATES,
        federation__local_updates_dist="uniform",
        federation__straggler_prob=0.3,
        federation__dropout_prob=0.3,
    )
    return make_simulator(config)


@pytest.fixture(scope="module")
def state(sim):
    return jax.jit(sim.init)(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def pieces(sim):
    """The round's three pieces, jitted once."""
    begin = jax.jit(sim.begin_round)
    train = jax.jit(
        lambda i: local_training(
            sim.algorithm,
            LOCAL_UPDATES,
            i.client_keys,
            i.clients,
            i.env_params,
            i.reference,
            num_updates=i.num_updates,
        )
    )
    return begin, train, jax.jit(sim.aggregate)


def test_masked_surplus_steps_leave_the_state_of_the_last_real_step(sim, state):
    keys = jax.random.split(jax.random.PRNGKey(3), NUM_CLIENTS)
    args = (keys, state.clients, state.env_params)
    reference = Reference(state.global_params)
    counts = jnp.array([1, 2, 0, 1], jnp.int32)
    masked, _ = jax.jit(
        lambda k, c, p: local_training(sim.algorithm, 2, k, c, p, reference, num_updates=counts)
    )(*args)
    for steps in (1, 2):
        exact, _ = jax.jit(
            lambda k, c, p, steps=steps: local_training(sim.algorithm, steps, k, c, p, reference)
        )(*args)
        for client in np.flatnonzero(np.asarray(counts) == steps):
            assert equal_trees(row(masked, client), row(exact, client)), (steps, client)
    # Zero steps: the client's state is untouched.
    assert equal_trees(row(masked, 2), row(state.clients, 2))
    # And the clients really moved differently.
    assert not equal_trees(row(masked, 1).params, row(masked, 0).params)


def test_dropouts_are_masked_and_keep_their_state(sim, state, pieces):
    begin, train, aggregate = pieces
    current, seen_dropout, seen_partial = state, False, False
    for _ in range(4):
        inputs = begin(current)
        clients, local_metrics = train(inputs)
        new, metrics = aggregate(current, inputs, clients, local_metrics)
        counts = np.asarray(inputs.num_updates)
        ids = np.asarray(inputs.ids)
        weights = np.asarray(metrics["strategy/weights"])
        for slot, client in enumerate(ids):
            if counts[slot] == 0:
                seen_dropout = True
                assert weights[slot] == 0.0
                assert equal_trees(row(new.clients, client), row(current.clients, client))
        seen_partial |= bool(np.any((counts > 0) & (counts < LOCAL_UPDATES)))
        assert int(metrics["clients_dropped"]) == int(np.sum(counts == 0))
        assert int(metrics["clients_excluded"]) == 0
        assert float(metrics["local_steps_mean"]) == pytest.approx(counts.mean())
        assert int(metrics["local_steps_min"]) == counts.min()
        assert int(metrics["local_steps_max"]) == counts.max()
        returned = counts > 0
        assert (
            float(metrics["env_steps_taken"]) == counts.sum() * sim.algorithm.env_steps_per_update
        )
        # FedAvg's n_k: the env steps each client really took.
        if returned.any():
            np.testing.assert_allclose(
                weights, np.where(returned, counts, 0) / counts[returned].sum(), rtol=1e-6
            )
        current = new
    assert seen_dropout and seen_partial


def test_unequal_work_makes_fedavg_differ_from_mean(sim, state, pieces):
    begin, train, aggregate = pieces
    inputs = begin(state)
    clients, local_metrics = train(inputs)
    counts = np.asarray(inputs.num_updates)
    assert len(set(counts[counts > 0])) > 1, counts  # the seed draws unequal work
    fedavg, _ = aggregate(state, inputs, clients, local_metrics)
    mean_sim = dataclasses.replace(sim, strategy=strategies.make(StrategyConfig(name="mean")))
    mean, _ = jax.jit(mean_sim.aggregate)(state, inputs, clients, local_metrics)
    kernel = ("params", "actor", "Dense_0", "kernel")
    a, b = fedavg.global_params, mean.global_params
    for name in kernel:
        a, b = a[name], b[name]
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_heterogeneous_rounds_are_reproducible_from_the_seed(sim, state):
    first, m1 = sim.run_block(state, 2)
    again, m2 = sim.run_block(jax.jit(sim.init)(jax.random.PRNGKey(0)), 2)
    assert equal_trees(first, again)
    assert equal_trees(m1, m2)


def test_fixed_counts_stay_per_client_and_redraw_changes_them():
    fixed = make_simulator(
        tiny_config(
            federation__num_clients=16,
            federation__local_updates=8,
            federation__local_updates_dist="uniform",
        )
    )
    redraw = make_simulator(
        dataclasses.replace(
            fixed.config,
            federation=dataclasses.replace(fixed.config.federation, local_updates_redraw=True),
        )
    )
    run_key = jax.random.PRNGKey(0)
    counts = {
        name: [np.asarray(s.client_local_updates(run_key, jnp.int32(r))) for r in range(3)]
        for name, s in (("fixed", fixed), ("redraw", redraw))
    }
    for draws in counts.values():
        assert all(((c >= 1) & (c <= 8)).all() for c in draws)
        assert len(set(draws[0])) > 1
    assert all(np.array_equal(c, counts["fixed"][0]) for c in counts["fixed"])
    assert not np.array_equal(counts["redraw"][0], counts["redraw"][1])


def test_weighted_sampling_follows_the_clients_work():
    sim = make_simulator(
        tiny_config(
            federation__num_clients=6,
            federation__participation=2,
            federation__local_updates=8,
            federation__local_updates_dist="uniform",
            federation__sampling="weighted",
        )
    )
    state = jax.jit(sim.init)(jax.random.PRNGKey(1))
    counts = np.asarray(sim.client_local_updates(state.key, state.round))
    ids = jax.jit(lambda s: sim.begin_round(s).ids[: sim.num_participants])
    chosen = np.zeros(6)
    for r in range(200):
        np.add.at(chosen, np.asarray(ids(state.replace(round=jnp.int32(r)))), 1)
    assert np.corrcoef(counts, chosen)[0, 1] > 0.8, (counts, chosen)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("federation.local_updates_dist", "poisson", "local_updates_dist: 'poisson' is not"),
        ("federation.local_updates_min", 3, r"local_updates_min: must be in \[1, local_updates"),
        ("federation.straggler_prob", 1.5, r"straggler_prob: must be in \[0, 1\]"),
        ("federation.dropout_prob", 1.0, r"dropout_prob: must be in \[0, 1\)"),
    ],
)
def test_bad_heterogeneity_configs_name_the_field(path, value, message):
    config = tiny_config(federation__local_updates_dist="uniform")
    from jfedrl.schema.convert import replace_path

    with pytest.raises(ConfigError, match=message):
        validate(replace_path(config, path, value))
