"""Brax adapters: per-client physics scales, auto-reset, impulses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.brax_envs import BraxParams, scale_system


def rollout(env, params, key, actions):
    obs0, state = env.reset(key, params)

    def step(state, action):
        obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        return state, (obs, reward, terminated, truncated, info["final_observation"])

    return obs0, jax.lax.scan(step, state, actions)[1]


def test_scale_system_scales_every_backends_fields():
    env, _ = envs.make("brax-hopper")
    sys = env._sys
    scaled = scale_system(sys, BraxParams(mass_scale=2.0, friction_scale=0.5, gravity_scale=3.0))
    np.testing.assert_allclose(scaled.link.inertia.mass, 2.0 * sys.link.inertia.mass)
    np.testing.assert_allclose(scaled.link.inertia.i, 2.0 * sys.link.inertia.i)
    np.testing.assert_allclose(scaled.body_mass, 2.0 * sys.body_mass)
    np.testing.assert_allclose(scaled.body_inertia, 2.0 * sys.body_inertia)
    np.testing.assert_allclose(scaled.geom_friction, 0.5 * sys.geom_friction)
    np.testing.assert_allclose(scaled.gravity, 3.0 * sys.gravity)
    np.testing.assert_allclose(scaled.opt.gravity, 3.0 * sys.opt.gravity)
    same = scale_system(sys, BraxParams())
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(sys), strict=True):
        np.testing.assert_array_equal(a, b)


def test_backend_choice_and_errors():
    env, _ = envs.make("brax-inverted_pendulum", backend="positional")
    assert env.backend == "positional"
    assert envs.make("brax-inverted_pendulum")[0].backend == "spring"
    with pytest.raises(ValueError, match="allowed: spring, positional, generalized, mjx"):
        envs.make("brax-inverted_pendulum", backend="bullet")


@pytest.fixture(scope="module")
def pendulum_runs():
    """brax-inverted_pendulum: 4 clients (default, mass x1.3, gravity x1.3, friction x1.3)."""
    env, default = envs.make("brax-inverted_pendulum")
    default = default.replace(max_steps_in_episode=25)
    params = envs.client_params(
        "brax-inverted_pendulum",
        jax.random.PRNGKey(0),
        4,
        values={
            "mass_scale": [1.0, 1.3, 1.0, 1.0],
            "gravity_scale": [1.0, 1.0, 1.3, 1.0],
            "friction_scale": [1.0, 1.0, 1.0, 1.3],
        },
        default_params=default,
    )
    actions = jnp.sin(jnp.arange(40.0))[:, None]
    run = jax.jit(jax.vmap(lambda p: rollout(env, p, jax.random.PRNGKey(1), actions)))
    return jax.device_get(run(params))


def test_mass_and_gravity_change_the_trajectory(pendulum_runs):
    obs0, (obs, reward, terminated, truncated, final_obs) = pendulum_runs
    np.testing.assert_array_equal(obs0[1:], np.broadcast_to(obs0[0], obs0[1:].shape))
    assert not np.allclose(obs[1], obs[0]) and not np.allclose(obs[2], obs[0])
    # The inverted pendulum has no contacts: friction changes nothing.
    np.testing.assert_array_equal(obs[3], obs[0])
    assert np.all(np.isfinite(reward))


def test_brax_auto_reset_restarts_from_the_first_state(pendulum_runs):
    obs0, (obs, reward, terminated, truncated, final_obs) = pendulum_runs
    done = terminated | truncated
    assert done.any()
    for client in range(4):
        for t in np.flatnonzero(done[client]):
            np.testing.assert_array_equal(obs[client, t], obs0[client])
            assert not np.array_equal(final_obs[client, t], obs0[client])
    # Truncation by the time limit: the first episode ends at step 25 if not earlier.
    assert np.all(done[:, :25].any(axis=1))


@pytest.mark.slow
def test_hopper_friction_changes_the_trajectory():
    """Friction acts through contacts, so it needs a legged env (slow to compile on CPU)."""
    env, default = envs.make("brax-hopper")
    params = envs.client_params(
        "brax-hopper",
        jax.random.PRNGKey(0),
        2,
        values={"friction_scale": [1.0, 0.3]},
        default_params=default,
    )
    actions = jnp.tile(jnp.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]), (15, 1))
    run = jax.jit(jax.vmap(lambda p: rollout(env, p, jax.random.PRNGKey(1), actions)))
    _, (obs, reward, *_) = run(params)
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(reward))
    assert not np.allclose(obs[0], obs[1])


@pytest.mark.parametrize("backend", ["spring", "positional"])
def test_params_act_on_the_next_step_whatever_the_reset_used(backend):
    """Drifted params apply at once, though spring/positional cache masses at reset."""
    env, default = envs.make("brax-inverted_pendulum", backend=backend)
    heavy = default.replace(mass_scale=1.7, gravity_scale=1.3)
    key = jax.random.PRNGKey(3)
    _, light_state = env.reset(key, default)
    _, heavy_state = env.reset(key, heavy)
    action = jnp.full((1,), 0.5)
    after_light_reset = env.step(key, light_state, action, heavy)
    after_heavy_reset = env.step(key, heavy_state, action, heavy)
    # Everything but `first` (the stored reset state, drawn with the reset's params).
    light = (after_light_reset[0], after_light_reset[1].brax_state, after_light_reset[2])
    heavy_ = (after_heavy_reset[0], after_heavy_reset[1].brax_state, after_heavy_reset[2])
    for a, b in zip(jax.tree.leaves(light), jax.tree.leaves(heavy_), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(after_light_reset[0], env.step(key, light_state, action, default)[0])


def test_brax_impulse_kicks_the_velocities():
    env, default = envs.make("brax-inverted_pendulum")
    disturbed = envs.disturb("brax-inverted_pendulum", env, "impulse", 1.0, 0.5)
    key = jax.random.PRNGKey(0)
    _, state = env.reset(key, default)
    kicked = jax.jit(lambda k, s: env.impulse(k, s, 0.5, default))(key, state)
    before = state.brax_state.pipeline_state
    after = kicked.brax_state.pipeline_state
    np.testing.assert_array_equal(after.q, before.q)
    assert not np.allclose(after.qd, before.qd)
    action = jnp.zeros((1,))
    step = jax.jit(disturbed.step)
    obs, _, _, _, _, info = step(key, state, action, default)
    bare_obs, *_ = jax.jit(env.step)(key, state, action, default)
    assert bool(info["disturbed"]) and not np.allclose(obs, bare_obs)


@pytest.mark.parametrize(
    "name",
    [
        "brax-inverted_pendulum",
        "brax-hopper",
        pytest.param("brax-halfcheetah", marks=pytest.mark.slow),
        pytest.param("brax-ant", marks=pytest.mark.slow),
    ],
)
def test_the_listing_without_a_build_is_what_the_built_env_says(name):
    """`jfedrl envs` lists Brax envs from the registry's metadata (no MuJoCo compile)."""
    assert envs.spec(name).listing is not None
    assert envs.describe(name) == envs.describe(name, build=True)
