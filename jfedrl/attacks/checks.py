"""The `attack` section's checks, and warnings where a rule tolerates fewer attackers.

Imports no jax (the CLI runs these before JAX starts). Errors name the field; a
rule whose tolerance is below the Byzantine count is allowed (showing a rule
fail is an experiment) but warned about, naming both fields.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from envs.registry import UnknownName
from jfedrl import attacks
from jfedrl.attacks.byzantine import byzantine_count
from jfedrl.schema.checks import ConfigError, require

log = logging.getLogger(__name__)

_WARNED: set[str] = set()
"""Messages already logged: a config is validated more than once per run (the CLI, then
`make_simulator`), and a warning is said once."""


def _warn(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def validate_attack(config: Any) -> None:
    """Checks `attack.*` and runs the attack's own checks; warns about rule tolerances."""
    section = config.attack
    try:
        spec = attacks.get(section.name)
    except UnknownName as error:
        raise ConfigError(str(error)) from None
    fraction = section.fraction
    require(0.0 <= fraction < 1.0, "attack.fraction", "in [0, 1)", fraction)
    num_clients = config.federation.num_clients
    ids = section.clients
    for client in ids:
        ok = isinstance(client, int) and 0 <= client < num_clients
        require(ok, "attack.clients", f"client ids in [0, num_clients={num_clients})", list(ids))
    require(len(set(ids)) == len(ids), "attack.clients", "unique client ids", list(ids))
    start = section.start_round
    require(isinstance(start, int) and start >= 0, "attack.start_round", ">= 0", start)
    if spec.kind == "none":
        return
    spec.check(config)
    count = byzantine_count(fraction, num_clients, ids)
    if count == 0:
        _warn(
            f"attack.name: {section.name}, but no client is Byzantine (attack.fraction = "
            f"{fraction:g} of {num_clients} clients, attack.clients empty)"
        )
        return
    for message in tolerance_warnings(config, count):
        _warn(message)


def tolerance_warnings(config: Any, count: int) -> list[str]:
    """Where the configured rule tolerates fewer Byzantine participants than `count`.

    The rule sees at most min(count, n) Byzantine participants per round (n
    participants); each message names the rule's field and the attack's.
    """
    from jfedrl.config import participants_per_round

    n = participants_per_round(config.federation)
    worst = min(count, n)
    rule = config.strategy.name
    source = "attack.clients" if config.attack.clients else "attack.fraction"
    where = f"{source} gives {count} Byzantine clients, up to {worst} of the {n} participants"
    out = []
    if rule in ("krum", "multi_krum"):
        f = getattr(config.strategy, rule).f
        if f < worst:
            out.append(f"strategy.{rule}.f = {f} is below the Byzantine count: {where}")
    elif rule == "trimmed_mean":
        beta = config.strategy.trimmed_mean.beta
        trimmed = math.floor(beta * n + 1e-6)
        if trimmed < worst:
            out.append(
                f"strategy.trimmed_mean.beta = {beta} trims {trimmed} per side, below the "
                f"Byzantine count: {where}"
            )
    elif rule in ("median", "geometric_median") and 2 * worst >= n:
        out.append(f"strategy.name = {rule} breaks down at half the participants: {where}")
    return out
