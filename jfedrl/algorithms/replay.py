"""A circular experience-replay buffer of static size, as plain arrays.

Experience replay (Lin 1992; Mnih et al. 2015) for the off-policy learners
(DQN, TD3/DDPG). The buffer lives inside ONE client's state: a pytree of
`[capacity, ...]` arrays plus an insert position and a fill count, so the
simulator can vmap, scatter, checkpoint and ship it like any other state and
no Python object crosses a jit boundary. Seed 003 (MARL) lists a replay memory
among its goals; Oneagent's DQN and DDPG learners sample one.

Writes wrap around: once `capacity` transitions are stored, the oldest are
overwritten. Sampling is uniform over the stored transitions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class ReplayBuffer(struct.PyTreeNode):
    """Stored transitions and where the next one goes."""

    data: Any
    """A pytree whose leaves have a leading `capacity` axis."""
    position: jax.Array
    """Index of the next write, in `[0, capacity)` (int32)."""
    size: jax.Array
    """Number of valid transitions, in `[0, capacity]` (int32)."""

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def init(example: Any, capacity: int) -> ReplayBuffer:
    """An empty buffer for transitions shaped like `example` (one transition).

    Args:
        example: a pytree of arrays describing ONE transition (values unused).
        capacity: how many transitions the buffer holds (a static shape).

    Returns:
        A buffer of zeros with `position = size = 0`.
    """
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")
    data = jax.tree.map(
        lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    zero = jnp.zeros((), jnp.int32)
    return ReplayBuffer(data=data, position=zero, size=zero)


def add_batch(buffer: ReplayBuffer, batch: Any) -> ReplayBuffer:
    """Writes the `n` transitions of `batch` (leading axis n <= capacity), in order.

    Args:
        buffer: the buffer to write into.
        batch: a pytree like the buffer's `data` with leading axis `n` instead of
            `capacity`; `n` must not exceed the capacity (indices would collide).

    Returns:
        The buffer with `batch` written at `position, position + 1, ...` (mod capacity).
    """
    capacity = buffer.capacity
    n = jax.tree.leaves(batch)[0].shape[0]
    if n > capacity:
        raise ValueError(f"cannot add {n} transitions to a replay buffer of capacity {capacity}")
    index = (buffer.position + jnp.arange(n, dtype=jnp.int32)) % capacity
    data = jax.tree.map(lambda d, x: d.at[index].set(x.astype(d.dtype)), buffer.data, batch)
    return ReplayBuffer(
        data=data,
        position=(buffer.position + n) % capacity,
        size=jnp.minimum(buffer.size + n, capacity),
    )


def sample(key: jax.Array, buffer: ReplayBuffer, batch_size: int) -> Any:
    """`batch_size` transitions drawn uniformly, with replacement, from the stored ones.

    On an empty buffer it returns (zero) slot-0 entries; callers mask the update
    until enough transitions are stored (the learners' `learning_starts`).
    """
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[index], buffer.data)
