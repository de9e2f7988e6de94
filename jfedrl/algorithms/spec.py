"""What registers an algorithm: its name, its config section, its builder and checks.

Imports no jax. The builder and the checks may be named as `"module:attribute"`
and are imported on first use, so the config tree (which reads only the
sections) is assembled without importing any algorithm's maths.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Why the coefficients that switch a term on are compiled into the program.
PROX_REASON = "switches the proximal term on in Python (0 and > 0 compile apart)"
COMM_REASON = (
    "switches the communication term (and the peers' params) on in Python (0 and > 0 compile apart)"
)
KL_TARGET_REASON = "switches the adaptive KL penalty on in Python (0 and > 0 compile apart)"
HORIZON_REASON = "sets an integer decay horizon"


def resolve(target: Callable | str) -> Callable:
    """`target` itself, or the attribute a `"module:attribute"` string names."""
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm.

    Attributes:
        name: the `algo.name` value that selects it; its section is `algo.<name>`.
        build: `(config, env, env_params) -> Algorithm`, or its `"module:attribute"`.
        validate: `(config) -> None`, raising `ConfigError` naming the field, or its
            `"module:attribute"`; None: nothing to check.
        section: the frozen dataclass of its hyperparameters (`algo.<name>`), or None.
        description: one line for `jfedrl algorithms`, `--help` and the docs.
    """

    name: str
    build: Callable[[Any, Any, Any], Any] | str
    validate: Callable[[Any], None] | str | None = None
    section: type | None = None
    description: str = ""

    def builder(self) -> Callable[[Any, Any, Any], Any]:
        """The build function (imported now if it was named)."""
        return resolve(self.build)

    def check(self, config: Any) -> None:
        """Runs the algorithm's own checks on the whole `config`."""
        if self.validate is not None:
            resolve(self.validate)(config)
