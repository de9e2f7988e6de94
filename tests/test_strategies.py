"""Aggregation strategies against NumPy references (issue 3, strategy part).

Prepare small stacked pytrees (several leaves, float32 / float16 / bfloat16),
uneven weights and returns and a mask; execute each rule under `jax.jit`;
assert against a float64 NumPy reference computed from the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jfedrl import strategies, validation
from jfedrl.config import Config, FederationConfig, StrategyConfig
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override
from jfedrl.strategies.base import ClientInfo

K = 7
MASK = np.array([True, True, False, True, True, True, True])
STEPS = np.array([10.0, 40.0, 20.0, 5.0, 25.0, 15.0, 30.0])
RETURNS = np.array([-3.0, 12.5, 50.0, 4.0, -7.5, 0.5, 9.0])
TOL = {jnp.float32: 1e-5, jnp.float16: 2e-3, jnp.bfloat16: 2e-2}
DETERMINISTIC = (
    "fedavg",
    "mean",
    "reward_weighted",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "dp_fedavg",  # with strategy.dp_fedavg.noise = 0
    "geometric_median",
    "centered_clip",  # with a tau no update reaches
    "norm_bound",  # with a bound no update reaches
    "frl_filter",
)


def make_global(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        },
        "half": jnp.asarray(rng.normal(size=(4,)), jnp.float16),
        "brain": jnp.asarray(rng.normal(size=(2, 2)), jnp.bfloat16),
        "scalar": jnp.asarray(rng.normal(), jnp.float32),
    }


def make_clients(global_params, seed: int = 1, scale: float = 0.5, k: int = K):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda g: (g[None].astype(jnp.float32) + scale * rng.normal(size=(k,) + g.shape)).astype(
            g.dtype
        ),
        global_params,
    )


def info(mask=MASK, steps=STEPS, returns=RETURNS) -> ClientInfo:
    return ClientInfo(
        num_steps=jnp.asarray(steps, jnp.float32),
        returns=jnp.asarray(returns, jnp.float32),
        mask=jnp.asarray(mask, bool),
    )


def config(name: str, **fields) -> StrategyConfig:
    """The strategy `name` with `fields` of its own section (`strategy.<name>.<field>`)."""
    return override(StrategyConfig(name=name), {f"{name}.{k}": v for k, v in fields.items()})


def run(strategy_config: StrategyConfig, global_params, clients, client_info, key=0, state=None):
    strategy = strategies.make(strategy_config, jax.tree.leaves(clients)[0].shape[0])
    if state is None:
        state = strategy.init(global_params)
    return jax.jit(strategy.aggregate)(
        state, global_params, clients, client_info, jax.random.PRNGKey(key)
    )


def as64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def assert_tree_close(actual, expected, scale: float = 1.0):
    """Leaf-by-leaf comparison with a tolerance set by the actual leaf's dtype."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        tol = TOL[jnp.dtype(a.dtype).type] * scale
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=tol, atol=tol)


def ref_weighted_mean(clients, weights):
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    return jax.tree.map(lambda x: np.tensordot(w, x, axes=1), as64(clients))


def ref_over_valid(clients, mask, fn):
    return jax.tree.map(lambda x: fn(x[np.asarray(mask)]), as64(clients))


def ref_trimmed(x, beta):
    n = x.shape[0]
    k = int(beta * n)
    s = np.sort(x, axis=0)
    return s[k : n - k].mean(axis=0)


def ref_krum_selection(clients, mask, f, m):
    flat = np.concatenate(
        [x.reshape(x.shape[0], -1) for x in jax.tree.leaves(as64(clients))], axis=1
    )
    valid = np.flatnonzero(mask)
    n = len(valid)
    scores = {}
    for i in valid:
        d = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in valid if j != i)
        scores[i] = sum(d[: n - f - 2])
    order = sorted(valid, key=lambda i: (scores[i], i))
    return order[: (m if m > 0 else n - f)]


@pytest.fixture(scope="module")
def data():
    g = make_global()
    return g, make_clients(g)


# ---------------------------------------------------------------- references


def test_fedavg_and_mean_match_numpy(data):
    g, c = data
    new, _, metrics = run(config("fedavg"), g, c, info())
    assert_tree_close(new, ref_weighted_mean(c, STEPS * MASK))
    np.testing.assert_allclose(metrics["weights"], STEPS * MASK / (STEPS * MASK).sum(), 1e-6)
    new, _, _ = run(config("mean"), g, c, info())
    assert_tree_close(new, ref_over_valid(c, MASK, lambda x: x.mean(axis=0)))


def test_reward_weighted_min_shift_handles_negative_returns(data):
    g, c = data
    new, _, metrics = run(config("reward_weighted"), g, c, info())
    valid_returns = RETURNS[MASK]
    weights = np.where(MASK, RETURNS - valid_returns.min() + 1e-6, 0.0)
    np.testing.assert_allclose(metrics["weights"], weights / weights.sum(), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(metrics["weights"]) >= 0)
    assert metrics["weights"][2] == 0.0  # masked, although it has the best return
    assert_tree_close(new, ref_weighted_mean(c, weights))


def test_reward_weighted_softmax_and_equal_returns(data):
    g, c = data
    new, _, metrics = run(
        config("reward_weighted", weighting="softmax", temperature=5.0), g, c, info()
    )
    logits = np.where(MASK, RETURNS / 5.0, -np.inf)
    weights = np.exp(logits - logits.max())
    np.testing.assert_allclose(metrics["weights"], weights / weights.sum(), rtol=1e-5, atol=1e-7)
    assert_tree_close(new, ref_weighted_mean(c, weights))
    for weighting in ("min_shift", "softmax"):
        _, _, metrics = run(
            config("reward_weighted", weighting=weighting),
            g,
            c,
            info(returns=np.full(K, -42.0)),
        )
        np.testing.assert_allclose(metrics["weights"], MASK / MASK.sum(), rtol=1e-6)


def test_median_matches_numpy(data):
    g, c = data
    new, _, _ = run(config("median"), g, c, info())  # 6 valid: mean of the two middle values
    assert_tree_close(new, ref_over_valid(c, MASK, lambda x: np.median(x, axis=0)))
    odd = MASK.copy()
    odd[0] = False
    new, _, _ = run(config("median"), g, c, info(mask=odd))
    assert_tree_close(new, ref_over_valid(c, odd, lambda x: np.median(x, axis=0)))


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.34, 0.49])
def test_trimmed_mean_matches_numpy(data, beta):
    g, c = data
    new, _, metrics = run(config("trimmed_mean", beta=beta), g, c, info())
    assert metrics["trimmed_per_side"] == int(beta * MASK.sum())
    assert_tree_close(new, ref_over_valid(c, MASK, lambda x: ref_trimmed(x, beta)))


@pytest.mark.parametrize("f, m", [(0, 1), (1, 1), (2, 1), (1, 0), (1, 3)])
def test_krum_and_multi_krum_match_numpy(data, f, m):
    g, c = data
    name = "krum" if m == 1 else "multi_krum"
    fields = {"f": f} if name == "krum" else {"f": f, "m": m}
    new, _, metrics = run(config(name, **fields), g, c, info())
    selected = ref_krum_selection(c, MASK, f, m)
    expected = np.zeros(K)
    expected[selected] = 1.0 / len(selected)
    np.testing.assert_allclose(metrics["weights"], expected, rtol=1e-6)
    assert_tree_close(new, ref_over_valid(c, expected > 0, lambda x: x.mean(axis=0)))


def test_krum_hand_computed():
    """Values 0, 1, 2, 10, 11 with f = 1: each score sums the n - f - 2 = 2 nearest
    squared distances: 0 -> 1 + 4, 1 -> 1 + 1, 2 -> 1 + 4, 10 -> 1 + 64, 11 -> 1 + 81."""
    g = {"w": jnp.zeros((1,), jnp.float32)}
    c = {"w": jnp.array([[0.0], [1.0], [2.0], [10.0], [11.0]])}
    five = info(np.ones(5, bool), np.ones(5), np.zeros(5))
    new, _, metrics = run(config("krum", f=1), g, c, five)
    np.testing.assert_allclose(metrics["scores"], [5.0, 2.0, 5.0, 65.0, 82.0])
    assert float(new["w"][0]) == 1.0
    new, _, metrics = run(config("multi_krum", f=1, m=3), g, c, five)
    np.testing.assert_allclose(metrics["weights"], [1 / 3, 1 / 3, 1 / 3, 0.0, 0.0], rtol=1e-6)
    assert float(new["w"][0]) == pytest.approx(1.0)


@pytest.mark.parametrize("f, m", [(1, 0), (1, 3), (2, 2)])
def test_multi_krum_weighted_by_num_steps_matches_numpy(data, f, m):
    """Flower's Multi-Krum: the same selection, averaged with FedAvg's n_k weights."""
    g, c = data
    fields = {"f": f, "m": m, "weighting": "num_steps"}
    new, _, metrics = run(config("multi_krum", **fields), g, c, info())
    selected = ref_krum_selection(c, MASK, f, m)
    expected = np.zeros(K)
    expected[selected] = STEPS[selected] / STEPS[selected].sum()
    assert len(set(STEPS[selected])) > 1  # unequal n_k: differs from the plain mean
    np.testing.assert_allclose(metrics["weights"], expected, rtol=1e-6)
    assert_tree_close(new, ref_weighted_mean(c, expected))


def test_multi_krum_weighting_is_checked():
    bad = Config(
        strategy=config("multi_krum", weighting="steps"),
        federation=FederationConfig(num_clients=8),
    )
    with pytest.raises(ConfigError, match="strategy.multi_krum.weighting: 'steps' is not allowed"):
        strategies.get("multi_krum").check(bad)


def test_dp_fedavg_clips_each_update_without_noise(data):
    g, c = data
    clip = 0.8
    new, _, metrics = run(config("dp_fedavg", clip=clip, noise=0.0), g, c, info())
    deltas = jax.tree.map(lambda x, y: x - y[None], as64(c), as64(g))
    norms = np.sqrt(sum(np.sum(d.reshape(K, -1) ** 2, axis=1) for d in jax.tree.leaves(deltas)))
    assert np.all(norms[MASK] > clip)  # every valid update is clipped: the test can tell
    scale = np.minimum(1.0, clip / norms) * MASK / MASK.sum()
    expected = jax.tree.map(lambda d, y: y + np.tensordot(scale, d, axes=1), deltas, as64(g))
    assert_tree_close(new, expected)
    assert float(metrics["clipped_fraction"]) == 1.0
    assert float(metrics["noise_std"]) == 0.0


def test_dp_fedavg_noise_has_the_stated_std():
    g = {"w": jnp.zeros((64, 64), jnp.float32)}
    c = jax.tree.map(lambda x: jnp.stack([x] * K), g)  # zero updates: the result is the noise
    new, _, metrics = run(config("dp_fedavg", clip=2.0, noise=1.5), g, c, info())
    expected_std = 1.5 * 2.0 / MASK.sum()
    assert float(metrics["noise_std"]) == pytest.approx(expected_std)
    assert float(metrics["noise_multiplier"]) == pytest.approx(1.5)
    sample = np.asarray(new["w"]).ravel()
    assert abs(sample.mean()) < 4 * expected_std / np.sqrt(sample.size)
    assert sample.std() == pytest.approx(expected_std, rel=0.05)  # 4096 draws: ~1.1% s.e.
    again, _, _ = run(config("dp_fedavg", clip=2.0, noise=1.5), g, c, info(), key=0)
    other, _, _ = run(config("dp_fedavg", clip=2.0, noise=1.5), g, c, info(), key=1)
    np.testing.assert_array_equal(again["w"], new["w"])
    assert not np.allclose(other["w"], new["w"])


# ---------------------------------------------------------------- server optimisers


def test_fedavgm_without_momentum_equals_fedavg(data):
    g, c = data
    fedavg, _, _ = run(config("fedavg"), g, c, info())
    fedavgm, _, _ = run(config("fedavgm", lr=1.0, momentum=0.0), g, c, info())
    assert_tree_close(fedavgm, as64(fedavg))


@pytest.mark.parametrize(
    "name, optimizer",
    [
        ("fedavgm", lambda s: optax.sgd(s.lr, momentum=s.momentum)),
        ("fedadam", lambda s: optax.adam(s.lr, s.beta1, s.beta2, eps=s.tau)),
        ("fedyogi", lambda s: optax.yogi(s.lr, s.beta1, s.beta2, eps=s.tau)),
        (
            "fedadagrad",
            lambda s: optax.adagrad(s.lr, initial_accumulator_value=s.tau**2, eps=0.0),
        ),
    ],
)
def test_server_optimizers_match_optax_on_the_pseudo_gradient(name, optimizer):
    """Two rounds: the optax reference applied to global - fedavg(clients), in float32."""
    g = jax.tree.map(lambda x: x.astype(jnp.float32), make_global())
    own = {
        "fedavgm": {"lr": 0.05, "momentum": 0.8},
        "fedadam": {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-2},
        "fedyogi": {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-2},
        "fedadagrad": {"lr": 0.05, "tau": 1e-2},
    }[name]
    cfg = config(name, **own)
    opt = optimizer(getattr(cfg, name))
    ref_params, ref_state = g, opt.init(g)
    params, state = g, None
    for round_index in range(2):
        c = make_clients(params, seed=10 + round_index)
        params, state, metrics = run(cfg, params, c, info(), state=state)
        average = ref_weighted_mean(c, STEPS * MASK)
        pseudo_grad = jax.tree.map(lambda x, a: x - a.astype(np.float32), ref_params, average)
        updates, ref_state = opt.update(pseudo_grad, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        assert_tree_close(params, as64(ref_params), scale=10.0)
        assert float(metrics["pseudo_grad_norm"]) > 0


# ---------------------------------------------------------------- evolutionary


TARGET = {"a": [2.0, -1.0, 1.5], "b": [[1.0, -2.0], [0.5, 1.0]]}


def toy_problem(algorithm: str, key: jax.Array, rounds: int = 30, k: int = 8):
    """Clients = global + noise, return = -||params - target||^2 (seed 000 fitness = reward)."""
    go, distance, start = toy_runner(algorithm, rounds, k)
    (params, state), (distances, best) = go(key)
    return float(distance(start)), params, state, np.asarray(distances), np.asarray(best)


@functools.lru_cache
def toy_runner(algorithm: str, rounds: int, k: int):
    """The jitted toy loop, compiled once per (algorithm, rounds, k)."""
    target = jax.tree.map(jnp.asarray, TARGET, is_leaf=lambda x: isinstance(x, list))
    start = jax.tree.map(jnp.zeros_like, target)
    strategy = strategies.make(config("evolutionary", algorithm=algorithm), k)

    def distance(p):
        return sum(
            jnp.sum((x - t) ** 2)
            for x, t in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True)
        )

    def one_round(carry, round_key):
        params, state = carry
        key_noise, key_aggregate = jax.random.split(round_key)
        noise_keys = jax.tree.unflatten(
            jax.tree.structure(params), list(jax.random.split(key_noise, 2))
        )
        clients = jax.tree.map(
            lambda x, nk: x[None] + 0.3 * jax.random.normal(nk, (k,) + x.shape), params, noise_keys
        )
        returns = -jax.vmap(distance)(clients)
        client_info = ClientInfo(jnp.ones(k), returns, jnp.ones(k, bool))
        params, state, metrics = strategy.aggregate(
            state, params, clients, client_info, key_aggregate
        )
        return (params, state), (distance(params), metrics["best_return"])

    @jax.jit
    def go(key):
        return jax.lax.scan(one_round, (start, strategy.init(start)), jax.random.split(key, rounds))

    return go, distance, start


@pytest.mark.parametrize("algorithm", ["differential_evolution", "pso"])
def test_evolutionary_improves_a_toy_fitness(algorithm):
    start, _, _, distances, best = toy_problem(algorithm, jax.random.PRNGKey(0))
    assert best[-1] > best[0] + 5.0  # best fitness (-distance^2) improved by a wide margin
    assert np.mean(distances[-10:]) < 0.35 * start  # and the global moved towards the target


def test_evolutionary_is_reproducible_from_its_key():
    _, p1, s1, d1, _ = toy_problem("differential_evolution", jax.random.PRNGKey(3), rounds=5)
    _, p2, s2, d2, _ = toy_problem("differential_evolution", jax.random.PRNGKey(3), rounds=5)
    _, p3, _, _, _ = toy_problem("differential_evolution", jax.random.PRNGKey(4), rounds=5)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(p1["a"], p3["a"])


def test_differential_evolution_mutates_the_best_valid_client(data):
    """DE/best/1/bin with CR = 0: the best client, one coordinate mutated by F (x_b - x_c)."""
    g, c = data
    g, c = jax.tree.map(lambda x: x.astype(jnp.float32), (g, c))
    cfg = config("evolutionary", mutation=0.5, crossover=0.0)
    new, state, metrics = run(cfg, g, c, info(), key=5)
    best = int(np.argmax(np.where(MASK, RETURNS, -np.inf)))  # client 2 is better but masked
    assert int(metrics["member"]) == best == 1
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(new)])
    clients = np.concatenate([np.asarray(x).reshape(K, -1) for x in jax.tree.leaves(c)], axis=1)
    changed = np.flatnonzero(flat != clients[best])
    assert len(changed) == 1
    j = changed[0]
    differences = np.array(
        [
            0.5 * (clients[b, j] - clients[cc, j])
            for b in range(K)
            for cc in range(K)
            if len({b, cc, best}) == 3
        ]
    )
    assert np.min(np.abs(differences - (flat[j] - clients[best, j]))) < 1e-6
    assert float(metrics["best_return"]) == RETURNS[best]


def test_pso_first_round_moves_the_best_valid_client_on(data):
    """Round 1: own best = swarm best = the best particle, so only inertia acts:
    global = x_best + w (x_best - global), the move the best client made continued."""
    g, c = data
    cfg = config("evolutionary", algorithm="pso", pso_inertia=0.6)
    new, _, metrics = run(cfg, g, c, info())
    assert int(metrics["member"]) == 1
    expected = jax.tree.map(lambda x, y: x[1] + 0.6 * (x[1] - y), as64(c), as64(g))
    assert_tree_close(new, expected, scale=4.0)


def test_evolutionary_needs_the_client_count():
    with pytest.raises(ValueError, match="num_clients"):
        strategies.make(config("evolutionary"))


# ---------------------------------------------------------------- properties of every rule


def deterministic_config(name: str) -> StrategyConfig:
    extra = {
        "dp_fedavg": {"noise": 0.0, "clip": 1e6},
        "trimmed_mean": {"beta": 0.2},
        "centered_clip": {"tau": 1e6},
        "norm_bound": {"max_norm": 1e6},
        **{opt: {"lr": 0.1} for opt in ("fedavgm", "fedadam", "fedyogi", "fedadagrad")},
    }
    return config(name, **extra.get(name, {}))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permuting_clients_does_not_change_the_result(data, name):
    g, c = data
    perm = np.array([4, 0, 6, 2, 1, 5, 3])
    new, _, _ = run(deterministic_config(name), g, c, info())
    permuted = jax.tree.map(lambda x: x[perm], c)
    new_perm, _, _ = run(
        deterministic_config(name), g, permuted, info(MASK[perm], STEPS[perm], RETURNS[perm])
    )
    assert_tree_close(new_perm, as64(new), scale=2.0)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_masked_clients_have_no_influence(data, name):
    """The result with masked garbage clients equals the result on the valid ones alone."""
    g, c = data
    garbage = jax.tree.map(lambda x: x.at[~MASK].set(1e3), c)
    new, _, _ = run(deterministic_config(name), g, garbage, info())
    alone, _, _ = run(
        deterministic_config(name),
        g,
        jax.tree.map(lambda x: x[MASK], c),
        info(MASK[MASK], STEPS[MASK], RETURNS[MASK]),
    )
    assert_tree_close(new, as64(alone), scale=2.0)


@pytest.mark.parametrize(
    "name",
    [n for n in DETERMINISTIC if n not in ("fedadam", "fedyogi", "fedadagrad")] + ["evolutionary"],
)
def test_identical_clients_give_their_params(data, name):
    """Every averaging / robust / selection rule returns a consensus unchanged."""
    g, c = data
    consensus = jax.tree.map(lambda x: x[1], c)
    same = jax.tree.map(lambda x: jnp.stack([x] * K), consensus)
    cfg = deterministic_config(name)
    if name == "fedavgm":
        cfg = override(cfg, {"fedavgm.lr": 1.0})  # first step: x - 1 * (x - consensus)
    new, _, _ = run(cfg, g, same, info())
    assert_tree_close(new, as64(consensus))


@pytest.mark.parametrize("name", strategies.names())
def test_clients_equal_to_global_leave_it_unchanged(data, name):
    g, _ = data
    same = jax.tree.map(lambda x: jnp.stack([x] * K), g)
    cfg = deterministic_config(name)
    new, _, _ = run(cfg, g, same, info())
    # optax's Yogi starts its first moment at 1e-6, so it drifts by ~lr * 1e-3 from rest.
    assert_tree_close(new, as64(g), scale=100.0 if name == "fedyogi" else 1.0)


@pytest.mark.parametrize("name", strategies.names())
def test_every_strategy_jits_in_a_scan_and_keeps_dtypes(data, name):
    """The server state is a valid `lax.scan` carry (as in the round loop); dtypes survive."""
    g, c = data
    strategy = strategies.make(deterministic_config(name), K)

    def one_round(carry, key):
        params, state = carry
        params, state, metrics = strategy.aggregate(state, params, c, info(), key)
        return (params, state), metrics

    (params, state), metrics = jax.jit(
        lambda key: jax.lax.scan(one_round, (g, strategy.init(g)), jax.random.split(key, 3))
    )(jax.random.PRNGKey(0))
    assert jax.tree.structure(params) == jax.tree.structure(g)
    for new, old in zip(jax.tree.leaves(params), jax.tree.leaves(g), strict=True):
        assert new.dtype == old.dtype and new.shape == old.shape
        assert np.all(np.isfinite(np.asarray(new, np.float32)))
    assert all(v.shape[0] == 3 for v in jax.tree.leaves(metrics))


@pytest.mark.parametrize("name", strategies.names())
def test_a_round_without_valid_clients_keeps_params_and_state(data, name):
    g, c = data
    strategy = strategies.make(deterministic_config(name), K)
    state = strategy.init(g)
    new, new_state, _ = jax.jit(strategy.aggregate)(
        state, g, c, info(mask=np.zeros(K, bool)), jax.random.PRNGKey(0)
    )
    for a, b in zip(jax.tree.leaves((new, new_state)), jax.tree.leaves((g, state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- Byzantine clients


def attacked(kind: str, bad: np.ndarray):
    """Honest clients around the global; `bad` clients send huge or NaN params."""
    g = make_global(seed=5)
    c = make_clients(g, seed=6, scale=0.3)
    value = 1e4 if kind == "huge" else np.nan
    c = jax.tree.map(lambda x: x.at[bad].set(value), c)
    mask = np.ones(K, bool)
    if kind == "nan":
        # As the round does: non-finite updates are masked and replaced by the global.
        mask = ~bad
        c = jax.tree.map(lambda x, y: x.at[bad].set(y), c, g)
    return g, c, mask


@pytest.mark.parametrize("kind", ["huge", "nan"])
@pytest.mark.parametrize(
    "name, fields",
    [
        ("median", {}),
        ("trimmed_mean", {"beta": 0.3}),
        ("krum", {"f": 2}),
        ("multi_krum", {"f": 2}),
    ],
)
def test_robust_rules_stay_within_the_honest_range(name, fields, kind):
    bad = np.zeros(K, bool)
    bad[[1, 4]] = True  # f = 2 of n = 7
    g, c, mask = attacked(kind, bad)
    new, _, _ = run(config(name, **fields), g, c, info(mask=mask))
    for x, y in zip(jax.tree.leaves(c), jax.tree.leaves(new), strict=True):
        honest = np.asarray(x, np.float64)[~bad]
        y = np.asarray(y, np.float64)
        tol = TOL[jnp.dtype(x.dtype).type]
        assert np.all(np.isfinite(y))
        assert np.all(y >= honest.min(axis=0) - tol) and np.all(y <= honest.max(axis=0) + tol)


def test_fedavg_is_not_robust_to_huge_clients():
    """Control for the test above: the attack does move a plain average out of range."""
    bad = np.zeros(K, bool)
    bad[[1, 4]] = True
    g, c, mask = attacked("huge", bad)
    new, _, _ = run(config("fedavg"), g, c, info(mask=mask))
    honest_max = np.asarray(c["dense"]["kernel"])[~bad].max(axis=0)
    assert np.all(np.asarray(new["dense"]["kernel"]) > honest_max)


# ---------------------------------------------------------------- validation


def full_config(num_clients: int = 8, name: str = "fedavg", **fields) -> Config:
    """A whole config with strategy `name` and `fields` of its own section."""
    return Config(
        strategy=config(name, **fields),
        federation=FederationConfig(num_clients=num_clients),
    )


@pytest.mark.parametrize(
    "fields, num_clients, field",
    [
        ({"name": "trimmed_mean", "beta": 0.5}, 8, "strategy.trimmed_mean.beta"),
        ({"name": "trimmed_mean", "beta": -0.1}, 8, "strategy.trimmed_mean.beta"),
        ({"name": "krum", "f": 3}, 8, "strategy.krum.f"),
        ({"name": "krum", "f": -1}, 8, "strategy.krum.f"),
        ({"name": "multi_krum", "f": 3}, 8, "strategy.multi_krum.f"),
        ({"name": "multi_krum", "f": 1, "m": 8}, 8, "strategy.multi_krum.m"),
        ({"name": "fedadam", "lr": 0.0}, 8, "strategy.fedadam.lr"),
        ({"name": "fedavgm", "lr": -1.0}, 8, "strategy.fedavgm.lr"),
        ({"name": "fedavgm", "momentum": 1.0}, 8, "strategy.fedavgm.momentum"),
        ({"name": "fedyogi", "beta2": 1.5}, 8, "strategy.fedyogi.beta2"),
        ({"name": "fedadam", "beta1": 1.0}, 8, "strategy.fedadam.beta1"),
        ({"name": "fedadagrad", "tau": 0.0}, 8, "strategy.fedadagrad.tau"),
        ({"name": "reward_weighted", "weighting": "raw"}, 8, "strategy.reward_weighted.weighting"),
        (
            {"name": "reward_weighted", "temperature": 0.0},
            8,
            "strategy.reward_weighted.temperature",
        ),
        ({"name": "evolutionary", "algorithm": "cma"}, 8, "strategy.evolutionary.algorithm"),
        ({"name": "evolutionary"}, 3, "strategy.evolutionary.algorithm"),
        ({"name": "evolutionary", "mutation": 0.0}, 8, "strategy.evolutionary.mutation"),
        ({"name": "evolutionary", "crossover": 1.5}, 8, "strategy.evolutionary.crossover"),
        (
            {"name": "evolutionary", "algorithm": "pso", "pso_social": -1.0},
            8,
            "strategy.evolutionary.pso_social",
        ),
        ({"name": "dp_fedavg", "clip": 0.0}, 8, "strategy.dp_fedavg.clip"),
        ({"name": "dp_fedavg", "noise": -1.0}, 8, "strategy.dp_fedavg.noise"),
    ],
)
def test_bad_values_raise_config_errors_naming_the_field(fields, num_clients, field):
    cfg = full_config(num_clients, **fields)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        strategies.get(cfg.strategy.name).check(cfg)


def test_a_negative_update_clip_is_a_config_error():
    """`strategy.clip_update_norm` is shared by every rule, so the whole config checks it."""
    cfg = dataclasses.replace(
        full_config(8), strategy=override(StrategyConfig(), {"clip_update_norm": -1.0})
    )
    with pytest.raises(ConfigError, match=r"strategy\.clip_update_norm"):
        validation.validate(cfg)


def test_good_values_validate():
    for name in strategies.names():
        cfg = full_config(8, name=name)
        strategies.get(name).check(cfg)
    cfg = full_config(4, name="krum", f=0)  # n = 4 > 2 * 0 + 2
    strategies.get("krum").check(cfg)
