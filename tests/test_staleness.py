"""Asynchrony (issue 12 part 2): stale start params from a ring buffer, FedAsync decay.

Prepare a tiny PPO federation with `federation.staleness` k; execute rounds with
the jitted pieces; assert exactly: k = 0 is the synchronous round, the ring
buffer holds the last k + 1 globals, each client starts from the global of s
rounds ago, the decayed stale updates against NumPy, and resume is exact.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jfedrl.algorithms.base import Reference
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.run import runner
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import replace_path
from jfedrl.validation import validate
from tests.helpers import equal_trees, row, tiny_config, with_run_dir

K = 2
DECAY = 0.5


def _config(**overrides):
    return tiny_config(**overrides)


@pytest.fixture(scope="module")
def stale():
    sim = make_simulator(_config(federation__staleness=K, federation__staleness_decay=DECAY))
    return sim, jax.jit(sim.round_step)


@pytest.fixture(scope="module")
def history(stale):
    """The states after 0..5 rounds."""
    sim, step = stale
    states = [jax.jit(sim.init)(jax.random.PRNGKey(0))]
    for _ in range(5):
        states.append(step(states[-1])[0])
    return states


def test_k0_is_the_synchronous_round_bit_for_bit(stale, history):
    sync = make_simulator(_config())
    state = jax.jit(sync.init)(jax.random.PRNGKey(0))
    assert state.global_history == ()
    after, _ = jax.jit(sync.round_step)(state)
    # In round 0 every client is fresh (s = 0): the stale path is then the synchronous one.
    assert equal_trees(after.global_params, history[1].global_params)
    assert equal_trees(after.clients, history[1].clients)
    assert not equal_trees(after.global_params, history[0].global_params)


def test_ring_buffer_holds_the_last_k_plus_1_globals(history):
    for r, state in enumerate(history):
        for back in range(min(K, r) + 1):
            slot = (r - back) % (K + 1)
            assert equal_trees(row(state.global_history, slot), history[r - back].global_params)


def test_each_client_starts_from_the_global_of_s_rounds_ago(stale, history):
    sim, _ = stale
    begin = jax.jit(sim.begin_round)
    seen = set()
    for r in range(1, 5):
        inputs = begin(history[r])
        staleness = np.asarray(inputs.staleness)
        assert (staleness >= 0).all() and (staleness <= min(K, r)).all()
        for i, s in enumerate(staleness):
            stale_global = history[r - s].global_params
            assert equal_trees(row(inputs.start_params, i), stale_global)
            assert equal_trees(row(inputs.clients.params, i), stale_global)
            assert equal_trees(row(inputs.reference.global_params, i), stale_global)
            seen.add(int(s))
        # Reproducible: the draw is a function of the run key and the round.
        assert np.array_equal(np.asarray(begin(history[r]).staleness), staleness)
    assert seen > {0}, seen


def test_stale_updates_move_the_current_global_with_fedasync_decay(stale, history):
    sim, _ = stale
    state = next(s for s in history[1:] if np.asarray(jax.jit(sim.begin_round)(s).staleness).any())
    inputs = jax.jit(sim.begin_round)(state)
    clients, local_metrics = jax.jit(
        lambda i: local_training(
            sim.algorithm,
            sim.config.federation.local_updates,
            i.client_keys,
            i.clients,
            i.env_params,
            i.reference,
            stacked_reference=True,
        )
    )(inputs)
    new, metrics = jax.jit(sim.aggregate)(state, inputs, clients, local_metrics)
    s = np.asarray(inputs.staleness).astype(np.float64)
    factor = (1.0 + s) ** -DECAY
    weights = np.full(len(s), 1.0 / len(s))  # equal work: FedAvg's n_k are equal
    np.testing.assert_allclose(np.asarray(metrics["strategy/weights"]), weights, rtol=1e-6)
    expected = jax.tree.map(
        lambda g, c, start: (
            np.asarray(g, np.float64)
            + np.tensordot(
                weights * factor,
                np.asarray(c, np.float64) - np.asarray(start, np.float64),
                axes=1,
            )
        ),
        state.global_params,
        clients.params,
        inputs.start_params,
    )
    for got, want in zip(
        jax.tree.leaves(new.global_params), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert float(metrics["staleness_max"]) == s.max()


@pytest.mark.slow
def test_resume_with_staleness_is_exact(tmp_path):
    config = _config(federation__staleness=K, federation__staleness_decay=DECAY)
    full = runner.train(with_run_dir(config, tmp_path / "full"), quiet=True)
    first = runner.train(with_run_dir(config, tmp_path / "resumed"), quiet=True, stop_after_round=2)
    assert first.interrupted
    resumed = runner.train(runner.resume_config(tmp_path / "resumed"), resume=True, quiet=True)
    assert int(resumed.state.round) == config.federation.rounds
    assert equal_trees(full.state, resumed.state)
    assert (
        np.asarray(full.state.global_history["params"]["actor"]["Dense_0"]["kernel"]).shape[0]
        == K + 1
    )


def test_each_client_regularises_towards_its_own_start_params():
    """With staleness the FedProx reference is per client: the params it started from."""
    sim = make_simulator(_config(algo__ppo__prox_mu=1.0, federation__num_clients=2))
    state = jax.jit(sim.init)(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    far = jax.tree.map(lambda g: g + 0.5, state.global_params)
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), state.global_params, far)

    def train(reference, stacked_reference):
        return local_training(
            sim.algorithm,
            1,
            keys,
            state.clients,
            state.env_params,
            Reference(reference),
            stacked_reference=stacked_reference,
        )[0].params

    both = jax.jit(lambda r: train(r, True))(stacked)
    shared = jax.jit(lambda r: train(r, False))
    for i, reference in enumerate((state.global_params, far)):
        alone = row(shared(reference), i)
        for got, want in zip(jax.tree.leaves(row(both, i)), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert not equal_trees(row(both, 1), row(shared(state.global_params), 1))


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("federation.staleness", -1, "federation.staleness: must be >= 0"),
        ("federation.staleness_decay", -0.5, "federation.staleness_decay: must be >= 0"),
    ],
)
def test_bad_staleness_configs_name_the_field(path, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(replace_path(_config(federation__staleness=1), path, value))
