"""Non-finite aggregates (issue 26): overflow-safe rules, and the round's guard.

The rules are checked against float64 NumPy on float32 params near the top of
float32's range, where every exact result is finite; the round's guard with a
strategy that returns inf, and end to end with the learning rate that made the
trimmed mean overflow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl.round.simulator import make_simulator
from jfedrl.run import runner
from jfedrl.run.callbacks import AggregateRejected, check_aggregates
from jfedrl.schema.checks import ConfigError
from jfedrl.strategies.base import Strategy, weighted_mean
from jfedrl.validation import validate
from tests.helpers import tiny_config, with_run_dir
from tests.test_strategies import (
    MASK,
    STEPS,
    K,
    as64,
    config,
    info,
    ref_krum_selection,
    ref_over_valid,
    ref_trimmed,
    ref_weighted_mean,
    run,
)

#: float32's largest finite value is 3.4e38; sums of a few such values are not finite.
BIG = 3.0e38


@pytest.fixture(scope="module")
def huge():
    """Global params and 7 clients' params of magnitude up to 3e38 (float32)."""
    rng = np.random.default_rng(5)
    g = {"w": jnp.asarray(rng.uniform(-BIG, BIG, size=(3, 4)), jnp.float32)}
    c = {"w": jnp.asarray(rng.uniform(-BIG, BIG, size=(K, 3, 4)), jnp.float32)}
    # Same-signed pairs near the top: their sum overflows, their mean does not.
    c = {"w": c["w"].at[:, 0, 0].set(BIG).at[:, 0, 1].set(-BIG)}
    return g, c


def _assert_close(actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.all(np.isfinite(np.asarray(a))), a
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=1e-5, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.34])
def test_trimmed_mean_of_huge_params_is_finite_and_exact(huge, beta):
    g, c = huge
    new, _, _ = run(config("trimmed_mean", beta=beta), g, c, info())
    _assert_close(new, ref_over_valid(c, MASK, lambda x: ref_trimmed(x, beta)))


def test_median_of_huge_params_is_finite_and_exact(huge):
    g, c = huge
    new, _, _ = run(config("median"), g, c, info())  # 6 valid: the two middle values' mean
    _assert_close(new, ref_over_valid(c, MASK, lambda x: np.median(x, axis=0)))


@pytest.mark.parametrize("name", ["fedavg", "mean"])
def test_averages_of_huge_params_are_finite_and_exact(huge, name):
    g, c = huge
    new, _, _ = run(config(name), g, c, info())
    weights = np.where(MASK, STEPS if name == "fedavg" else 1.0, 0.0)
    _assert_close(new, ref_weighted_mean(c, weights))


@pytest.mark.parametrize("f, m", [(1, 1), (1, 0), (2, 2)])
def test_krum_on_huge_params_selects_as_float64_does(huge, f, m):
    """Squared distances of 1e38-sized updates overflow float32; scaled, they do not."""
    g, c = huge
    # One client far from the rest (in float64), which Krum must not select.
    c = {"w": c["w"].at[3].set(jnp.where(c["w"][3] > 0, -BIG, BIG))}
    name = "krum" if m == 1 else "multi_krum"
    fields = {"f": f} if name == "krum" else {"f": f, "m": m}
    new, _, metrics = run(config(name, **fields), g, c, info())
    selected = ref_krum_selection(c, MASK, f, m)
    expected = np.zeros(K)
    expected[selected] = 1.0 / len(selected)
    np.testing.assert_allclose(metrics["weights"], expected, rtol=1e-6)
    _assert_close(new, ref_over_valid(c, expected > 0, lambda x: x.mean(axis=0)))


def test_krum_scores_are_in_the_params_units():
    """The power-of-two scaling is undone in the reported scores (hand-computed: values
    0, 1, 2, 10, 11 with f = 1 score 5, 2, 5, 65, 82)."""
    g = {"w": jnp.zeros((1,), jnp.float32)}
    c = {"w": jnp.asarray([[0.0], [1.0], [2.0], [10.0], [11.0]], jnp.float32)}
    mask = np.ones(5, bool)
    _, _, metrics = run(config("krum", f=1), g, c, info(mask, np.ones(5), np.zeros(5)))
    np.testing.assert_array_equal(metrics["scores"], [5.0, 2.0, 5.0, 65.0, 82.0])


def test_weighted_mean_stays_in_range():
    x = {"w": jnp.full((4, 2), 3.4e38, jnp.float32)}
    out = weighted_mean(x, jnp.full((4,), 0.25, jnp.float32))
    assert np.all(np.isfinite(np.asarray(out["w"])))
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), as64(x)["w"][0], rtol=1e-6)


# ---------------------------------------------------------------- the round's guard


def _overflowing_after_one_round(fedavg: Strategy) -> Strategy:
    """fedavg whose aggregate is inf from its second round on (a counter in its state)."""

    def aggregate(state, global_params, client_params, client_info, key):
        new, _, metrics = fedavg.aggregate((), global_params, client_params, client_info, key)
        new = jax.tree.map(lambda x: jnp.where(state >= 1, jnp.inf, x), new)
        return new, state + 1, metrics

    return Strategy(init=lambda params: jnp.zeros((), jnp.int32), aggregate=aggregate)


def test_round_rejects_a_non_finite_aggregate_and_keeps_the_global_params():
    simulator = make_simulator(tiny_config())
    simulator = dataclasses.replace(
        simulator, strategy=_overflowing_after_one_round(simulator.strategy)
    )
    state = simulator.init(jax.random.PRNGKey(0))
    after, metrics = simulator.run_block(state, 3)
    assert np.asarray(metrics["aggregate_rejected"]).tolist() == [0, 1, 1]
    # The global params and the server state are those after round 1 (its counter is 1).
    assert int(after.server_state) == 1
    one, _ = simulator.run_block(simulator.init(jax.random.PRNGKey(0)), 1)
    leaves = jax.tree.leaves(after.global_params), jax.tree.leaves(one.global_params)
    pairs = zip(*leaves, strict=True)
    for a, b in pairs:
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(after.round) == 3


def test_rejected_aggregate_warns_or_stops(jfedrl_warnings):
    records = [{"round": 1, "aggregate_rejected": 0}, {"round": 2, "aggregate_rejected": 1}]
    check_aggregates(records, "warn")
    assert jfedrl_warnings == [
        "round 2: the aggregate of the clients' updates is not finite and was rejected; "
        "the global params are unchanged"
    ]
    with pytest.raises(AggregateRejected, match=r"^round 2: .*not finite.*checkpoint is intact"):
        check_aggregates(records, "stop")
    check_aggregates(records[:1], "stop")  # no rejected round: nothing to stop for
    with pytest.raises(ConfigError, match="federation.on_rejected_aggregate"):
        validate(tiny_config(federation__on_rejected_aggregate="abort"))


def test_huge_learning_rate_under_trimmed_mean_checkpoints_finite_params(tmp_path):
    """The report's case: the trimmed mean summed float32 before dividing (inf at rc 0)."""
    config = tiny_config(
        algo__ppo__learning_rate=2e38,
        strategy__name="trimmed_mean",
        federation__rounds=4,
        federation__local_updates=1,  # one Adam step: clients' params near +-2e38, finite
        algo__ppo__update_epochs=1,
        algo__ppo__num_minibatches=1,
        log__rounds_per_block=1,
    )
    result = runner.train(with_run_dir(config, tmp_path / "run"), quiet=True)
    for leaf in jax.tree.leaves(result.state.global_params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert all(r["aggregate_rejected"] == 0 for r in result.records)
