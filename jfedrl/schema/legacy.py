"""Config files written by older versions: their renamed keys, upgraded when read.

A field that moved declares where it was (`param(..., renamed_from=(...))`); a
config file is upgraded before it is built, so an old run folder still resumes,
evaluates and compares. An old key that several rules' sections inherited (the
flat `strategy.server_lr` of every server optimiser) moves to the section of the
file's own `strategy.name`; the copies for other rules never reached the maths
of that run and are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("jfedrl")


def _normal(key: Any) -> str:
    return str(key).replace("-", "_")


def _pop(data: dict[str, Any], path: str) -> tuple[bool, Any]:
    """Removes the value at dotted `path` from the nested or dotted mapping `data`."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        head, rest = ".".join(parts[:i]), ".".join(parts[i:])
        for key in list(data):
            if _normal(key) != head:
                continue
            if not rest:
                return True, data.pop(key)
            if isinstance(data[key], Mapping):
                inner = dict(data[key])
                found, value = _pop(inner, rest)
                if found:
                    data[key] = inner
                    return True, value
    return False, None


def _get(data: Mapping[str, Any], path: str, default: Any) -> Any:
    found, value = _pop(dict(data), path)
    return value if found else default


def upgrade(
    data: Mapping[str, Any], renames: Mapping[str, tuple[str, ...]], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """`data` with every old key moved to its new field.

    Args:
        data: a config mapping as read from YAML (nested, dotted keys or both).
        renames: old dotted path -> the fields it became.
        defaults: dotted path -> the default value of each new field (an old key
            dropped with a value other than its default is logged).

    Returns:
        A new mapping; the new keys are dotted paths at the top level.
    """
    out = dict(data)
    rule = str(_get(out, "strategy.name", defaults.get("strategy.name", "")))
    for old, new in renames.items():
        found, value = _pop(out, old)
        if not found:
            continue
        targets = new if len(new) == 1 else [p for p in new if p.startswith(f"strategy.{rule}.")]
        if not targets:
            if value != defaults.get(new[0], value):
                log.warning(
                    "%s: ignored: it became %s, which strategy %r does not read",
                    old,
                    ", ".join(new),
                    rule,
                )
            continue
        for target in targets:
            out[target] = value
    return out


def renamed_message(path: str, renames: Mapping[str, tuple[str, ...]]) -> str | None:
    """The one-line error for an old dotted `path` given where a new one is needed."""
    new = renames.get(_normal(path))
    if new is None:
        return None
    return f"{path}: renamed: use {' or '.join(new)}"
