"""Small pure helpers shared by the local learners (A2C, DQN, TD3)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jfedrl.config import ConfigError, not_allowed


def is_continuous(env, env_params) -> bool:
    """True for a Box action space (no `.n`), False for a Discrete one."""
    return not hasattr(env.action_space(env_params), "n")


def action_dim(env, env_params) -> int:
    """Number of discrete actions, or the size of a continuous action vector."""
    space = env.action_space(env_params)
    return int(space.n) if hasattr(space, "n") else int(jnp.prod(jnp.array(space.shape)))


def action_bounds(env, env_params) -> tuple[jax.Array, jax.Array]:
    """`(low, high)` of a Box action space, as float32 arrays of the action's shape."""
    space = env.action_space(env_params)
    shape = tuple(space.shape)
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), shape)
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), shape)
    return low, high


def prox_term(params: Any, global_params: Any, mu: float) -> jax.Array:
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020); 0 if mu = 0."""
    if mu <= 0:
        return jnp.zeros(())
    sq = jax.tree.map(lambda w, g: jnp.sum((w - g) ** 2), params, global_params)
    return 0.5 * mu * sum(jax.tree.leaves(sq))


def track_returns(
    episode_return: jax.Array, last_return: jax.Array, reward: jax.Array, done: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Adds `reward` to the running returns; a finished episode's return becomes `last`."""
    episode_return = episode_return + reward
    last_return = jnp.where(done, episode_return, last_return)
    return jnp.where(done, 0.0, episode_return), last_return


def tree_where(condition: jax.Array, new: Any, old: Any) -> Any:
    """`new` where the scalar `condition` holds, else `old` (leaf by leaf)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def polyak(online: Any, target: Any, tau: float) -> Any:
    """Target update `tau * online + (1 - tau) * target` (tau = 1 copies)."""
    return jax.tree.map(lambda o, t: tau * o + (1.0 - tau) * t, online, target)


def require(ok: bool, path: str, rule: str, value: Any) -> None:
    """Raises `ConfigError('<path>: must be <rule>, got <value>')` unless `ok`."""
    if not ok:
        raise ConfigError(f"{path}: must be {rule}, got {value!r}")


def require_choice(path: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raises `ConfigError` naming `path` and the allowed values unless `value` is one."""
    if value not in allowed:
        raise ConfigError(not_allowed(path, value, allowed))


def require_layers(path: str, sizes: tuple[int, ...]) -> None:
    """Hidden layer widths: at least one layer, every width >= 1."""
    require(bool(sizes) and min(sizes) >= 1, path, "positive layer widths", sizes)
