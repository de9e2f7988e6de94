"""Small pure helpers shared by the local learners, and their config checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import envs
from jfedrl.algorithms.networks import ACTIVATIONS
from jfedrl.schema.checks import require, require_choice, require_positive, require_range


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


def switched_on(coefficient: Any) -> bool:
    """Whether a coefficient that switches a loss term on (when > 0) is on.

    A traced coefficient is on: a sweep traces such a field only across setups that
    all have it on (`jfedrl.config.switches()`), so the term's code is traced once.
    """
    return isinstance(coefficient, jax.Array) or coefficient > 0


def restarted_linear(
    start: float,
    end: float,
    steps: float,
    restarts: tuple[tuple[int, int], ...],
    steps_per_round: float,
) -> Any:
    """`start` to `end` linearly over `steps`, then held; again over each restart.

    The schedule of `federation.schedule_restarts` (`--extend restart`): each
    `(first, last)` round pair, in units of `steps_per_round`, runs the line from
    `start` to `end` once more, then holds `end`. The result is a function of a step
    count (an optax schedule), or None without restarts (the caller keeps its own
    one-segment schedule, so runs without restarts compute what they always did).
    """
    if not restarts:
        return None
    firsts = jnp.asarray([first * steps_per_round for first, _ in restarts], jnp.float32)
    lengths = jnp.asarray(
        [max((last - first) * steps_per_round, 1.0) for first, last in restarts], jnp.float32
    )

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        index = jnp.sum(count >= firsts) - 1  # -1: before the first restart
        at = jnp.maximum(index, 0)
        elapsed = jnp.where(index < 0, count, count - firsts[at])
        length = jnp.where(index < 0, max(steps, 1.0), lengths[at])
        return start + jnp.clip(elapsed / length, 0.0, 1.0) * (end - start)

    return schedule


def prox_term(params: Any, global_params: Any, mu: float) -> jax.Array:
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020); 0 if mu = 0."""
    if not switched_on(mu):
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


def polyak(online: Any, target: Any, tau: float) -> Any:
    """Target update `tau * online + (1 - tau) * target` (tau = 1 copies)."""
    return jax.tree.map(lambda o, t: tau * o + (1.0 - tau) * t, online, target)


def require_counts(path: str, section: Any, names: tuple[str, ...]) -> None:
    """Each named integer field of `section` is >= 1."""
    for name in names:
        require(getattr(section, name) >= 1, f"{path}.{name}", ">= 1", getattr(section, name))


def require_fields_positive(
    path: str, section: Any, names: tuple[str, ...], strict: bool = True
) -> None:
    """Each named field of `section` is > 0 (>= 0 when not `strict`)."""
    for name in names:
        require_positive(f"{path}.{name}", getattr(section, name), strict)


def require_discount(path: str, section: Any) -> None:
    """`section.gamma` in (0, 1]."""
    require_range(f"{path}.gamma", section.gamma, 0.0, 1.0, low_open=True)


def require_network(path: str, section: Any) -> None:
    """`hidden_sizes`: at least one layer, every width >= 1; `activation` a known name."""
    sizes = section.hidden_sizes
    require(bool(sizes) and min(sizes) >= 1, f"{path}.hidden_sizes", "positive layer widths", sizes)
    require_choice(f"{path}.activation", section.activation, tuple(ACTIVATIONS))


def require_buffer(path: str, section: Any) -> None:
    """The replay buffer holds one local update's transitions; the warm-up is >= 0."""
    steps = section.num_envs * section.num_steps
    rule = f">= num_envs * num_steps = {steps} (one local update's transitions)"
    require(section.buffer_size >= steps, f"{path}.buffer_size", rule, section.buffer_size)
    require_positive(f"{path}.learning_starts", section.learning_starts, strict=False)


def make_env(config: Any) -> tuple[Any, Any]:
    """`(env, default_params)` of `config.env`, for checks of its spaces (builds no client)."""
    options = {"backend": config.env.backend} if config.env.backend else {}
    return envs.make(config.env.name, **options)
