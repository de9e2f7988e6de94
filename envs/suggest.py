"""Nearest-name suggestions for unknown-name errors (difflib, no dependencies)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(value: object, allowed: Iterable[str], n: int = 3) -> list[str]:
    """The allowed names closest to `value`, best first (case-insensitive, may be empty)."""
    allowed = [str(a) for a in allowed]
    by_lower = {a.lower(): a for a in allowed}
    text = str(value).lower()
    close = difflib.get_close_matches(text, list(by_lower), n=n, cutoff=0.6)
    # A typed name that is a prefix or part of an allowed one ("trimmed" -> "trimmed_mean").
    close += [a for a in by_lower if len(text) >= 3 and text in a and a not in close]
    return [by_lower[c] for c in close[:n]]


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """`" Did you mean 'x'?"` (or `'x' or 'y'`) for the nearest names, else ``""``."""
    close = nearest(value, allowed)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
