"""Local learning algorithms, behind one registry: `register`, `get`, `names`, `make`.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`); `make` imports an algorithm's
maths when it is built. A new algorithm is one module that defines its section
and calls `register(AlgorithmSpec(...))` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.registry import Registry
from jfedrl.algorithms import a2c_config, dqn_config, ppo_config, sac_config, td3_config
from jfedrl.algorithms.spec import AlgorithmSpec
from jfedrl.schema.convert import replace_path

ALGORITHMS = Registry("algorithm", "algo.name", "jfedrl.algorithms", entry_type=AlgorithmSpec)
"""Every algorithm: the built-ins, `register` calls (plugins) and the `jfedrl.algorithms`
entry points of installed packages."""

_FROZEN: list[str] = []
"""Set once `jfedrl.config` has assembled the config tree from the sections."""


def freeze(reason: str) -> None:
    """Refuses later sections: the config tree holds the ones registered so far."""
    _FROZEN.append(reason)


def register(spec: AlgorithmSpec, hints: Mapping[str, str] | None = None) -> AlgorithmSpec:
    """Adds an algorithm; names are unique. Returns `spec`.

    Args:
        spec: what to register.
        hints: names users may type for it, or for a feature of it, that are not
            algorithms -> where they live (`ddpg` -> "a TD3 switch: ...").
    """
    if _FROZEN and spec.section is not None:
        raise ValueError(
            f"algorithm {spec.name!r} registers a config section after {_FROZEN[0]}: "
            "import plugin modules first (`--plugin`, or `jfedrl.plugins.load_modules`)"
        )
    return ALGORITHMS.register(spec.name, spec, hints=hints)


def names() -> tuple[str, ...]:
    """Every registered algorithm, sorted."""
    return ALGORITHMS.names()


def specs() -> tuple[AlgorithmSpec, ...]:
    """Every registered algorithm's spec, in registration order."""
    return ALGORITHMS.in_order()


def get(name: str) -> AlgorithmSpec:
    """The spec of `name`; `envs.registry.UnknownName` (a `ValueError`) if none."""
    return ALGORITHMS.get(name)


def with_fedprox(config: Any) -> Any:
    """Under `strategy.name: fedprox`, `config` with `strategy.fedprox.mu` as the
    algorithm's own `prox_mu` (FedProx is FedAvg plus the client's proximal term).

    The value is set as it is, not coerced: a sweep may trace the coefficient
    (`jfedrl.experiments.traced`).
    """
    if config.strategy.name != "fedprox":
        return config
    path = f"algo.{config.algo.name}.prox_mu"
    return replace_path(config, path, config.strategy.fedprox.mu, coerce=False)


def make(config: Any, env: Any, env_params: Any) -> Any:
    """Builds the algorithm named by `config.algo.name` for `env` (`with_fedprox` applied)."""
    return get(config.algo.name).builder()(with_fedprox(config), env, env_params)


for _module in (ppo_config, a2c_config, dqn_config, td3_config, sac_config):
    register(_module.SPEC, getattr(_module, "HINTS", None))

__all__ = ["AlgorithmSpec", "get", "make", "names", "register", "specs", "with_fedprox"]
