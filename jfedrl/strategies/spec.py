"""What registers a strategy: its name, its config section, its builder and checks.

Imports no jax, for the same reason as `jfedrl.algorithms.spec`: the config tree
is assembled from the sections before any rule's maths is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jfedrl.algorithms.spec import resolve


@dataclass(frozen=True)
class StrategySpec:
    """A registered aggregation rule.

    Attributes:
        name: the `strategy.name` value that selects it; its section is
            `strategy.<name>`.
        build: `(section, num_clients) -> Strategy`, or its `"module:attribute"`.
            `section` is the rule's own config section (None if it has none);
            `num_clients` is the length of the client axis `aggregate` will see
            (participants per round plus padding), or None where the caller does
            not know it: only rules whose server state has a client axis need it.
        validate: `(config) -> None` on the whole config, raising `ConfigError`
            naming the field, or its `"module:attribute"`; None: nothing to check.
        section: the frozen dataclass of its hyperparameters, or None.
        description: one line for `--help` and the docs.
    """

    name: str
    build: Callable[[Any, int | None], Any] | str
    validate: Callable[[Any], None] | str | None = None
    section: type | None = None
    description: str = ""

    def builder(self) -> Callable[[Any, int | None], Any]:
        """The build function (imported now if it was named)."""
        return resolve(self.build)

    def check(self, config: Any) -> None:
        """Runs the rule's own checks on the whole `config`."""
        if self.validate is not None:
            resolve(self.validate)(config)
