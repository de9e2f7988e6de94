"""Local learning algorithms, behind one registry: `register`, `get`, `make`."""

from __future__ import annotations

from jfedrl.algorithms.base import Algorithm, AlgorithmSpec, Reference
from jfedrl.config import with_fedprox
from jfedrl.schema.checks import not_allowed

_REGISTRY: dict[str, AlgorithmSpec] = {}


def register(spec: AlgorithmSpec) -> None:
    """Adds an algorithm; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"algorithm {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> AlgorithmSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(not_allowed("algo.name", name, names())) from None


def make(config, env, env_params) -> Algorithm:
    """Builds the algorithm named by `config.algo.name` for `env`.

    Under `strategy.name: fedprox` the algorithm sees `strategy.prox_mu` as its own
    `prox_mu` (FedProx is FedAvg plus the client's proximal term).
    """
    return get(config.algo.name).build(with_fedprox(config), env, env_params)


def _register_builtins() -> None:
    from jfedrl.algorithms import a2c, dqn, ppo, td3

    register(ppo.SPEC)
    register(a2c.SPEC)
    register(dqn.SPEC)
    register(td3.SPEC)


_register_builtins()

__all__ = ["Algorithm", "AlgorithmSpec", "Reference", "get", "make", "names", "register"]
