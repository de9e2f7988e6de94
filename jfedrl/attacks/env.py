"""Environment attacks: poisoned rollouts of the Byzantine clients.

`AttackedEnv` wraps the clients' environment. Given plain env params it is the
wrapped env, step for step (evaluation, `init`, every honest run); given
`AttackParams` (the env params of one client plus its Byzantine flag and the
attack's parameter, which `Simulator.begin_round` builds only under an `env`
attack) it poisons that client's transitions where the flag is set. The flag
travels with the round's env params, so an offload worker, which builds the
same wrapper from the config, trains the Byzantine clients on the same poisoned
data; the run's base env params (`env_params.json`, the checkpoint) stay the
env's own.

Attacks: `reward_flip` (r -> -r) and `reward_scale` (r -> s·r) poison the reward
signal; `obs_noise` adds N(0, σ²) to the observations the agent sees (reset and
step; the true state is untouched); `random_action` (FedPG-BR, Fan et al. 2021)
has the env execute a uniformly random action in place of the policy's with
probability p. The agent still records the action its policy chose, so its
update is fitted to transitions its actions did not cause; FedPG-BR's agents
instead compute their gradient at the random actions: both make a useless
update that looks like ordinary training.

One wrapper can hold several kinds (`kinds`): a sweep group that compiles
several attacks as one program (`jfedrl.attacks.round.AttackChoice`) wraps the
env once with every env kind of the group, and each client's `AttackParams.which`
says which of them it runs; a client whose flag is off steps exactly as the
plain env.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

_ATTACK = 0xA77A


class EnvAttack(NamedTuple):
    """An env attack as the wrapper runs it: what it poisons and its parameter."""

    kind: str
    """`reward`, `obs_noise` or `random_action`."""
    value: Any
    """The reward factor, the noise std or the probability (may be traced)."""


def reward_flip(section: Any = None) -> EnvAttack:
    return EnvAttack("reward", -1.0)


def reward_scale(section: Any) -> EnvAttack:
    return EnvAttack("reward", section.factor)


def random_action(section: Any) -> EnvAttack:
    return EnvAttack("random_action", section.prob)


def obs_noise(section: Any) -> EnvAttack:
    return EnvAttack("obs_noise", section.std)


class AttackParams(struct.PyTreeNode):
    """One client's env params with its attack flag (stacked `[C]` over clients)."""

    inner: Any
    """The env's own params."""
    byzantine: jax.Array
    """True where the client attacks this round."""
    value: jax.Array
    """The attack's parameter (`EnvAttack.value`), float32."""
    which: Any = None
    """With a wrapper of several kinds: the index of the client's kind in
    `AttackedEnv.kinds` (int32); None with one kind."""


def attack_params(
    env_params: Any, byzantine: jax.Array, value: Any, which: Any = None
) -> AttackParams:
    """Every client's `AttackParams` from their stacked env params and `[C]` flags."""
    value = jnp.broadcast_to(jnp.asarray(value, jnp.float32), byzantine.shape)
    if which is not None:
        which = jnp.broadcast_to(jnp.asarray(which, jnp.int32), byzantine.shape)
    return AttackParams(inner=env_params, byzantine=byzantine, value=value, which=which)


def _random_action(space: Any, key: jax.Array, action: jax.Array) -> jax.Array:
    """A uniform action of `space`, shaped and typed like `action`."""
    action = jnp.asarray(action)
    if hasattr(space, "n"):
        return jax.random.randint(key, jnp.shape(action), 0, space.n).astype(action.dtype)
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), jnp.shape(action))
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), jnp.shape(action))
    low = jnp.where(jnp.isfinite(low), low, -1.0)
    high = jnp.where(jnp.isfinite(high), high, 1.0)
    return jax.random.uniform(key, jnp.shape(action), jnp.float32, low, high).astype(action.dtype)


class AttackedEnv:
    """`env` whose Byzantine clients' rollouts are poisoned (module doc).

    Args:
        env: the clients' environment.
        kinds: the `EnvAttack.kind` it applies, or several (a sweep group's env
            attacks; each client's `AttackParams.which` picks one).
    """

    def __init__(self, env: Any, kinds: str | tuple[str, ...]):
        self.env = env
        self.kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    @staticmethod
    def _split(params: Any) -> tuple[Any, AttackParams | None]:
        return (params.inner, params) if isinstance(params, AttackParams) else (params, None)

    @property
    def default_params(self) -> Any:
        return self.env.default_params

    def observation_space(self, params: Any = None) -> Any:
        return self.env.observation_space(self._split(params)[0])

    def action_space(self, params: Any = None) -> Any:
        return self.env.action_space(self._split(params)[0])

    def _on(self, attack: AttackParams, kind: str) -> jax.Array:
        """Where the client runs `kind` this round: its flag (and, with several kinds,
        `which` pointing at `kind`).
        """
        if len(self.kinds) == 1:
            return attack.byzantine
        return attack.byzantine & (attack.which == self.kinds.index(kind))

    def _noise(self, key: jax.Array, obs: jax.Array, attack: AttackParams) -> jax.Array:
        noise = attack.value * jax.random.normal(key, jnp.shape(obs), jnp.float32)
        return jnp.where(self._on(attack, "obs_noise"), noise, 0.0).astype(obs.dtype)

    def _noisy(self, obs: jax.Array, noise: jax.Array, attack: AttackParams) -> jax.Array:
        if len(self.kinds) == 1:
            return obs + noise
        # Several kinds: a client running another kind keeps its obs bit for bit.
        return jnp.where(self._on(attack, "obs_noise"), obs + noise, obs)

    def reset(self, key: jax.Array, params: Any = None) -> tuple[Any, Any]:
        inner, attack = self._split(params)
        obs, state = self.env.reset(key, inner)
        if attack is not None and "obs_noise" in self.kinds:
            noise = self._noise(jax.random.fold_in(key, _ATTACK), obs, attack)
            obs = self._noisy(obs, noise, attack)
        return obs, state

    def step(self, key: jax.Array, state: Any, action: Any, params: Any = None):
        inner, attack = self._split(params)
        if attack is None:
            return self.env.step(key, state, action, inner)
        key_take, key_draw = jax.random.split(jax.random.fold_in(key, _ATTACK))
        if "random_action" in self.kinds:
            take = self._on(attack, "random_action") & jax.random.bernoulli(key_take, attack.value)
            random = _random_action(self.env.action_space(inner), key_draw, action)
            action = jnp.where(take, random, action)
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, inner)
        if "reward" in self.kinds:
            reward = jnp.where(self._on(attack, "reward"), attack.value * reward, reward).astype(
                jnp.result_type(reward)
            )
        if "obs_noise" in self.kinds:
            noise = self._noise(key_draw, obs, attack)
            obs = self._noisy(obs, noise, attack)
            if "final_observation" in info:
                final = info["final_observation"]
                info = {**info, "final_observation": self._noisy(final, noise, attack)}
        return obs, state, reward, terminated, truncated, info


def wrap_envs(client_envs: Any, kinds: str | tuple[str, ...]) -> Any:
    """`client_envs` (a `ClientEnvs`) whose env is wrapped in `AttackedEnv(env, kinds)`;
    an env already wrapped is re-wrapped from its own env.
    """
    env = client_envs.env
    if isinstance(env, AttackedEnv):
        env = env.env
    return dataclasses.replace(client_envs, env=AttackedEnv(env, kinds))
