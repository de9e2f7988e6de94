"""The `geometric_median` strategy (RFA, Pillutla, Kakade & Harchaoui 2022).

Prepare stacked client pytrees, weights and a mask; execute the rule under
`jax.jit`; assert against a float64 NumPy smoothed Weiszfeld with the same fixed
number of steps, and check robustness, consensus, a federated run and the
config checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl import strategies
from jfedrl.config import Config, StrategyConfig
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from jfedrl.strategies.base import ClientInfo
from jfedrl.strategies.geometric_median_config import GeometricMedianConfig, validate
from tests.helpers import tiny_config

K = 7
MASK = np.array([True, True, False, True, True, False, True])
STEPS = np.array([10.0, 40.0, 20.0, 5.0, 25.0, 15.0, 30.0])


def numpy_weiszfeld(points: np.ndarray, weights: np.ndarray, iterations: int, eps: float):
    """Pillutla et al. 2022, Algorithm 2, in float64 on the rows of `points`."""
    alpha = weights / weights.sum()
    z = alpha @ points
    for _ in range(iterations):
        beta = alpha / np.maximum(eps, np.linalg.norm(points - z, axis=1))
        z = beta @ points / beta.sum()
    return z


def clients(seed: int = 0, k: int = K, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(k, 3, 2)) * scale, jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(k, 2)) * scale, jnp.float32),
        },
        "scalar": jnp.asarray(rng.normal(size=(k,)) * scale, jnp.float32),
    }


def flat64(tree) -> np.ndarray:
    leaves = jax.tree.leaves(tree)
    k = leaves[0].shape[0]
    return np.concatenate([np.asarray(x, np.float64).reshape(k, -1) for x in leaves], axis=1)


def info(mask=MASK, steps=STEPS) -> ClientInfo:
    n = len(mask)
    return ClientInfo(
        num_steps=jnp.asarray(steps, jnp.float32),
        returns=jnp.zeros(n, jnp.float32),
        mask=jnp.asarray(mask, bool),
    )


def aggregate(client_params, client_info, iterations=5, eps=1e-6):
    section = GeometricMedianConfig(iterations=iterations, eps=eps)
    config = StrategyConfig(name="geometric_median", geometric_median=section)
    strategy = strategies.make(config, len(client_info.mask))
    global_params = jax.tree.map(lambda x: jnp.zeros_like(x[0]), client_params)
    new, _, metrics = jax.jit(strategy.aggregate)(
        strategy.init(global_params), global_params, client_params, client_info, jax.random.key(0)
    )
    return new, metrics


@pytest.mark.parametrize("iterations", [1, 3, 8])
def test_matches_a_numpy_weiszfeld_on_the_valid_clients(iterations):
    c = clients()
    # Masked clients hold garbage (NaN and huge values): they must not count at all.
    c = jax.tree.map(lambda x: x.at[2].set(jnp.nan).at[5].set(1e30), c)
    new, metrics = aggregate(c, info(), iterations)
    expected = numpy_weiszfeld(flat64(c)[MASK], STEPS[MASK], iterations, 1e-6)
    got = flat64(jax.tree.map(lambda x: x[None], new))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    weights = np.asarray(metrics["weights"])
    assert np.all(weights[~MASK] == 0) and np.isclose(weights.sum(), 1.0)
    assert int(metrics["clients_used"]) == MASK.sum()


def test_matches_numpy_with_an_eps_that_binds():
    """Clients closer to z than eps count as eps away (the smoothing of Algorithm 2)."""
    c = clients(seed=3, scale=0.01)
    new, _ = aggregate(c, info(), iterations=4, eps=0.05)
    expected = numpy_weiszfeld(flat64(c)[MASK], STEPS[MASK], 4, 0.05)
    got = flat64(jax.tree.map(lambda x: x[None], new))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_far_outliers_barely_move_the_median_but_move_the_mean():
    rng = np.random.default_rng(1)
    centre = rng.normal(size=8)
    honest = centre + 0.1 * rng.normal(size=(5, 8))
    outliers = centre + 1000.0 + rng.normal(size=(2, 8))
    points = np.concatenate([honest, outliers]).astype(np.float32)
    c = {"w": jnp.asarray(points)}
    client_info = info(np.ones(7, bool), np.ones(7))
    mean_error = np.linalg.norm(points.mean(axis=0) - centre)
    honest_radius = np.linalg.norm(honest - centre, axis=1).max()
    assert mean_error > 1000 * honest_radius, mean_error
    # Weiszfeld starts at the mean and converges linearly: the default 5 steps already
    # recover most of the way, 12 land inside the honest clients' ball.
    errors = {}
    for iterations in (5, 12):
        new, _ = aggregate(c, client_info, iterations=iterations)
        errors[iterations] = np.linalg.norm(np.asarray(new["w"], np.float64) - centre)
    assert errors[5] < mean_error / 20, errors
    assert errors[12] < honest_radius, (errors, honest_radius)


@pytest.mark.parametrize("value", [0.0, 0.3, -7.25, 3e38])
def test_identical_clients_give_exactly_their_params(value):
    point = {
        "w": jnp.full((3, 2), value, jnp.float32),
        "b": jnp.asarray([value, -value], jnp.bfloat16),
    }
    c = jax.tree.map(lambda x: jnp.stack([x] * K), point)
    new, metrics = aggregate(c, info())
    for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(point), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    assert np.all(np.isfinite(np.asarray(metrics["weights"])))


def test_params_near_the_float32_limit_stay_finite():
    """The scaling by a power of two keeps distances and sums finite near 3e38."""
    c = clients(seed=2)
    c = jax.tree.map(lambda x: 3e38 * jnp.tanh(x), c)
    new, _ = aggregate(c, info())
    expected = numpy_weiszfeld(flat64(c)[MASK], STEPS[MASK], 5, 1e-6)
    got = flat64(jax.tree.map(lambda x: x[None], new))[0]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e33)


def test_a_short_federated_run_gives_finite_params():
    config = tiny_config(strategy__name="geometric_median", federation__rounds=2)
    simulator = make_simulator(config)
    state = simulator.init(jax.random.PRNGKey(0))
    state, metrics = simulator.run_block(state, 2)
    for leaf in jax.tree.leaves(state.global_params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    weights = np.asarray(metrics["strategy/weights"])
    assert weights.shape == (2, 3) and np.allclose(weights.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"iterations": 0}, r"strategy\.geometric_median\.iterations: must be an integer >= 1"),
        ({"iterations": 2.5}, r"strategy\.geometric_median\.iterations"),
        ({"eps": 0.0}, r"strategy\.geometric_median\.eps: must be > 0"),
        ({"eps": -1e-3}, r"strategy\.geometric_median\.eps"),
    ],
)
def test_bad_sections_raise_config_errors_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        validate(GeometricMedianConfig(**fields))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"iterations": 0}, "strategy.geometric_median.iterations"),
        ({"eps": 0.0}, "strategy.geometric_median.eps"),
    ],
)
def test_the_section_is_checked_in_the_whole_config(fields, field):
    section = GeometricMedianConfig(**fields)
    config = Config(strategy=StrategyConfig(name="geometric_median", geometric_median=section))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        strategies.get("geometric_median").check(config)
    strategies.get("geometric_median").check(
        Config(strategy=StrategyConfig(name="geometric_median"))
    )
