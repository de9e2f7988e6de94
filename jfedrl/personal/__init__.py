"""Personalization methods, behind one registry: `register`, `get`, `names`, `specs`.

A method changes what a client trains and what the server aggregates, inside
the one jitted round (so every executor runs it): FedPer keeps named layers
local, Ditto keeps a personal model in the client state, fine-tuning adapts
the global policy at evaluation, IFCA trains K cluster models. Importing this
package imports no jax; docs/personalization-methods.md describes each.

The evaluation side's entry point is `personal_params(simulator, state, key)`:
each client's personalized policy params, stacked `[C, ...]`, in the format
`simulator.algorithm.act` reads.
"""

from __future__ import annotations

from typing import Any

from jfedrl.algorithms.spec import resolve
from jfedrl.personal import sections
from jfedrl.personal.spec import PersonalSpec
from jfedrl.schema.sections import SectionRegistry

PERSONAL: SectionRegistry[PersonalSpec] = SectionRegistry(
    "personalization method", "personal.name", "jfedrl.personal", entry_type=PersonalSpec
)
"""Every method: the built-ins, `register` calls (plugins) and the `jfedrl.personal`
entry points of installed packages."""

register = PERSONAL.add
names = PERSONAL.names
specs = PERSONAL.in_order
get = PERSONAL.get
freeze = PERSONAL.freeze


def _spec(config: Any) -> PersonalSpec:
    return get(config.personal.name)


def wrap_algorithm(config: Any, algorithm: Any, build: Any, envs: Any) -> Any:
    """The local learner under `config.personal` (`algorithm` itself for `none`).

    Args:
        config: the whole config.
        algorithm: the algorithm `jfedrl.algorithms.make` built.
        build: `config -> Algorithm` for the same environment (another learner).
        envs: the run's `ClientEnvs` (the environment, its defaults, its episode length).

    Raises:
        ConfigError: the method does not fit the algorithm's params (FedPer's pattern).
    """
    hook = _spec(config).wrap_algorithm
    return algorithm if hook is None else resolve(hook)(config, algorithm, build, envs)


def wrap_strategy(config: Any, strategy: Any) -> Any:
    """The server's rule under `config.personal` (`strategy` itself for most methods)."""
    hook = _spec(config).wrap_strategy
    return strategy if hook is None else resolve(hook)(config, strategy)


def personal_params(simulator: Any, state: Any, key: Any = None) -> Any:
    """Each client's personalized policy params, stacked `[C, ...]` (jitted).

    FedPer: the global body with the client's own local layers; Ditto: the client's
    personal model (the global until it first trains); finetune: the global policy
    after `personal.finetune.updates` local updates on the client's env; IFCA: the
    cluster model the client last chose; none: the client's own last local params
    (what `eval --policy local` reads). The params are in the format
    `simulator.algorithm.act` reads (IFCA's carry all k models and the choice).

    Args:
        simulator: the run's `Simulator`.
        state: its `FedState`.
        key: randomness for fine-tuning (None: drawn from the state's key and round).
    """
    from jfedrl.personal.methods import personal_params_jit

    return personal_params_jit(simulator, state, key)


def check(config: Any) -> None:
    """The `personal` section: a known method, then the method's own checks."""
    from envs.registry import UnknownName
    from jfedrl.schema.checks import ConfigError

    try:
        spec = _spec(config)
    except UnknownName as error:
        raise ConfigError(str(error)) from None
    spec.check(config)


for _spec_entry in sections.BUILT_IN:
    register(_spec_entry)

__all__ = [
    "PersonalSpec",
    "check",
    "get",
    "names",
    "personal_params",
    "register",
    "specs",
    "wrap_algorithm",
    "wrap_strategy",
]
