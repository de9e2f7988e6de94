"""Environments: registry-wide contract, gymnax equivalence, heterogeneity."""

from __future__ import annotations

from collections import deque

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.classic import CLASSIC_CONTROL
from jfedrl.config import EnvConfig
from jfedrl.round.environment import make_client_envs
from jfedrl.schema.checks import ConfigError
from jfedrl.validation import validate_env

STEPS = 30
SHORT_EPISODE = 12
# Brax compiles for 30-60 s each on a 2-core CPU (physics step + reset); tests/test_envs_brax.py
# covers Brax in the default run.
SLOW_BRAX = ("brax-ant", "brax-halfcheetah", "brax-hopper", "brax-inverted_pendulum")
ALL_ENVS = [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_BRAX else name
    for name in envs.names()
]


def random_actions(key, space, num):
    if hasattr(space, "n"):
        return jax.random.randint(key, (num,), 0, space.n)
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape)
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape)
    return jax.random.uniform(key, (num, *space.shape), minval=low, maxval=high)


def rollout(env, params, key, actions):
    """Reset and step through `actions` with keys split from `key` (one client)."""
    key_reset, key_steps = jax.random.split(key)
    obs0, state = env.reset(key_reset, params)

    def step(state, inputs):
        step_key, action = inputs
        obs, state, reward, terminated, truncated, info = env.step(step_key, state, action, params)
        return state, (obs, reward, terminated, truncated, info["final_observation"])

    keys = jax.random.split(key_steps, actions.shape[0])
    _, out = jax.lax.scan(step, state, (keys, actions))
    return obs0, out


# ----------------------------------------------------------------- registry-wide


@pytest.mark.parametrize("name", ALL_ENVS)
def test_registry_contract_under_jit_and_vmap(name):
    env, default = envs.make(name)
    default = default.replace(max_steps_in_episode=SHORT_EPISODE)
    variant = "random" if "random" in envs.spec(name).variants else "default"
    params = envs.client_params(name, jax.random.PRNGKey(1), 2, variant, default_params=default)
    obs_space, act_space = env.observation_space(default), env.action_space(default)
    actions = jax.vmap(lambda k: random_actions(k, act_space, STEPS))(
        jax.random.split(jax.random.PRNGKey(2), 2)
    )
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    run = jax.jit(jax.vmap(lambda p, k, a: rollout(env, p, k, a)))
    obs0, (obs, reward, terminated, truncated, final_obs) = jax.device_get(
        run(params, keys, actions)
    )

    shape = tuple(obs_space.shape)
    assert obs0.shape == (2, *shape) and obs.shape == (2, STEPS, *shape)
    assert final_obs.shape == obs.shape
    assert obs0.dtype == obs.dtype == np.dtype(obs_space.dtype)
    assert reward.shape == terminated.shape == truncated.shape == (2, STEPS)
    assert np.all(np.isfinite(reward)) and np.all(np.isfinite(obs))
    low = np.broadcast_to(np.asarray(obs_space.low, np.float64), shape)
    high = np.broadcast_to(np.asarray(obs_space.high, np.float64), shape)
    assert np.all(obs >= low) and np.all(obs <= high)
    done = terminated | truncated
    # Episodes end: the short time limit cuts every client's first episode in time.
    assert np.all(done[:, :SHORT_EPISODE].any(axis=1))
    assert np.all(done.sum(axis=1) >= STEPS // SHORT_EPISODE)


@pytest.mark.slow
def test_describe_every_env():
    for name in envs.names():
        info = envs.describe(name)
        assert info["name"] == name
        assert set(info) >= {
            "description",
            "observation_shape",
            "observation_dtype",
            "action_space",
            "params",
            "variants",
        }
        assert set(info["params"]) == set(envs.spec(name).tunable_names)
        assert info["variants"][0] == "default"
    assert envs.describe("CartPole-v1")["action_space"] == "Discrete(2)"
    assert envs.describe("Pendulum-v1")["action_space"] == "Box(1,) [-2, 2]"
    assert envs.describe("CartPole-v1")["params"]["length"] == 0.5
    assert envs.describe("Breakout-MinAtar")["observation_shape"] == (10, 10, 4)


# ----------------------------------------------------------- gymnax equivalence


@pytest.fixture(scope="module", params=CLASSIC_CONTROL)
def classic(request):
    """Per classic env: gymnax's own rollouts and ours, same keys and actions.

    gymnax's default params are passed as arguments (as a training loop passes
    them), once unbatched and once vmapped over `n` copies; XLA's vectorised and
    scalar code paths differ in the last ulp (e.g. `sin`), so each of ours is
    compared with gymnax run the same way. In the `varied` batch client 0 has the
    default params and client i > 0 has tunable param i - 1 scaled by 1.2.
    """
    name = request.param
    # A shorter time limit (gymnax's own field) so the rollout crosses auto-resets.
    ref_env, ref_params = gymnax.make(name)
    ref_params = ref_params.replace(max_steps_in_episode=100)
    env, default = envs.make(name)
    default = default.replace(max_steps_in_episode=100)
    tunables = envs.spec(name).tunable_names
    n = 1 + len(tunables)
    base = envs.client_params(name, jax.random.PRNGKey(0), n, "default", default_params=default)
    values = {
        t: [float(getattr(default, t)) * (1.2 if i + 1 == c else 1.0) for c in range(n)]
        for i, t in enumerate(tunables)
    }
    params = envs.client_params(
        name, jax.random.PRNGKey(0), n, "default", values=values, default_params=default
    )
    actions = random_actions(jax.random.PRNGKey(5), env.action_space(default), 300)
    key = jax.random.PRNGKey(7)

    def run(e):
        return jax.jit(lambda p, k, a: rollout(e, p, k, a))

    def run_batch(e):
        return jax.jit(jax.vmap(lambda p, k, a: rollout(e, p, k, a), in_axes=(0, None, None)))

    first = jax.tree.map(lambda x: x[0], base)
    ours_batch = run_batch(env)
    return dict(
        reference=jax.device_get(run(ref_env)(ref_params, key, actions)),
        single=jax.device_get(run(env)(first, key, actions)),
        reference_batch=jax.device_get(
            run_batch(ref_env)(envs.batch_params(ref_params, n), key, actions)
        ),
        default_batch=jax.device_get(ours_batch(base, key, actions)),
        varied=jax.device_get(ours_batch(params, key, actions)),
        tunables=tunables,
        name=name,
    )


def test_default_params_reproduce_gymnax_exactly(classic):
    data = classic
    for ours, theirs in zip(
        jax.tree.leaves(data["single"]), jax.tree.leaves(data["reference"]), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(
        jax.tree.leaves(data["default_batch"]),
        jax.tree.leaves(data["reference_batch"]),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(
        jax.tree.leaves(data["varied"]), jax.tree.leaves(data["reference_batch"]), strict=True
    ):
        np.testing.assert_array_equal(ours[0], theirs[0])
    _, (_, _, terminated, truncated, _) = data["reference"]
    assert terminated.any() or truncated.any(), "the reference should include an episode end"


def test_each_physical_param_changes_the_trajectory(classic):
    data, name = classic, classic["name"]
    obs = data["varied"][1][0]
    for i, param in enumerate(data["tunables"]):
        assert not np.array_equal(obs[i + 1], obs[0]), f"{name}.{param} had no effect"


def test_two_random_clients_diverge_under_identical_actions():
    env, default = envs.make("CartPole-v1")
    params = envs.client_params("CartPole-v1", jax.random.PRNGKey(3), 2, "random")
    actions = jnp.tile(jnp.array([0, 1]), 20)
    run = jax.jit(jax.vmap(lambda p: rollout(env, p, jax.random.PRNGKey(0), actions)))
    obs0, (obs, *_) = run(params)
    np.testing.assert_array_equal(obs0[0], obs0[1])  # same start state
    assert not np.allclose(obs[0], obs[1])


def test_cartpole_derived_params_follow_their_sources():
    for variant in ("random", "extreme"):
        p = envs.client_params("CartPole-v1", jax.random.PRNGKey(4), 64, variant)
        np.testing.assert_array_equal(p.total_mass, p.masscart + p.masspole)
        np.testing.assert_array_equal(p.polemass_length, p.masspole * p.length)
    p = envs.client_params("Acrobot-v1", jax.random.PRNGKey(4), 16, "random")
    np.testing.assert_array_equal(p.link_com_pos_1, 0.5 * p.link_length_1)
    np.testing.assert_array_equal(p.link_com_pos_2, 0.5 * p.link_length_2)


def test_minatar_sticky_actions():
    """Probability 0 is gymnax's game; probability 1 repeats the first action (0) forever."""
    env, default = envs.make("Breakout-MinAtar")
    ref_env, ref_params = gymnax.make("Breakout-MinAtar")
    actions = random_actions(jax.random.PRNGKey(1), env.action_space(default), 60)
    key = jax.random.PRNGKey(2)
    ours = jax.jit(lambda p, a: rollout(env, p, key, a))
    theirs = jax.jit(lambda a: rollout(ref_env, ref_params, key, a))
    for a, b in zip(
        jax.tree.leaves(ours(default, actions)), jax.tree.leaves(theirs(actions)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    sticky = default.replace(sticky_action_prob=1.0)
    zeros = jnp.zeros_like(actions)
    for a, b in zip(
        jax.tree.leaves(ours(sticky, actions)), jax.tree.leaves(theirs(zeros)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours(default, actions)[1][0], theirs(zeros)[1][0])


# ------------------------------------------------------------------ gridworld


def reachable(walls, goal_cell):
    n = walls.shape[0]
    seen, todo = {(0, 0)}, deque([(0, 0)])
    while todo:
        r, c = todo.popleft()
        if r * n + c == goal_cell:
            return True
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < n and 0 <= cc < n and not walls[rr, cc] and (rr, cc) not in seen:
                seen.add((rr, cc))
                todo.append((rr, cc))
    return False


def test_gridworld_layouts_are_per_client_and_solvable():
    p = envs.client_params("GridWorld-8x8", jax.random.PRNGKey(0), 32, "extreme")
    walls, goals = np.asarray(p.walls), np.asarray(p.goal_cell)
    assert len(set(goals.tolist())) > 10 and walls.any()
    assert len({w.tobytes() for w in walls}) == 32
    for w, g in zip(walls, goals, strict=True):
        assert not w[0, 0] and not w[g // 8, g % 8]
        assert reachable(w, g)
    # A denser field from the same seed only adds walls (obstacles "appear").
    env, default = envs.make("GridWorld-8x8")
    sparse = env.derive(default.replace(layout_seed=3, wall_density=0.1))
    dense = env.derive(default.replace(layout_seed=3, wall_density=0.3))
    assert np.all(dense.walls >= sparse.walls) and dense.walls.sum() > sparse.walls.sum()


def test_gridworld_dynamics_by_hand():
    env, default = envs.make("GridWorld-5x5")
    obs, state = env.reset(jax.random.PRNGKey(0), default)
    assert obs[0, 0, 2] == 1 and obs[4, 4, 1] == 1  # agent faces east at (0, 0); goal
    step = jax.jit(env.step)
    key = jax.random.PRNGKey(0)
    # Forward x4 (east), turn right (south), forward x4: goal after 9 steps.
    total, ends = 0.0, []
    for action in [2, 2, 2, 2, 1, 2, 2, 2, 2]:
        obs, state, reward, terminated, truncated, info = step(key, state, action, default)
        total += float(reward)
        ends.append(bool(terminated))
    assert ends == [False] * 8 + [True]
    assert total == pytest.approx(1.0 - 0.9 * 9 / 100)
    assert int(state.row) == 0 and int(state.col) == 0  # auto-reset
    assert info["final_observation"][4, 4, 2 + 1] == 1  # arrived facing south
    # Walls block: a wall east of the start keeps the agent in place.
    walled = default.replace(walls=default.walls.at[0, 1].set(True))
    _, s = env.reset(key, walled)
    _, s, *_ = step(key, s, 2, walled)
    assert (int(s.row), int(s.col)) == (0, 0)


# ------------------------------------------------------------ variant sampling


def _inside(values, intervals):
    return np.any([(values >= lo - 1e-6) & (values <= hi + 1e-6) for lo, hi in intervals], axis=0)


@pytest.mark.parametrize("name", envs.names())
def test_variant_sampling_reproducible_and_in_range(name):
    entry = envs.spec(name)
    if not entry.tunables:
        pytest.skip("no tunable params")
    _, default = envs.make(name)
    key = jax.random.PRNGKey(11)
    for variant in ("random", "extreme"):
        a = envs.client_params(name, key, 200, variant)
        b = envs.client_params(name, key, 200, variant)
        c = envs.client_params(name, jax.random.PRNGKey(12), 200, variant)
        for t in entry.tunables:
            va, vb, vc = (np.asarray(getattr(p, t.name), np.float64) for p in (a, b, c))
            np.testing.assert_array_equal(va, vb)
            assert not np.array_equal(va, vc)
            if t.integer:
                assert np.all(va == np.round(va))
            if variant == "random" or not t.extreme:
                assert np.all(_inside(va, [t.random])), t.name
            else:
                lo, hi = t.random
                assert np.all(_inside(va, t.extreme)), t.name
                assert not np.any((va > lo) & (va < hi)), f"{t.name} inside the random range"
                for interval in t.extreme:  # every interval of the union is used
                    assert np.any(_inside(va, [interval])), (t.name, interval)
    d = envs.client_params(name, key, 3, "default")
    for t in entry.tunables:
        np.testing.assert_array_equal(
            getattr(d, t.name), np.full(3, getattr(default, t.name), getattr(d, t.name).dtype)
        )


def test_user_ranges_and_values_override_the_variant():
    p = envs.client_params(
        "CartPole-v1",
        jax.random.PRNGKey(0),
        3,
        "extreme",
        ranges={"length": [0.3, 0.31], "masscart": [[0.1, 0.2], [3.0, 4.0]]},
        values={"force_mag": [1.0, 2.0, 3.0]},
    )
    np.testing.assert_array_equal(p.force_mag, np.float32([1.0, 2.0, 3.0]))
    assert np.all((p.length >= 0.3) & (p.length <= 0.31))
    assert np.all(_inside(np.asarray(p.masscart), [(0.1, 0.2), (3.0, 4.0)]))
    np.testing.assert_array_equal(p.polemass_length, p.masspole * p.length)
    assert np.all(_inside(np.asarray(p.masspole), [(0.01, 0.05), (0.5, 1.0)]))  # extreme


def test_client_envs_sample_the_configured_variant():
    config = EnvConfig(name="Pendulum-v1", variant="random", values={"g": [9.0, 11.0]})
    client_envs = make_client_envs(config, 2)
    params = client_envs.client_params(jax.random.PRNGKey(0))
    table = client_envs.param_table(params)
    assert set(table) == {"m", "l", "g"}
    np.testing.assert_array_equal(table["g"], np.float32([9.0, 11.0]))
    assert np.all((table["m"] >= 0.75) & (table["m"] <= 1.25))
    short = make_client_envs(EnvConfig(name="CartPole-v1", max_episode_steps=7), 2)
    assert short.max_episode_steps == 7
    assert int(short.default_params.max_steps_in_episode) == 7


@pytest.mark.parametrize(
    ("config", "clients", "field", "mentions"),
    [
        (EnvConfig(ranges={"pole_length": [0, 1]}), 2, "env.ranges", "force_mag, length"),
        (EnvConfig(values={"mass": [1.0, 2.0]}), 2, "env.values", "masspole"),
        (EnvConfig(values={"length": [0.5, 0.6, 0.7]}), 2, "env.values", "one value per client"),
        (EnvConfig(ranges={"length": [0.9, 0.1]}), 2, "env.ranges", "low <= high"),
        (EnvConfig(ranges={"length": [-1.0, 0.1]}), 2, "env.ranges", "must lie in"),
        (EnvConfig(variant="wild"), 2, "env.variant", "default, extreme, random"),
        (EnvConfig(drift="zigzag"), 2, "env.drift", "sinusoidal"),
        (EnvConfig(drift="linear", drift_params=("tau",)), 2, "env.drift_params", "masspole"),
        (EnvConfig(drift="linear", drift_period=0), 2, "env.drift_period", ">= 1"),
        (
            EnvConfig(name="Breakout-MinAtar", disturbance="impulse"),
            2,
            "env.disturbance",
            "obs_noise",
        ),
        (EnvConfig(disturbance="obs_noise", disturbance_prob=0.0), 2, "env.disturbance_prob", ""),
        (EnvConfig(disturbance="obs_noise", disturbance_scale=0.0), 2, "env.disturbance_scale", ""),
        (EnvConfig(backend="mjx"), 2, "env.backend", "not a Brax env"),
        (
            EnvConfig(name="GridWorld-5x5", drift="switch", drift_params=("goal_cell",)),
            2,
            "env.drift_params",
            "wall_density",
        ),
    ],
)
def test_bad_env_config_raises_config_error(config, clients, field, mentions):
    with pytest.raises(ConfigError) as error:
        validate_env(config, clients)
    message = str(error.value)
    assert message.startswith(field + ":"), message
    assert mentions in message


def test_docs_cover_every_env_and_param():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "environments.md").read_text()
    for name in envs.names():
        assert f"`{name}`" in text or name in text, name
        for param in envs.spec(name).tunable_names:
            assert f"`{param}`" in text, (name, param)
    for kind in (*envs.DRIFTS, *envs.DISTURBANCES, *envs.VARIANTS):
        assert f"`{kind}`" in text, kind
