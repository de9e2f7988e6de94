"""Jittable environments for federated RL, behind one registry.

`make(name)` returns a gymnax-style environment and its default `EnvParams`.
Every physical constant lives in `EnvParams`, so client heterogeneity is a
batched `EnvParams` (leading axis = client) and drift is a pure function of the
round. This package knows nothing of federation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

EnvFactory = Callable[[], tuple[Any, Any]]


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment: how to build it and what it is."""

    name: str
    factory: EnvFactory
    description: str = ""


_REGISTRY: dict[str, EnvSpec] = {}


def register(name: str, factory: EnvFactory, description: str = "") -> None:
    """Registers `factory() -> (env, default_params)` under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = EnvSpec(name, factory, description)


def names() -> tuple[str, ...]:
    """All registered environment names, sorted."""
    return tuple(sorted(_REGISTRY))


def spec(name: str) -> EnvSpec:
    """The registry entry for `name`; a clear `ValueError` if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"env.name: unknown environment {name!r}; allowed: {', '.join(names())}"
        ) from None


def make(name: str) -> tuple[Any, Any]:
    """Builds environment `name`; returns `(env, default_params)`."""
    return spec(name).factory()


def batch_params(params: Any, num_clients: int) -> Any:
    """Stacks `num_clients` copies of `params` on a new leading client axis."""
    return jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * num_clients), params)


from envs import classic as _classic  # noqa: E402,F401  (registers the built-in tasks)
