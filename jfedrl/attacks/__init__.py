"""Adversaries: Byzantine clients and their attacks, behind one registry.

Importing this package imports no jax: it holds the specs, whose sections the
config tree is assembled from (`jfedrl.config`: `attack.<name>`); the maths is
imported when an attack is built. The Byzantine set is drawn once from the run
key (`jfedrl.attacks.byzantine`); an `update` attack rewrites the Byzantine
participants' params between local training and screening
(`jfedrl.attacks.update`), an `env` attack acts inside their own rollouts
(`jfedrl.attacks.env`). A new attack is one module that defines its section and
calls `register(AttackSpec(...))`, or a `jfedrl.attacks` entry point
(docs/robustness.md).
"""

from __future__ import annotations

from jfedrl.attacks import env_config, update_config
from jfedrl.attacks.spec import KINDS, AttackSpec
from jfedrl.schema.sections import SectionRegistry

ATTACKS: SectionRegistry[AttackSpec] = SectionRegistry(
    "attack", "attack.name", "jfedrl.attacks", entry_type=AttackSpec
)
"""Every attack: the built-ins, `register` calls (plugins) and the `jfedrl.attacks`
entry points of installed packages."""

register = ATTACKS.add
names = ATTACKS.names
specs = ATTACKS.in_order
get = ATTACKS.get
freeze = ATTACKS.freeze

NONE = "none"
"""`attack.name` of a run without adversaries (the default)."""

register(AttackSpec(NONE, "none", description="no attack: every client is honest"))
for _module in (update_config, env_config):
    for _spec in _module.SPECS:
        register(_spec)

__all__ = ["ATTACKS", "KINDS", "NONE", "AttackSpec", "get", "names", "register", "specs"]
