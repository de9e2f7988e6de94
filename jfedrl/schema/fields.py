"""Facts about a config field, declared on the field itself.

A field says, next to its default, whether a sweep may trace it, whether it
switches code on at 0, whether a resumed run may change it, and its short flag.
The tables the sweep, `--resume`, `compare` and the CLI need are derived from
these facts (`jfedrl.config`), so a component that adds a field says everything
about it in one place:

    learning_rate: float = param(2.5e-3, traceable=True)
    prox_mu: float = param(0.0, switch=True, static_reason="...")
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass
from typing import Any

KEY = "jfedrl"


@dataclass(frozen=True)
class Facts:
    """What the run, the sweep and the CLI know about one field.

    Attributes:
        traceable: may hold a traced scalar inside the jitted round, so setups
            differing only in it share one compiled program (`jfedrl sweep`).
        switch: a coefficient that switches a term on when > 0: traced when on,
            and 0 and > 0 compile apart. A switch is traceable.
        resumable: `jfedrl train --resume` may change it (on a section: every
            field under it).
        setup: part of what a run compares (`jfedrl compare` labels runs by the
            setup fields that differ); the seed and the outputs are not.
        reserved: a sweep sets it itself (the seed, the run folder), so a sweep
            file may not.
        alias: the short flag, without dashes (`rounds` for `--rounds`).
        renamed_from: the dotted paths this field had in older config files;
            they are upgraded when such a file is read.
        static_reason: why a float field is compiled into the program rather
            than traced, for the sweep's log.
        doc: the field's description where its class has no source to read an
            attribute docstring from (a generated class).
    """

    traceable: bool = False
    switch: bool = False
    resumable: bool = False
    setup: bool = True
    reserved: bool = False
    alias: str = ""
    renamed_from: tuple[str, ...] = ()
    static_reason: str = ""
    doc: str = ""


NONE = Facts()


def param(default: Any = MISSING, *, default_factory: Any = MISSING, **facts: Any) -> Any:
    """A dataclass field with `Facts` (keyword arguments of `Facts`)."""
    if facts.get("switch"):
        facts["traceable"] = True
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={KEY: Facts(**facts)}
    )


def facts(field: dataclasses.Field) -> Facts:
    """The `Facts` declared on `field` (the defaults if none)."""
    return field.metadata.get(KEY, NONE)


def facts_of(cls: type, prefix: str = "", inherited: Facts = NONE) -> dict[str, Facts]:
    """Every leaf field of the dataclass tree `cls` by dotted path, with its facts.

    A section's `resumable=True`, `setup=False` and `reserved=True` hold for every
    field under it; the rest of a section's facts are its own.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        own = facts(field)
        merged = dataclasses.replace(
            own,
            resumable=own.resumable or inherited.resumable,
            setup=own.setup and inherited.setup,
            reserved=own.reserved or inherited.reserved,
        )
        annotation = hints[field.name]
        path = prefix + field.name
        if dataclasses.is_dataclass(annotation):
            section = Facts(
                resumable=merged.resumable, setup=merged.setup, reserved=merged.reserved
            )
            out.update(facts_of(annotation, path + ".", section))
        else:
            out[path] = merged
    return out
