"""Brax continuous control behind the gymnax-style interface.

Adapters for Brax's `inverted_pendulum`, `hopper`, `halfcheetah` and `ant`
(Freeman et al. 2021, "Brax - A Differentiable Physics Engine for Large Scale
Rigid Body Simulation"), registered as `brax-<name>`. Their params scale the
physical system per client: `mass_scale` (every body's mass and inertia, i.e.
its density), `friction_scale` (every geom's friction coefficients) and
`gravity_scale`. The scaled `System` is rebuilt from the params inside
`reset`/`step`, so the params are ordinary arrays: they vmap over clients and
drift without recompiling. Ranges follow Packer et al. 2018's HalfCheetah /
Hopper density and friction ranges (friction relative to its 0.8 default).

Brax itself has no time limit and no auto-reset; the adapter adds both. As in
Brax's own `AutoResetWrapper`, an environment that ends an episode restarts
from the initial state drawn at its last explicit `reset` (so the step key is
unused): compiling Brax's `reset` into every `step` would double the step's
compile time on CPU (hopper: ~17 s for reset, ~25 s for step). Each of a
client's parallel environments still starts from its own random state.

Backends: `spring` (default), `positional`, `generalized`, `mjx`. Measured on
this project's 2-core CPU (hopper, 16 envs): spring ~23k steps/s, positional
~14k, generalized ~4.5k, mjx ~2.7k, with similar compile times, so tests and
CPU runs use `spring`. On a GPU choose `mjx` (the maintained MuJoCo XLA
pipeline, closest to MuJoCo / Gym physics) or `generalized`; keep `spring` or
`positional` only when raw throughput matters more than physical fidelity.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

import envs
from envs.variants import Tunable

BACKENDS = ("spring", "positional", "generalized", "mjx")
DEFAULT_BACKEND = "spring"


@struct.dataclass
class BraxParams:
    """Per-client physics scales of a Brax system (1.0 = Brax's own model)."""

    mass_scale: float = 1.0
    friction_scale: float = 1.0
    gravity_scale: float = 1.0
    max_steps_in_episode: int = 1000


@struct.dataclass
class BraxEnvState:
    brax_state: Any
    """Brax's own `State` (pipeline state, obs, reward, done, metrics, info)."""
    first: Any
    """The state drawn at the last `reset`, where every later episode restarts."""
    time: jax.Array


def scale_system(sys: Any, params: BraxParams) -> Any:
    """`sys` with masses/inertias, friction and gravity scaled by `params`.

    Both the maximal-coordinate fields (`link.inertia`, `gravity`; spring,
    positional and generalized) and the MuJoCo fields (`body_mass`,
    `body_inertia`, `opt.gravity`, `geom_friction`; mjx and contacts) are
    scaled, so every backend sees the same change.
    """
    mass = params.mass_scale
    return sys.tree_replace(
        {
            "link.inertia.mass": sys.link.inertia.mass * mass,
            "link.inertia.i": sys.link.inertia.i * mass,
            "body_mass": sys.body_mass * mass,
            "body_inertia": sys.body_inertia * mass,
            "geom_friction": sys.geom_friction * params.friction_scale,
            "gravity": sys.gravity * params.gravity_scale,
            "opt.gravity": sys.opt.gravity * params.gravity_scale,
        }
    )


class BraxEnv:
    """A Brax environment with gymnax's `reset`/`step` signature and params."""

    def __init__(self, env_name: str, backend: str = DEFAULT_BACKEND):
        # mujoco.mjx prints "Failed to import warp" on import (warp is a GPU option).
        with contextlib.redirect_stdout(io.StringIO()):
            from brax import envs as brax_envs

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = brax_envs.get_environment(env_name, backend=backend)
        self._sys = self._env.sys
        self.env_name = env_name
        self.backend = backend
        ctrl = jnp.asarray(self._sys.actuator.ctrl_range, jnp.float32)
        self._action_low, self._action_high = ctrl[:, 0], ctrl[:, 1]
        self.action_size = int(self._env.action_size)
        obs = jax.eval_shape(self._env.reset, jax.random.PRNGKey(0)).obs
        self.obs_shape = tuple(obs.shape)

    @property
    def name(self) -> str:
        return f"brax-{self.env_name}"

    @property
    def default_params(self) -> BraxParams:
        return BraxParams()

    def observation_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, self.obs_shape, jnp.float32)

    def action_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(self._action_low, self._action_high, (self.action_size,), jnp.float32)

    def scaled(self, params: BraxParams) -> Any:
        """A shallow copy of the Brax env whose system is scaled by `params`."""
        env = copy.copy(self._env)
        env.sys = scale_system(self._sys, params)
        return env

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params: BraxParams | None = None):
        params = self.default_params if params is None else params
        brax_state = self.scaled(params).reset(key)
        return brax_state.obs, BraxEnvState(brax_state, brax_state, jnp.zeros((), jnp.int32))

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: BraxEnvState, action: Any, params=None):
        del key  # Brax physics is deterministic; episodes restart from `state.first`.
        params = self.default_params if params is None else params
        env = self.scaled(params)
        action = jnp.asarray(action, jnp.float32).reshape((self.action_size,))
        stepped = env.step(self._refresh(env, state.brax_state), action)
        time = state.time + 1
        terminated = stepped.done > 0.5
        truncated = time >= params.max_steps_in_episode
        done = jnp.logical_or(terminated, truncated)
        brax_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), state.first, stepped)
        new_state = BraxEnvState(
            brax_state, state.first, jnp.where(done, 0, time).astype(jnp.int32)
        )
        info = {
            "final_observation": stepped.obs,
            "terminated": terminated,
            "truncated": truncated,
        }
        return brax_state.obs, new_state, stepped.reward, terminated, truncated, info

    @staticmethod
    def _refresh(env: Any, brax_state: Any) -> Any:
        """The state with the masses that spring / positional cache at reset refreshed.

        Those pipelines read `state.mass` (set by `pipeline_init`) in every step,
        so without this a drifting `mass_scale` would only act after a reset.
        """
        pipeline = brax_state.pipeline_state
        if not hasattr(pipeline, "mass"):
            return brax_state
        sys = env.sys
        mass = sys.link.inertia.mass ** (1 - sys.spring_mass_scale)
        return brax_state.replace(pipeline_state=pipeline.replace(mass=mass))

    def impulse(self, key: jax.Array, state: BraxEnvState, scale: float, params: Any):
        """Adds `scale * N(0, 1)` to every generalized velocity (m/s, rad/s)."""
        env = self.scaled(params)
        pipeline = state.brax_state.pipeline_state
        qd = pipeline.qd + scale * jax.random.normal(key, pipeline.qd.shape)
        kicked = env.pipeline_init(pipeline.q, qd)
        return state.replace(brax_state=state.brax_state.replace(pipeline_state=kicked))


_TASKS = {
    "inverted_pendulum": "Brax: balance a pole on a cart (MuJoCo InvertedPendulum)",
    "hopper": "Brax: one-legged hopper, hop forward (MuJoCo Hopper)",
    "halfcheetah": "Brax: planar cheetah, run forward (MuJoCo HalfCheetah)",
    "ant": "Brax: four-legged ant, walk forward (MuJoCo Ant)",
}

_TUNABLES = (
    Tunable(
        "mass_scale",
        random=(0.75, 1.25),
        extreme=((0.5, 0.75), (1.25, 1.5)),
        bounds=(1e-3, 100.0),
        doc="scales every body's mass and inertia (Packer et al.'s density)",
    ),
    Tunable(
        "friction_scale",
        random=(0.625, 1.375),
        extreme=((0.25, 0.625), (1.375, 3.125)),
        bounds=(0.0, 100.0),
        doc="scales every geom's friction (Packer et al.'s friction / 0.8)",
    ),
    Tunable(
        "gravity_scale",
        random=(0.75, 1.25),
        extreme=((0.5, 0.75), (1.25, 1.5)),
        bounds=(0.0, 100.0),
        doc="scales gravity",
    ),
)

_BUILT: dict[tuple[str, str], BraxEnv] = {}


def _get(env_name: str, backend: str) -> BraxEnv:
    """One adapter per (task, backend): building a Brax system takes a second."""
    if (env_name, backend) not in _BUILT:
        _BUILT[(env_name, backend)] = BraxEnv(env_name, backend)
    return _BUILT[(env_name, backend)]


def _factory(env_name: str):
    def factory(backend: str = DEFAULT_BACKEND):
        env = _get(env_name, backend)
        return env, env.default_params

    return factory


#: Observation size and action range of each task's Brax model (brax 0.14), so that
#: `jfedrl envs` lists them without compiling MuJoCo models (tests/test_envs_brax.py
#: checks them against a build).
_SPACES = {
    "inverted_pendulum": (4, "Box(1,) [-3, 3]"),
    "hopper": (11, "Box(3,) [-1, 1]"),
    "halfcheetah": (17, "Box(6,) [-1, 1]"),
    "ant": (27, "Box(8,) [-1, 1]"),
}


def _listing(env_name: str) -> dict[str, Any]:
    """`envs.describe`'s build-dependent fields of `brax-<env_name>`, without building it."""
    size, action_space = _SPACES[env_name]
    defaults = BraxParams()
    return {
        "observation_shape": (size,),
        "observation_dtype": "float32",
        "action_space": action_space,
        "params": {t.name: float(getattr(defaults, t.name)) for t in _TUNABLES},
    }


def _impulse(env: BraxEnv, key, state, scale, params):
    return env.impulse(key, state, scale, params)


for _task, _doc in _TASKS.items():
    envs.register(
        f"brax-{_task}",
        _factory(_task),
        _doc,
        tunables=_TUNABLES,
        # The inverted pendulum has no contacts, so friction changes nothing there.
        drift_params=("mass_scale", "gravity_scale")
        if _task == "inverted_pendulum"
        else ("mass_scale", "friction_scale", "gravity_scale"),
        impulse=_impulse,
        impulse_doc="adds scale * N(0, 1) to every generalized velocity [m/s, rad/s]",
        backends=BACKENDS,
        listing=partial(_listing, _task),
    )
