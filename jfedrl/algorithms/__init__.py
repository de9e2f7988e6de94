"""Local learning algorithms, behind one registry: `register`, `get`, `names`, `make`.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`); `make` imports an algorithm's
maths when it is built. A new algorithm is one module that defines its section
and calls `register(AlgorithmSpec(...))` (docs/extending.md).
"""

from __future__ import annotations

from typing import Any

from jfedrl.algorithms import a2c_config, dqn_config, ppo_config, sac_config, td3_config
from jfedrl.algorithms.spec import AlgorithmSpec
from jfedrl.schema.convert import replace_path
from jfedrl.schema.sections import SectionRegistry

ALGORITHMS: SectionRegistry[AlgorithmSpec] = SectionRegistry(
    "algorithm", "algo.name", "jfedrl.algorithms", entry_type=AlgorithmSpec
)
"""Every algorithm: the built-ins, `register` calls (plugins) and the `jfedrl.algorithms`
entry points of installed packages."""

register = ALGORITHMS.add
names = ALGORITHMS.names
specs = ALGORITHMS.in_order
get = ALGORITHMS.get
freeze = ALGORITHMS.freeze


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
