"""Random disturbance events: a jittable wrapper around any registered env.

The jittable analogue of RLlab FRL's "obstacles appearing at a chosen
frequency": at every step, independently with probability `prob`,

- `impulse`: the state receives a random kick before the dynamics step
  (a velocity impulse for physical systems, a push to a neighbouring cell in
  the gridworld; the env's registry entry says what and in which units), std
  `scale`;
- `obs_noise`: the returned observation (and `info["final_observation"]`)
  gets additive Gaussian noise of std `scale`; the true state is untouched.

The disturbance draws come from `fold_in(key, ...)` of the step key, and the
wrapped env receives the step key unchanged, so with `prob = 0` the wrapped
env reproduces the bare env exactly. `info["disturbed"]` flags the events.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from envs.registry import did_you_mean
from envs.variants import ParamError

DISTURBANCES = ("none", "impulse", "obs_noise")
_EVENT, _NOISE = 0x5EED, 0x0B5


class Disturbed:
    """`env` with random `impulse` or `obs_noise` events (see the module doc)."""

    def __init__(self, env: Any, kind: str, prob: float, scale: float, impulse: Any = None):
        if kind not in ("impulse", "obs_noise"):
            raise ValueError(f"unknown disturbance {kind!r}; allowed: impulse, obs_noise")
        if kind == "impulse" and impulse is None:
            raise ValueError(f"{env!r} has no impulse disturbance")
        self.env = env
        self.kind = kind
        self.prob = float(prob)
        self.scale = float(scale)
        self._impulse = impulse

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def default_params(self) -> Any:
        return self.env.default_params

    def observation_space(self, params: Any) -> Any:
        return self.env.observation_space(params)

    def action_space(self, params: Any = None) -> Any:
        return self.env.action_space(params)

    def reset(self, key: jax.Array, params: Any = None) -> tuple[Any, Any]:
        return self.env.reset(key, params)

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: Any, action: Any, params: Any = None):
        key_event = jax.random.fold_in(key, _EVENT)
        key_event, key_size = jax.random.split(key_event)
        event = jax.random.bernoulli(key_event, self.prob)
        if self.kind == "impulse":
            kicked = self._impulse(self.env, key_size, state, self.scale, params)
            state = jax.tree.map(lambda k, s: jnp.where(event, k, s), kicked, state)
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        if self.kind == "obs_noise":
            noise = self.scale * jax.random.normal(key_size, jnp.shape(obs))
            noise = jnp.where(event, noise, 0.0).astype(obs.dtype)
            obs = obs + noise
            info = {**info, "final_observation": info["final_observation"] + noise}
        info = {**info, "disturbed": event}
        return obs, state, reward, terminated, truncated, info


def check_disturbance(name: str, kind: str, prob: float, scale: float) -> None:
    """Checks disturbance `kind` for environment `name` without building anything.

    Raises:
        ParamError: for an unknown kind, `impulse` on an env without velocities,
            or a probability outside (0, 1] / a scale <= 0.
    """
    import envs

    if kind not in DISTURBANCES:
        raise ParamError(
            "disturbance",
            f"{kind!r} is not allowed; allowed: {', '.join(DISTURBANCES)}."
            + did_you_mean(kind, DISTURBANCES),
        )
    if kind == "none":
        return
    if kind == "impulse" and envs.spec(name).impulse is None:
        raise ParamError(
            "disturbance", f"'impulse' is not available for {name}; allowed: none, obs_noise"
        )
    if not 0.0 < prob <= 1.0:
        raise ParamError("disturbance_prob", f"must be in (0, 1] with a disturbance, got {prob}")
    if scale <= 0.0:
        raise ParamError("disturbance_scale", f"must be > 0 with a disturbance, got {scale}")


def disturb(name: str, env: Any, kind: str = "none", prob: float = 0.0, scale: float = 0.0):
    """Wraps `env` (registered as `name`) with disturbance `kind`; `none` returns it as is.

    Raises:
        ParamError: as `check_disturbance`.
    """
    import envs

    check_disturbance(name, kind, prob, scale)
    if kind == "none":
        return env
    return Disturbed(env, kind, prob, scale, envs.spec(name).impulse)
