"""A registry of specs that own config sections, closed once the config tree is built.

`jfedrl.config` assembles `AlgoConfig` and `StrategyConfig` from the sections
registered at its import and then freezes these registries: a section added
later would be missing from the tree every module already holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from envs.registry import Registry

T = TypeVar("T")


class SectionRegistry(Registry[T]):
    """A `Registry` of specs (each with `name` and `section`) that can be frozen."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._frozen = ""

    def freeze(self, reason: str) -> None:
        """Refuses later sections: the config tree holds the ones registered so far."""
        self._frozen = reason

    def add(self, spec: T, hints: Mapping[str, str] | None = None) -> T:
        """Registers `spec` under its name; returns it.

        Args:
            spec: what to register.
            hints: names users may type for it, or for a feature of it, that are
                not entries -> where they live (`ddpg` -> "a TD3 switch: ...").

        Raises:
            ValueError: the name is taken, or `spec` brings a section after `freeze`.
        """
        if self._frozen and getattr(spec, "section", None) is not None:
            raise ValueError(
                f"{self.kind} {spec.name!r} registers a config section after {self._frozen}: "
                "import plugin modules first (`--plugin`, or `jfedrl.plugins.load_modules`)"
            )
        return self.register(spec.name, spec, hints=hints)
