"""One small registry type for every set of named things: envs, variants, executors, ...

A `Registry` maps names to entries. Asked for a name it does not hold, it
raises `UnknownName` with the one message format every unknown-name error
uses (`not_allowed`): the field, the value, the allowed names, then either a
hint registered for that name (a feature that lives elsewhere) or the nearest
allowed names. Entries come from `register` calls, from modules it imports
and from packaging entry points it loads, both once, on first use, so that
building a registry costs nothing. No JAX here: `jfedrl.plugins` and the CLI
import this before JAX may be loaded.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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


def hint_key(name: object) -> str:
    """How a hinted name is matched: case-insensitive, `-` as `_`."""
    return str(name).lower().replace("-", "_")


def not_allowed(
    field: str, value: Any, allowed: Iterable[str], hints: Mapping[str, str] | None = None
) -> str:
    """The error message for a name `field` does not know.

    It lists the allowed names, then either where a feature that is not a
    `field` value lives instead (`hints`, keyed by `hint_key`) or the nearest
    allowed names (difflib).
    """
    allowed = tuple(allowed)
    message = f"{field}: {value!r} is not allowed; allowed: {', '.join(allowed)}."
    hint = (hints or {}).get(hint_key(value))
    return message + (f" {hint}." if hint else did_you_mean(value, allowed))


class UnknownName(ValueError):
    """A name a registry does not hold; the message is `not_allowed`'s.

    Attributes:
        field: the dotted config field the name was given for (`env.name`).
        value: the name asked for.
        allowed: the registered names, sorted.
    """

    def __init__(self, field: str, value: Any, allowed: tuple[str, ...], message: str):
        super().__init__(message)
        self.field = field
        self.value = value
        self.allowed = allowed


class Registry(Generic[T]):
    """Named entries of one kind, with hints for names that live elsewhere.

    Args:
        kind: what an entry is, for errors (`environment`, `executor`).
        field: the config field that names an entry (`env.name`).
        entry_points: a packaging entry-point group whose entries are loaded
            on first use, each registered under its entry-point name. A point
            whose package is not installed is skipped; one whose own imports
            fail still raises.
        modules: modules imported on first use (built-in entries that
            register themselves, e.g. the env suites, which import JAX).
        entry_type: if set, an entry point must name an instance of it whose
            `name` is the entry-point name.
    """

    def __init__(
        self,
        kind: str,
        field: str,
        entry_points: str | None = None,
        *,
        modules: tuple[str, ...] = (),
        entry_type: type | None = None,
    ):
        self.kind = kind
        self.field = field
        self.entry_points = entry_points
        self.modules = modules
        self.entry_type = entry_type
        self._entries: dict[str, T] = {}
        self._hints: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, entry: T, *, hints: Mapping[str, str] | None = None) -> T:
        """Adds `entry` under `name`; `hints`: other names -> where they live (e.g. its switch).

        Raises:
            ValueError: `name` is already registered (or hinted), or a hinted
                name is an entry.
        """
        if name in self._entries or hint_key(name) in self._hints:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        for other in hints or {}:
            if other in self._entries:
                raise ValueError(f"{self.kind} {other!r} is registered; it cannot be a hint")
        self._entries[name] = entry
        self._hints.update({hint_key(k): v for k, v in (hints or {}).items()})
        return entry

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the modules imported below call `register`
        for module in self.modules:
            importlib.import_module(module)
        if self.entry_points is None:
            return
        for point in metadata.entry_points(group=self.entry_points):
            try:
                entry = point.load()
            except ModuleNotFoundError as error:
                # Declared but not installed (e.g. `offload` left out): not an entry here.
                if error.name and point.module.split(".")[0] == error.name.split(".")[0]:
                    continue
                raise
            kind = self.entry_type
            if kind is not None and (
                not isinstance(entry, kind) or getattr(entry, "name", point.name) != point.name
            ):
                raise TypeError(
                    f"entry point {self.entry_points}:{point.name} ({point.value}) must name a "
                    f"{kind.__name__} called {point.name!r}"
                )
            self.register(point.name, entry)

    def get(self, name: str) -> T:
        """The entry called `name`; `UnknownName` (a `ValueError`) if there is none."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            allowed = self.names()
            raise UnknownName(
                self.field, name, allowed, not_allowed(self.field, name, allowed, self._hints)
            ) from None

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted."""
        self._load()
        return tuple(sorted(self._entries))

    def items(self) -> tuple[tuple[str, T], ...]:
        """`(name, entry)` pairs, sorted by name."""
        return tuple((name, self._entries[name]) for name in self.names())

    def in_order(self) -> tuple[T, ...]:
        """Every entry, in the order it was registered (a config tree's field order)."""
        self._load()
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.field!r})"
