"""Local learning algorithms, behind one registry: `register`, `get`, `names`, `make`.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`); `make` imports an algorithm's
maths when it is built. A new algorithm is one module that defines its section
and calls `register(AlgorithmSpec(...))` (docs/writing-an-algorithm.md).
"""

from __future__ import annotations

from typing import Any

from jfedrl.algorithms import a2c_config, dqn_config, ppo_config, sac_config, td3_config
from jfedrl.algorithms.spec import AlgorithmSpec
from jfedrl.schema.checks import not_allowed
from jfedrl.schema.convert import replace_path

_REGISTRY: dict[str, AlgorithmSpec] = {}
_FROZEN: list[str] = []
"""Set once `jfedrl.config` has assembled the config tree from the sections."""


def freeze(reason: str) -> None:
    """Refuses later registrations: the config tree holds the sections registered so far."""
    _FROZEN.append(reason)


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Adds an algorithm; names are unique. Returns `spec`."""
    if spec.name in _REGISTRY:
        raise ValueError(f"algorithm {spec.name!r} is already registered")
    if _FROZEN and spec.section is not None:
        raise ValueError(
            f"algorithm {spec.name!r} registers a config section after {_FROZEN[0]}: "
            "import plugin modules first (`--plugin`, or `jfedrl.plugins.load_modules`)"
        )
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """Every registered algorithm, sorted."""
    return tuple(sorted(_REGISTRY))


def specs() -> tuple[AlgorithmSpec, ...]:
    """Every registered algorithm's spec, in registration order."""
    return tuple(_REGISTRY.values())


def get(name: str) -> AlgorithmSpec:
    """The spec of `name`; a `ValueError` listing the registered names if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(not_allowed("algo.name", name, names())) from None


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
    register(_module.SPEC)

__all__ = ["AlgorithmSpec", "get", "make", "names", "register", "specs", "with_fedprox"]
