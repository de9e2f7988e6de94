"""Drift schedules (documented values, no recompilation) and disturbance events."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.disturbance import Disturbed

KEY = jax.random.PRNGKey(42)
BASE_LENGTH = np.float32([0.5, 0.4, 0.6])


def cartpole_base():
    return envs.client_params(
        "CartPole-v1", jax.random.PRNGKey(0), 3, values={"length": BASE_LENGTH.tolist()}
    )


def drifted(kind, rounds, period=4, magnitude=0.5, params=("length",), name="CartPole-v1"):
    drift = jax.jit(envs.make_drift(name, kind, period, magnitude, params))
    base = cartpole_base() if name == "CartPole-v1" else envs.client_params(name, KEY, 3)
    return [drift(KEY, base, jnp.int32(r)) for r in rounds]


def lengths(kind, rounds, **kw):
    return np.stack([np.asarray(p.length) for p in drifted(kind, rounds, **kw)])


def test_switch_toggles_every_period():
    got = lengths("switch", [0, 3, 4, 7, 8, 12])
    factor = np.float32([1.0, 1.0, 1.5, 1.5, 1.0, 1.5])[:, None]
    np.testing.assert_allclose(got, factor * BASE_LENGTH, rtol=1e-6)


def test_linear_ramps_then_holds():
    got = lengths("linear", [0, 1, 2, 4, 100])
    factor = np.float32([1.0, 1.125, 1.25, 1.5, 1.5])[:, None]
    np.testing.assert_allclose(got, factor * BASE_LENGTH, rtol=1e-6)


def test_sinusoidal_has_the_configured_period():
    got = lengths("sinusoidal", [0, 1, 2, 3, 4, 5])
    factor = np.float32([1.0, 1.5, 1.0, 0.5, 1.0, 1.5])[:, None]
    np.testing.assert_allclose(got, factor * BASE_LENGTH, rtol=1e-6, atol=1e-7)
    # A large magnitude is clipped at 5% of the base (a length never turns negative).
    low = lengths("sinusoidal", [3], magnitude=2.0)
    np.testing.assert_allclose(low[0], 0.05 * BASE_LENGTH, rtol=1e-6)


def test_random_walk_matches_its_documented_sum():
    rounds = [0, 1, 2, 5, 9]
    got = lengths("random_walk", rounds, period=4, magnitude=0.5)
    param_key = jax.random.fold_in(KEY, zlib.crc32(b"length") & 0x7FFFFFFF)
    eps = np.stack(
        [
            np.asarray(jax.random.normal(jax.random.fold_in(param_key, r), (3,)))
            for r in range(1, 10)
        ]
    )
    for row, t in zip(got, rounds, strict=True):
        walk = eps[:t].sum(axis=0)
        expected = BASE_LENGTH * np.maximum(1.0 + 0.5 * walk / 2.0, 0.05)
        np.testing.assert_allclose(row, expected, rtol=1e-5)
    assert not np.allclose(got[-1] / BASE_LENGTH, got[-1][0] / BASE_LENGTH[0])  # per client


def test_drift_recomputes_derived_params_and_leaves_the_rest():
    base = cartpole_base()
    for p in drifted("switch", [4], params=("length", "masspole")):
        np.testing.assert_array_equal(p.polemass_length, p.masspole * p.length)
        np.testing.assert_array_equal(p.total_mass, p.masscart + p.masspole)
        np.testing.assert_array_equal(p.force_mag, base.force_mag)
        np.testing.assert_allclose(p.masspole, 1.5 * base.masspole, rtol=1e-6)


def test_default_drift_set_integer_and_absolute_params():
    # CartPole's default set: force_mag, length, masspole.
    (p,) = drifted("switch", [4], params=())
    base = cartpole_base()
    for name in ("force_mag", "length", "masspole"):
        np.testing.assert_allclose(getattr(p, name), 1.5 * getattr(base, name), rtol=1e-6)
    np.testing.assert_array_equal(p.gravity, base.gravity)
    # Integer params are rounded: Freeway's player_speed 3 -> 3 * 1.4 = 4.2 -> 4.
    (p,) = drifted("switch", [4], magnitude=0.4, params=(), name="Freeway-MinAtar")
    np.testing.assert_array_equal(p.player_speed, [4, 4, 4])
    assert p.player_speed.dtype == jnp.int32
    # Params whose default is 0 drift in units of their reference (sticky: 0.2).
    (p,) = drifted("switch", [4], magnitude=0.5, params=(), name="Breakout-MinAtar")
    np.testing.assert_allclose(p.sticky_action_prob, [0.1, 0.1, 0.1], rtol=1e-6)
    # Obstacles appear every other period in the gridworld and vanish again.
    on, off = drifted("switch", [4, 8], magnitude=1.0, params=(), name="GridWorld-8x8")
    assert np.asarray(on.walls).sum() > 0 and np.asarray(off.walls).sum() == 0
    np.testing.assert_allclose(on.wall_density, 0.3, rtol=1e-6)


@pytest.mark.parametrize("kind", envs.DRIFTS)
def test_drift_never_recompiles_when_the_round_changes(kind):
    traces = []
    drift = envs.make_drift("CartPole-v1", kind, 3, 0.5)

    def f(params, round_index):
        traces.append(1)
        return drift(KEY, params, round_index)

    jitted = jax.jit(f)
    base = cartpole_base()
    values = [np.asarray(jitted(base, jnp.int32(r)).length) for r in range(12)]
    assert jitted._cache_size() == 1 and len(traces) == 1
    if kind != "none":
        assert len({v.tobytes() for v in values}) > 1


# ---------------------------------------------------------------- disturbances


def rollout(env, params, key, actions):
    obs0, state = env.reset(key, params)

    def step(carry, inputs):
        state = carry
        step_key, action = inputs
        obs, state, reward, terminated, truncated, info = env.step(step_key, state, action, params)
        return state, (obs, state, info)

    keys = jax.random.split(key, actions.shape[0])
    return jax.lax.scan(step, state, (keys, actions))[1]


@pytest.fixture(scope="module")
def cartpole_runs():
    env, params = envs.make("CartPole-v1")
    impulse = envs.spec("CartPole-v1").impulse
    actions = jax.random.randint(jax.random.PRNGKey(1), (400,), 0, 2)
    run = {}
    for label, wrapped in {
        "bare": env,
        "impulse_p0": Disturbed(env, "impulse", 0.0, 1.0, impulse),
        "noise_p0": Disturbed(env, "obs_noise", 0.0, 1.0),
        "impulse": envs.disturb("CartPole-v1", env, "impulse", 0.25, 0.5),
        "noise": envs.disturb("CartPole-v1", env, "obs_noise", 0.25, 0.1),
    }.items():
        run[label] = jax.device_get(
            jax.jit(lambda k, a, e=wrapped: rollout(e, params, k, a))(KEY, actions)
        )
    return run


def test_zero_probability_reproduces_the_bare_env(cartpole_runs):
    bare_obs, bare_state, _ = cartpole_runs["bare"]
    for label in ("impulse_p0", "noise_p0"):
        obs, state, info = cartpole_runs[label]
        np.testing.assert_array_equal(obs, bare_obs)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(bare_state), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not info["disturbed"].any()


def test_events_happen_at_the_configured_frequency(cartpole_runs):
    for label in ("impulse", "noise"):
        rate = cartpole_runs[label][2]["disturbed"].mean()
        assert 0.18 < rate < 0.32, (label, rate)  # 400 Bernoulli(0.25) draws


def test_obs_noise_perturbs_observations_not_the_state(cartpole_runs):
    bare_obs, bare_state, _ = cartpole_runs["bare"]
    obs, state, info = cartpole_runs["noise"]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(bare_state), strict=True):
        np.testing.assert_array_equal(a, b)
    hit = info["disturbed"]
    np.testing.assert_array_equal(obs[~hit], bare_obs[~hit])
    noise = obs[hit] - bare_obs[hit]
    assert 0.07 < noise.std() < 0.13  # std 0.1


def test_impulse_changes_the_dynamics(cartpole_runs):
    bare_obs, _, _ = cartpole_runs["bare"]
    obs, _, info = cartpole_runs["impulse"]
    first = int(np.argmax(info["disturbed"]))
    np.testing.assert_array_equal(obs[:first], bare_obs[:first])
    assert not np.allclose(obs[first], bare_obs[first])


def test_gridworld_impulse_pushes_the_agent():
    env, params = envs.make("GridWorld-5x5")
    _, state = env.reset(KEY, params)
    state = state.replace(row=jnp.int32(2), col=jnp.int32(2))
    moved = {
        (int(s.row), int(s.col))
        for s in (env.impulse(jax.random.PRNGKey(i), state, 1.0, params) for i in range(16))
    }
    assert moved == {(1, 2), (3, 2), (2, 1), (2, 3)}
    far = env.impulse(jax.random.PRNGKey(0), state, 2.0, params)
    assert abs(int(far.row) - 2) + abs(int(far.col) - 2) == 2
