"""What registers a personalization method: its name, section, hooks and checks.

Imports no jax, like `jfedrl.algorithms.spec`: the config tree is assembled
from the sections before any method's maths is imported. Every hook may be
named as `"module:attribute"` and is imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jfedrl.algorithms.spec import resolve


@dataclass(frozen=True)
class PersonalSpec:
    """A registered personalization method.

    Attributes:
        name: the `personal.name` value that selects it; its section is `personal.<name>`.
        wrap_algorithm: `(config, algorithm, build, envs) -> Algorithm`: the local
            learner the round runs (`build(config)` builds another algorithm for
            `config`, e.g. Ditto's personal learner; `envs` is the run's
            `ClientEnvs`); None: the algorithm as it is.
        wrap_strategy: `(config, strategy) -> Strategy`: the server's rule (IFCA's
            per-cluster aggregate); None: the strategy as it is.
        personal_params: `(simulator, state, key) -> params [C, ...]`: each client's
            personalized policy, in the format `simulator.algorithm.act` reads.
        validate: `(config) -> None`, raising `ConfigError` naming the field; None: none.
        section: the frozen dataclass of its hyperparameters (`personal.<name>`), or None.
        description: one line for the docs.
    """

    name: str
    personal_params: Callable[..., Any] | str
    wrap_algorithm: Callable[..., Any] | str | None = None
    wrap_strategy: Callable[..., Any] | str | None = None
    validate: Callable[[Any], None] | str | None = None
    section: type | None = None
    description: str = ""

    def check(self, config: Any) -> None:
        """Runs the method's own checks on the whole `config`."""
        if self.validate is not None:
            resolve(self.validate)(config)
