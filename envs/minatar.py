"""gymnax's MinAtar games, with per-client game parameters and sticky actions.

MinAtar (Young & Tian 2019, "MinAtar: An Atari-Inspired Testbed for Thorough
and Reproducible Reinforcement Learning Experiments") plays with sticky actions
(Machado et al. 2018): with probability `sticky_action_prob` the previous
action repeats. gymnax leaves them out; we add them as a per-client param
(default 0, so default params reproduce gymnax exactly) and expose the
integer game timers (spawn / move / shot intervals) as tunable params.
Observations are `(10, 10, channels)` float32 grids (PPO flattens them).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments.minatar import asterix, breakout, freeway, seaquest, space_invaders

import envs
from envs.variants import Tunable

_STICKY = Tunable(
    "sticky_action_prob",
    random=(0.0, 0.1),
    extreme=((0.1, 0.3),),
    bounds=(0.0, 1.0),
    drift_ref=0.2,
    doc="probability that the previous action repeats (Machado et al. 2018)",
)


@struct.dataclass
class AsterixParams(asterix.EnvParams):
    sticky_action_prob: float = 0.0


@struct.dataclass
class BreakoutParams(breakout.EnvParams):
    sticky_action_prob: float = 0.0


@struct.dataclass
class FreewayParams(freeway.EnvParams):
    sticky_action_prob: float = 0.0


@struct.dataclass
class SeaquestParams(seaquest.EnvParams):
    sticky_action_prob: float = 0.0


@struct.dataclass
class SpaceInvadersParams(space_invaders.EnvParams):
    sticky_action_prob: float = 0.0


@struct.dataclass
class StickyState:
    game: Any
    last_action: jax.Array
    time: jax.Array


class StickyMinAtar:
    """A gymnax MinAtar game whose params carry `sticky_action_prob`.

    The game receives the step key unchanged; the sticky draw uses
    `fold_in(key, ...)`, so with probability 0 the trajectory is gymnax's.
    """

    def __init__(self, game: Any, params_cls: type):
        self.game = game
        self._params_cls = params_cls

    @property
    def name(self) -> str:
        return self.game.name

    @property
    def default_params(self) -> Any:
        return self._params_cls()

    @property
    def num_actions(self) -> int:
        return self.game.num_actions

    def observation_space(self, params: Any) -> Any:
        return self.game.observation_space(params)

    def action_space(self, params: Any = None) -> Any:
        return self.game.action_space(params)

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params: Any = None) -> tuple[jax.Array, StickyState]:
        params = self.default_params if params is None else params
        obs, game_state = self.game.reset(key, params)
        return obs, StickyState(game_state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: StickyState, action: Any, params: Any = None):
        params = self.default_params if params is None else params
        sticky = jax.random.bernoulli(jax.random.fold_in(key, 0x571C), params.sticky_action_prob)
        action = jnp.where(sticky, state.last_action, jnp.asarray(action, jnp.int32))
        obs, game_state, reward, terminated, truncated, info = self.game.step(
            key, state.game, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        new_state = StickyState(
            game_state,
            jnp.where(done, 0, action).astype(jnp.int32),
            jnp.asarray(game_state.time, jnp.int32),
        )
        return obs, new_state, reward, terminated, truncated, info


def _factory(game_cls: type, params_cls: type):
    def factory():
        env = StickyMinAtar(game_cls(), params_cls)
        return env, env.default_params

    return factory


def _timer(name: str, random, extreme, doc: str) -> Tunable:
    return Tunable(name, random=random, extreme=extreme, integer=True, bounds=(1, 1000), doc=doc)


_GAMES = {
    "Asterix-MinAtar": (
        asterix.MinAsterix,
        AsterixParams,
        "gymnax MinAtar Asterix: collect gold, avoid enemies",
        (
            _timer("init_spawn_speed", (7, 13), ((3, 6), (14, 20)), "steps between spawns"),
            _timer("init_move_interval", (4, 6), ((2, 3), (7, 9)), "steps between moves"),
            _timer("ramp_interval", (75, 125), ((40, 74), (126, 200)), "steps per speed-up"),
        ),
        ("init_spawn_speed", "init_move_interval"),
    ),
    "Breakout-MinAtar": (
        breakout.MinBreakout,
        BreakoutParams,
        "gymnax MinAtar Breakout: bounce the ball to break bricks",
        (),
        ("sticky_action_prob",),
    ),
    "Freeway-MinAtar": (
        freeway.MinFreeway,
        FreewayParams,
        "gymnax MinAtar Freeway: cross the road through traffic",
        (_timer("player_speed", (2, 4), ((1, 1), (5, 6)), "steps between player moves"),),
        ("player_speed",),
    ),
    "Seaquest-MinAtar": (
        seaquest.MinSeaquest,
        SeaquestParams,
        "gymnax MinAtar Seaquest: rescue divers, shoot enemies, surface for air",
        (
            _timer("init_spawn_speed", (15, 25), ((8, 14), (26, 35)), "steps between spawns"),
            _timer("enemy_shot_interval", (8, 12), ((4, 7), (13, 16)), "steps between shots"),
            _timer("max_oxygen", (150, 250), ((80, 149), (251, 320)), "oxygen capacity"),
        ),
        ("init_spawn_speed", "enemy_shot_interval"),
    ),
    "SpaceInvaders-MinAtar": (
        space_invaders.MinSpaceInvaders,
        SpaceInvadersParams,
        "gymnax MinAtar Space Invaders: shoot the descending aliens",
        (
            _timer("enemy_move_interval", (9, 15), ((5, 8), (16, 20)), "steps between moves"),
            _timer("enemy_shot_interval", (8, 12), ((4, 7), (13, 16)), "steps between shots"),
        ),
        ("enemy_move_interval", "enemy_shot_interval"),
    ),
}

for _name, (_game, _params, _doc, _timers, _drift) in _GAMES.items():
    envs.register(
        _name,
        _factory(_game, _params),
        _doc,
        tunables=(*_timers, _STICKY),
        drift_params=_drift,
    )
