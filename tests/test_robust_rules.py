"""`centered_clip`, `norm_bound` and `frl_filter` against float64 NumPy references.

Prepare stacked client pytrees (several leaves), uneven weights and a mask whose
masked clients hold garbage (padding); execute each rule under `jax.jit`;
assert against a NumPy reference on the valid clients' updates, then check
the Byzantine behaviour, the `selected` metric of the selecting rules (Krum and
Multi-Krum too), a short federated run and the config checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl import strategies
from jfedrl.config import Config, StrategyConfig
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override
from jfedrl.strategies.base import ClientInfo

K = 7
MASK = np.array([True, True, False, True, True, False, True])
STEPS = np.array([10.0, 40.0, 20.0, 5.0, 25.0, 15.0, 30.0])


def make_global(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        },
        "scalar": jnp.asarray(rng.normal(), jnp.float32),
    }


def make_clients(global_params, seed: int = 1, scale: float = 0.5, k: int = K):
    rng = np.random.default_rng(seed)
    clients = jax.tree.map(
        lambda g: g[None] + jnp.asarray(scale * rng.normal(size=(k,) + g.shape), jnp.float32),
        global_params,
    )
    # Padding / rejected slots hold garbage: it must not count at all.
    return jax.tree.map(lambda x: x.at[2].set(jnp.nan).at[5].set(1e30), clients)


def info(mask=MASK, steps=STEPS) -> ClientInfo:
    return ClientInfo(
        num_steps=jnp.asarray(steps, jnp.float32),
        returns=jnp.zeros(len(mask), jnp.float32),
        mask=jnp.asarray(mask, bool),
    )


def config(name: str, **fields) -> StrategyConfig:
    return override(StrategyConfig(name=name), {f"{name}.{k}": v for k, v in fields.items()})


def run(strategy_config, global_params, clients, client_info, state=None):
    strategy = strategies.make(strategy_config, len(client_info.mask))
    if state is None:
        state = strategy.init(global_params)
    return jax.jit(strategy.aggregate)(
        state, global_params, clients, client_info, jax.random.PRNGKey(0)
    )


def flat64(tree) -> np.ndarray:
    """A stacked pytree as `[K, D]` float64 (leaves in tree order)."""
    leaves = jax.tree.leaves(tree)
    k = leaves[0].shape[0]
    return np.concatenate([np.asarray(x, np.float64).reshape(k, -1) for x in leaves], axis=1)


def one64(tree) -> np.ndarray:
    return flat64(jax.tree.map(lambda x: jnp.asarray(x)[None], tree))[0]


def updates64(clients, global_params) -> np.ndarray:
    return flat64(clients) - one64(global_params)[None]


@pytest.fixture(scope="module")
def data():
    g = make_global()
    return g, make_clients(g)


# ---------------------------------------------------------------- NumPy references


def ref_centered_clip(x: np.ndarray, tau: float, iterations: int, v0: np.ndarray) -> np.ndarray:
    """Karimireddy et al. 2021, eq. (CC): v <- v + mean_i clip_tau(x_i - v)."""
    v = v0.copy()
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        v = v + np.mean(diff * np.minimum(1.0, tau / norms)[:, None], axis=0)
    return v


def ref_norm_bound(x: np.ndarray, steps: np.ndarray, bound: float) -> np.ndarray:
    """Sun et al. 2019: FedAvg of the updates scaled by min(1, M / ||x||)."""
    scale = np.minimum(1.0, bound / np.linalg.norm(x, axis=1))
    return (steps / steps.sum()) @ (x * scale[:, None])


def ref_frl_filter(x, steps, factor=None, threshold=None, geometric=False):
    """Centre, distances, T, the kept clients; the mean of the kept or the centre."""
    if geometric:
        z = x.mean(axis=0)
        for _ in range(8):
            beta = 1.0 / np.maximum(np.linalg.norm(x - z, axis=1), 1e-30)
            z = beta @ x / beta.sum()
        centre = z
    else:
        centre = np.median(x, axis=0)
    distances = np.linalg.norm(x - centre, axis=1)
    bound = threshold if threshold is not None else factor * np.median(distances)
    kept = distances <= bound
    if 2 * kept.sum() < len(x):
        return centre, kept, True
    w = steps * kept
    return (w / w.sum()) @ x, kept, False


@pytest.mark.parametrize("tau, iterations", [(0.3, 1), (0.3, 4), (1.0, 2), (100.0, 1)])
def test_centered_clip_matches_numpy(data, tau, iterations):
    g, c = data
    new, _, metrics = run(config("centered_clip", tau=tau, iterations=iterations), g, c, info())
    x = updates64(c, g)[MASK]
    expected = one64(g) + ref_centered_clip(x, tau, iterations, np.zeros(x.shape[1]))
    np.testing.assert_allclose(one64(new), expected, rtol=1e-5, atol=1e-5)
    assert int(metrics["clients_used"]) == MASK.sum()
    if tau == 100.0:  # nothing clipped: the plain (unweighted) mean of the updates
        np.testing.assert_allclose(one64(new), one64(g) + x.mean(axis=0), rtol=1e-5, atol=1e-5)
        assert float(metrics["clipped_fraction"]) == 0.0
    else:
        assert float(metrics["clipped_fraction"]) > 0.0


def test_centered_clip_from_the_previous_update_keeps_it_in_the_state(data):
    g, c = data
    cfg = config("centered_clip", tau=0.3, iterations=2, start="previous_update")
    new, state, _ = run(cfg, g, c, info())
    x = updates64(c, g)[MASK]
    first = ref_centered_clip(x, 0.3, 2, np.zeros(x.shape[1]))
    np.testing.assert_allclose(one64(state), first, rtol=1e-5, atol=1e-6)
    # The second round starts from the first round's update.
    new2, state2, _ = run(cfg, new, c, info(), state=state)
    x2 = updates64(c, new)[MASK]
    second = ref_centered_clip(x2, 0.3, 2, first)
    np.testing.assert_allclose(one64(new2), one64(new) + second, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one64(state2), second, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_norm", [0.2, 1.0, 50.0])
def test_norm_bound_fixed_matches_numpy(data, max_norm):
    g, c = data
    new, _, metrics = run(config("norm_bound", max_norm=max_norm), g, c, info())
    x = updates64(c, g)[MASK]
    expected = one64(g) + ref_norm_bound(x, STEPS[MASK], max_norm)
    np.testing.assert_allclose(one64(new), expected, rtol=1e-5, atol=1e-5)
    clipped = np.mean(np.linalg.norm(x, axis=1) > max_norm)
    assert float(metrics["clipped_fraction"]) == pytest.approx(clipped)
    assert float(metrics["bound"]) == pytest.approx(max_norm)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_norm_bound_median_matches_numpy(data, factor):
    g, c = data
    new, _, metrics = run(config("norm_bound", bound="median", median_factor=factor), g, c, info())
    x = updates64(c, g)[MASK]
    bound = factor * np.median(np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(float(metrics["bound"]), bound, rtol=1e-5)
    expected = one64(g) + ref_norm_bound(x, STEPS[MASK], bound)
    np.testing.assert_allclose(one64(new), expected, rtol=1e-5, atol=1e-5)


def filtered_data():
    """5 honest updates near one direction and 2 far ones (garbage in the masked slots)."""
    rng = np.random.default_rng(4)
    g = make_global(3)
    d = one64(g).size
    direction = rng.normal(size=d)
    x = direction + 0.2 * rng.normal(size=(K, d))
    x[[1, 4]] = -4.0 * direction  # sign-flipped x4
    flat = one64(g)[None] + x
    leaves, treedef = jax.tree.flatten(g)
    out, start = [], 0
    for leaf in leaves:
        out.append(jnp.asarray(flat[:, start : start + leaf.size].reshape((K,) + leaf.shape)))
        start += leaf.size
    c = jax.tree.unflatten(treedef, out)
    return g, jax.tree.map(lambda y: y.at[2].set(jnp.nan).at[5].set(1e30), c)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"factor": 1.0},
        {"centre": "geometric_median"},
        {"bound": "fixed", "threshold": 1.0},
        {"bound": "fixed", "threshold": 0.05},  # drops everyone: the fallback
        {"factor": 0.5},  # drops more than half: the fallback
    ],
)
@pytest.mark.parametrize("far", [False, True])
def test_frl_filter_matches_numpy(data, fields, far):
    g, c = filtered_data() if far else data
    new, _, metrics = run(config("frl_filter", **fields), g, c, info())
    x = updates64(c, g)[MASK]
    factor = fields.get("factor", 2.0)
    threshold = fields.get("threshold") if fields.get("bound") == "fixed" else None
    step, kept, fallback = ref_frl_filter(
        x, STEPS[MASK], factor, threshold, fields.get("centre") == "geometric_median"
    )
    np.testing.assert_allclose(one64(new), one64(g) + step, rtol=1e-4, atol=1e-5)
    selected = np.asarray(metrics["selected"])
    assert selected.dtype == bool and not selected[~MASK].any()
    np.testing.assert_array_equal(selected[MASK], kept & (not fallback))
    assert int(metrics["fallback"]) == int(fallback)
    if far and not fallback:
        assert not selected[[1, 4]].any() and selected[[0, 3, 6]].all()


def test_frl_filter_fallback_is_reached_only_below_half():
    """factor >= 1 keeps at least half of the clients, so it never falls back."""
    for seed in range(5):
        g = make_global(seed)
        c = make_clients(g, seed=seed + 10, scale=1.0)
        _, _, metrics = run(config("frl_filter", factor=1.0), g, c, info())
        assert int(metrics["fallback"]) == 0
        assert 2 * int(np.asarray(metrics["selected"]).sum()) >= MASK.sum()


# ---------------------------------------------------------------- Byzantine behaviour


@pytest.mark.parametrize(
    "name, fields",
    [
        ("centered_clip", {"tau": 0.5, "iterations": 3}),
        ("norm_bound", {"bound": "median"}),
        ("frl_filter", {}),
        ("frl_filter", {"centre": "geometric_median"}),
    ],
)
def test_far_attackers_move_the_rules_by_little_but_move_fedavg(name, fields):
    g, c = filtered_data()
    boosted = jax.tree.map(lambda y: y.at[jnp.array([1, 4])].multiply(1e3), c)
    # As the round does, the masked slots hold the global params (FedAvg weights them 0).
    boosted = jax.tree.map(lambda y, z: y.at[~MASK].set(z), boosted, g)
    x = updates64(c, g)[MASK]
    honest = np.delete(x, [1, 3], axis=0)  # valid rows 1 and 3 are clients 1 and 4
    honest_mean = honest.mean(axis=0)
    radius = np.linalg.norm(honest - honest_mean, axis=1).max()
    new, _, _ = run(config(name, **fields), g, boosted, info())
    error = np.linalg.norm(one64(new) - one64(g) - honest_mean)
    fedavg, _, _ = run(config("fedavg"), g, boosted, info())
    fedavg_error = np.linalg.norm(one64(fedavg) - one64(g) - honest_mean)
    assert fedavg_error > 100 * radius
    assert error < 2 * np.linalg.norm(honest_mean) + radius, (error, radius)


@pytest.mark.parametrize("name", ["krum", "multi_krum", "frl_filter"])
def test_selecting_rules_report_selected_over_the_participants(data, name):
    g, c = filtered_data()
    # f = 1: each score sums 2 neighbours, so the two identical far clients (each the
    # other's nearest) cannot score 0 together (with f = 2 Krum picks one of them).
    fields = {"krum": {"f": 1}, "multi_krum": {"f": 1, "m": 3}}.get(name, {})
    _, _, metrics = run(config(name, **fields), g, c, info())
    selected = np.asarray(metrics["selected"])
    assert selected.shape == (K,) and selected.dtype == bool
    assert not selected[~MASK].any() and selected.any()
    assert not selected[[1, 4]].any()  # the two far clients are never chosen
    if name != "frl_filter":
        np.testing.assert_array_equal(selected, np.asarray(metrics["weights"]) > 0)
    if name == "krum":
        assert selected.sum() == 1


def test_a_short_federated_run_reports_selected_per_round():
    from jfedrl.round.simulator import make_simulator
    from tests.helpers import tiny_config

    cfg = tiny_config(strategy__name="frl_filter", federation__num_clients=4, federation__rounds=2)
    simulator = make_simulator(cfg)
    state = simulator.init(jax.random.PRNGKey(0))
    state, metrics = simulator.run_block(state, 2)
    for leaf in jax.tree.leaves(state.global_params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    selected = np.asarray(metrics["strategy/selected"])
    assert selected.shape == (2, 4) and selected.dtype == bool
    assert np.all(selected.sum(axis=1) >= 2)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("centered_clip", {"tau": 0.0}, r"strategy\.centered_clip\.tau: must be > 0"),
        ("centered_clip", {"iterations": 0}, r"strategy\.centered_clip\.iterations: must be an"),
        ("centered_clip", {"start": "momentum"}, r"strategy\.centered_clip\.start"),
        ("norm_bound", {"max_norm": -1.0}, r"strategy\.norm_bound\.max_norm: must be > 0"),
        ("norm_bound", {"median_factor": 0.0}, r"strategy\.norm_bound\.median_factor"),
        ("norm_bound", {"bound": "mean"}, r"strategy\.norm_bound\.bound"),
        ("frl_filter", {"factor": 0.0}, r"strategy\.frl_filter\.factor: must be > 0"),
        ("frl_filter", {"threshold": -2.0}, r"strategy\.frl_filter\.threshold: must be > 0"),
        ("frl_filter", {"centre": "mean"}, r"strategy\.frl_filter\.centre"),
        ("frl_filter", {"bound": "sigma"}, r"strategy\.frl_filter\.bound"),
    ],
)
def test_bad_values_raise_one_line_naming_the_field(name, fields, message):
    cfg = Config(strategy=config(name, **fields))
    with pytest.raises(ConfigError, match=message) as error:
        strategies.get(name).check(cfg)
    assert "\n" not in str(error.value)
    strategies.get(name).check(Config(strategy=config(name)))


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--strategy", "centered_clip", "--centered-clip.tau", "0"], "strategy.centered_clip.tau"),
        (["--strategy", "norm_bound", "--norm-bound.bound", "mean"], "strategy.norm_bound.bound"),
        (["--strategy", "frl_filter", "--frl-filter.factor", "-1"], "strategy.frl_filter.factor"),
    ],
)
def test_the_cli_exits_2_with_one_line_before_writing(flags, field, tmp_path, monkeypatch, capsys):
    from jfedrl import cli

    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--no-progress", *flags])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"jfedrl: error: {field}:") and error.count("\n") == 1, error
    assert list(tmp_path.iterdir()) == []
