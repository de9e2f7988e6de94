"""A small jittable MiniGrid-style gridworld with per-client layouts and goals.

Seed 002 trains on MiniGrid (Chevalier-Boisvert et al. 2023, "Minigrid &
Miniworld"). This is the `MiniGrid-Empty-NxN` task with MiniGrid's agent and
reward, written so the layout is *data*: the goal cell, the obstacle layout
and the slipperiness live in the params, so clients with different rooms are
one vmapped batch and obstacles can appear and vanish with the drift schedules.

- An `N x N` room; the agent starts in the top-left cell facing east.
- Actions (MiniGrid's first three): 0 turn left, 1 turn right, 2 move forward.
- Reaching the goal ends the episode with reward `1 - 0.9 * steps / max_steps`
  (MiniGrid's); otherwise 0. Time limit `4 N^2` steps (MiniGrid's Empty).
- With probability `slip_prob` the chosen action is replaced by a random one.
- Obstacles: cell `(r, c)` is a wall iff `u(layout_seed)[r, c] < wall_density`
  for one fixed uniform field per seed (so raising the density only adds
  walls), except an L-shaped corridor from the start to the goal that is kept
  free (so the goal is always reachable). The `walls` field is derived from
  `layout_seed`, `wall_density` and `goal_cell` by `derive`.
- Observation: the fully observed room as a `(N, N, 6)` float32 grid with
  channels wall, goal and the agent facing east / south / west / north
  (MiniGrid's `FullyObsWrapper`, one-hot).

Why not `navix`: navix 0.7.4 runs under jax 0.9.2 here, but its layouts are
sampled inside `reset` from the key and its environment fields are static, so
per-client goals and layouts cannot be passed as vmapped params without
reimplementing its reset.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

import envs
from envs.variants import Tunable

# MiniGrid's direction order: east, south, west, north as (row, col) steps.
_DIRECTIONS = jnp.array([[0, 1], [1, 0], [0, -1], [-1, 0]], jnp.int32)


@struct.dataclass
class GridParams:
    walls: jax.Array
    """`bool[N, N]` obstacle map (derived: recomputed by `GridWorld.derive`)."""
    goal_cell: int
    """Row-major index of the goal cell (the start, cell 0, is not allowed)."""
    layout_seed: int = 0
    wall_density: float = 0.0
    slip_prob: float = 0.0
    max_steps_in_episode: int = 100


@struct.dataclass
class GridState:
    row: jax.Array
    col: jax.Array
    direction: jax.Array
    time: jax.Array


class GridWorld:
    """An `size x size` MiniGrid-Empty-style room; see the module docstring."""

    def __init__(self, size: int):
        self.size = size

    @property
    def name(self) -> str:
        return f"GridWorld-{self.size}x{self.size}"

    @property
    def num_actions(self) -> int:
        return 3

    @property
    def default_params(self) -> GridParams:
        n = self.size
        params = GridParams(
            walls=jnp.zeros((n, n), bool),
            goal_cell=n * n - 1,
            max_steps_in_episode=4 * n * n,
        )
        return self.derive(params)

    def derive(self, params: GridParams) -> GridParams:
        """Recomputes `walls` from `layout_seed`, `wall_density` and `goal_cell`."""
        n = self.size
        goal = jnp.asarray(params.goal_cell, jnp.int32)
        goal_row, goal_col = goal // n, goal % n
        seed = jnp.asarray(params.layout_seed, jnp.int32)
        field = jax.random.uniform(jax.random.PRNGKey(seed), (n, n))
        walls = field < params.wall_density
        rows, cols = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
        # The corridor goes along row 0 then down the goal column, or along
        # column 0 then across the goal row; the seed's parity picks which.
        across_first = ((rows == 0) & (cols <= goal_col)) | (
            (cols == goal_col) & (rows <= goal_row)
        )
        down_first = ((cols == 0) & (rows <= goal_row)) | ((rows == goal_row) & (cols <= goal_col))
        corridor = jnp.where(seed % 2 == 0, across_first, down_first)
        return params.replace(walls=walls & ~corridor)

    def observation_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.size, self.size, 6), jnp.float32)

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(3)

    def _obs(self, state: GridState, params: GridParams) -> jax.Array:
        n = self.size
        cell = jnp.arange(n * n).reshape(n, n)
        goal = cell == params.goal_cell
        agent = (cell == state.row * n + state.col)[..., None] & (jnp.arange(4) == state.direction)
        grid = jnp.concatenate([params.walls[..., None], goal[..., None], agent], axis=-1)
        return grid.astype(jnp.float32)

    def _start(self) -> GridState:
        zero = jnp.zeros((), jnp.int32)
        return GridState(zero, zero, zero, zero)

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params: GridParams | None = None):
        del key
        params = self.default_params if params is None else params
        state = self._start()
        return self._obs(state, params), state

    def _move(self, state: GridState, params: GridParams, direction: jax.Array) -> GridState:
        """One cell towards `direction` unless a wall or the border is in the way."""
        n = self.size
        row = state.row + _DIRECTIONS[direction, 0]
        col = state.col + _DIRECTIONS[direction, 1]
        inside = (row >= 0) & (row < n) & (col >= 0) & (col < n)
        free = inside & ~params.walls[jnp.clip(row, 0, n - 1), jnp.clip(col, 0, n - 1)]
        return state.replace(
            row=jnp.where(free, row, state.row), col=jnp.where(free, col, state.col)
        )

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: GridState, action: Any, params=None):
        params = self.default_params if params is None else params
        key_slip, key_action = jax.random.split(key)
        action = jnp.asarray(action, jnp.int32)
        slip = jax.random.bernoulli(key_slip, params.slip_prob)
        action = jnp.where(slip, jax.random.randint(key_action, (), 0, 3), action)
        direction = jnp.where(
            action == 0,
            (state.direction + 3) % 4,
            jnp.where(action == 1, (state.direction + 1) % 4, state.direction),
        )
        turned = state.replace(direction=direction)
        moved = jax.tree.map(
            lambda m, t: jnp.where(action == 2, m, t), self._move(turned, params, direction), turned
        )
        time = state.time + 1
        stepped = moved.replace(time=time)
        terminated = stepped.row * self.size + stepped.col == params.goal_cell
        truncated = time >= params.max_steps_in_episode
        reward = jnp.where(terminated, 1.0 - 0.9 * time / params.max_steps_in_episode, 0.0).astype(
            jnp.float32
        )
        final_obs = self._obs(stepped, params)
        done = terminated | truncated
        new_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), self._start(), stepped)
        obs = jnp.where(done, self._obs(new_state, params), final_obs)
        info = {"final_observation": final_obs, "terminated": terminated, "truncated": truncated}
        return obs, new_state, reward, terminated, truncated, info

    def impulse(self, key: jax.Array, state: GridState, scale: float, params: GridParams):
        """Pushes the agent `max(1, round(scale))` cells in one random direction."""
        direction = jax.random.randint(key, (), 0, 4)
        for _ in range(max(1, round(scale))):
            state = self._move(state, params, direction)
        return state


def _factory(size: int):
    def factory():
        env = GridWorld(size)
        return env, env.default_params

    return factory


def _impulse(env, key, state, scale, params):
    return env.impulse(key, state, scale, params)


def _derive(size: int):
    return GridWorld(size).derive


for _size in (5, 8):
    _cells = _size * _size
    envs.register(
        f"GridWorld-{_size}x{_size}",
        _factory(_size),
        f"MiniGrid-Empty-style {_size}x{_size} room; per-client goal, obstacles, slip",
        tunables=(
            Tunable(
                "goal_cell",
                random=(1, _cells - 1),
                integer=True,
                bounds=(1, _cells - 1),
                driftable=False,
                doc="row-major index of the goal cell (default: bottom-right)",
            ),
            Tunable(
                "layout_seed",
                random=(0, 2**20),
                integer=True,
                bounds=(0, 2**31 - 1),
                driftable=False,
                doc="seed of the obstacle field and corridor shape",
            ),
            Tunable(
                "wall_density",
                random=(0.0, 0.15),
                extreme=((0.15, 0.35),),
                bounds=(0.0, 0.9),
                drift_ref=0.3,
                doc="fraction of cells that are obstacles (outside the corridor)",
            ),
            Tunable(
                "slip_prob",
                random=(0.0, 0.1),
                extreme=((0.1, 0.3),),
                bounds=(0.0, 1.0),
                drift_ref=0.2,
                doc="probability that the action is replaced by a random one",
            ),
        ),
        derive=_derive(_size),
        drift_params=("wall_density",),
        impulse=_impulse,
        impulse_doc="pushes the agent max(1, round(scale)) cells in a random direction",
    )
