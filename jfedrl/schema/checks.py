"""The config checks every section uses: one error type, a few helpers.

Every error names the dotted field and what is allowed (the allowed names, or
the bound), so that `jfedrl.validation.validate` and each algorithm, strategy,
environment and executor check read and fail the same way, before anything is
written or compiled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from envs.registry import not_allowed as _not_allowed


class ConfigError(ValueError):
    """A configuration value is unknown, malformed or out of range."""


def not_allowed(
    path: str, value: Any, allowed: Iterable[str], hints: Mapping[str, str] | None = None
) -> str:
    """`envs.registry.not_allowed`'s message: the allowed names, then a hint or the nearest."""
    return _not_allowed(path, value, allowed, hints)


def require(ok: bool, path: str, rule: str, value: Any) -> None:
    """Raises `ConfigError('<path>: must be <rule>, got <value>')` unless `ok`."""
    if not ok:
        raise ConfigError(f"{path}: must be {rule}, got {value!r}")


def require_choice(
    path: str, value: Any, allowed: Iterable[str], hints: Mapping[str, str] | None = None
) -> None:
    """Raises `ConfigError` naming `path` and the allowed values unless `value` is one.

    `hints`: values users may type that live elsewhere -> where (shown instead of
    the nearest allowed names).
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(not_allowed(path, value, allowed, hints))


def require_positive(path: str, value: float, strict: bool = True) -> None:
    """`value > 0` (or `>= 0` when not `strict`)."""
    require(value > 0 if strict else value >= 0, path, "> 0" if strict else ">= 0", value)


def require_range(
    path: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` in the interval from `low` to `high`, each end closed unless `*_open`."""
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    require(above and below, path, f"in {interval}", value)


def require_finite(path: str, value: Any) -> None:
    """Every float in `value` (dataclass fields, mappings, sequences) is finite.

    Also catches values set in code, which skip the coercion of YAML and flags.
    """
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            require_finite(f"{path}.{f.name}" if path else f.name, getattr(value, f.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            require_finite(f"{path}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            require_finite(f"{path}[{i}]", item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")


#: Int config fields stay below this magnitude: JAX without x64 holds rounds, counts and
#: the sizes derived from them as 32-bit integers.
INT32_LIMIT = 2**31


def require_int32(path: str, value: Any) -> None:
    """Every int field of `value` (a dataclass tree) is in [-2**31, 2**31).

    Caught here, a huge count (`--clients 100000000000000000000`) is one line
    before anything is written, not an overflow deep inside JAX.
    """
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            require_int32(f"{path}.{f.name}" if path else f.name, getattr(value, f.name))
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -INT32_LIMIT <= value < INT32_LIMIT:
            raise ConfigError(
                f"{path}: must be in [-2**31, 2**31) (JAX's 32-bit integers), got {value}"
            )
