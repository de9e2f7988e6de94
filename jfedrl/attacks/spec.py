"""What registers an attack: its name, kind, config section, builder and checks.

Imports no jax, for the same reason as `jfedrl.algorithms.spec`: the config tree
is assembled from the sections before any attack's maths is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jfedrl.algorithms.spec import resolve

#: `AttackSpec.kind`: where an attack acts.
KINDS = ("none", "update", "env")


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: the `attack.name` value that selects it; its section is `attack.<name>`.
        kind: `update` (transforms the Byzantine participants' params after local
            training, before screening: `jfedrl.attacks.update`), `env` (acts inside
            their own rollouts: `jfedrl.attacks.env`) or `none` (no attack).
        build: for an `update` attack, `(section) -> UpdateAttack` (a function
            `(AttackInputs) -> (params, metrics)`); for an `env` attack,
            `(section) -> EnvAttack`; or its `"module:attribute"`. None for `none`.
        validate: `(config) -> None` on the whole config, raising `ConfigError`
            naming the field, or its `"module:attribute"`; None: nothing to check.
        section: the frozen dataclass of its parameters, or None.
        description: one line for `--help` and the docs (with its paper).
    """

    name: str
    kind: str
    build: Callable[[Any], Any] | str | None = None
    validate: Callable[[Any], None] | str | None = None
    section: type | None = None
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attack {self.name!r}: kind {self.kind!r}; allowed: {KINDS}")

    def builder(self) -> Callable[[Any], Any]:
        """The build function (imported now if it was named)."""
        if self.build is None:
            raise ValueError(f"attack {self.name!r} has nothing to build")
        return resolve(self.build)

    def check(self, config: Any) -> None:
        """Runs the attack's own checks on the whole `config`."""
        if self.validate is not None:
            resolve(self.validate)(config)
