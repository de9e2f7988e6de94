"""Plugins found through packaging entry points: executors and CLI commands.

An executor is where a round's local training runs. `inprocess` (the jitted
simulator) is built in; a package adds others by declaring an entry point in
the group `jfedrl.executors` that names an `ExecutorSpec`, for example in its
`pyproject.toml`:

    [project.entry-points."jfedrl.executors"]
    local = "offload.plugin:LOCAL"

A CLI command (`jfedrl <name> ...`) is an entry point in `jfedrl.commands`
naming a `CommandSpec`. This module imports nothing heavy: a spec's target
module must stay light too (build the executor lazily in `make_runner`), so
that listing the executors costs milliseconds.

Both are `envs.registry.Registry` instances (`EXECUTORS`, `COMMANDS`).
Specs are read once per process; a package installed after that is seen by the
next process. An entry point whose package is absent is skipped, so jfedrl runs
without `offload`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.registry import Registry

EXECUTOR_GROUP = "jfedrl.executors"
COMMAND_GROUP = "jfedrl.commands"


def _no_checks(config: Any) -> None:
    del config


@dataclass(frozen=True)
class ExecutorSpec:
    """An executor: how to build its block runner, and what it checks.

    Attributes:
        name: the `offload.executor` value that selects it.
        make_runner: `(simulator, run_dir) -> BlockRunner` (see `jfedrl.run.callbacks`),
            or its `"module:attribute"` name, imported on first use (as an entry point
            is), so that this module imports nothing of the run.
        validate: raises `ConfigError` naming the field for a config this executor
            cannot run; called by `jfedrl.validation.validate`, before anything is
            written or compiled.
        section: the dataclass of its own config section, `offload.<name>`, or None.
        summary: one line for `--help` and docs.
    """

    name: str
    make_runner: Callable[[Any, Path], Any] | str
    validate: Callable[[Any], None] = _no_checks
    section: type | None = None
    summary: str = ""

    def build_runner(self, simulator: Any, run_dir: Path) -> Any:
        """The executor's block runner for `simulator`, writing under `run_dir`."""
        make = self.make_runner
        if isinstance(make, str):
            module, _, attribute = make.partition(":")
            make = getattr(importlib.import_module(module), attribute)
        return make(simulator, run_dir)


@dataclass(frozen=True)
class CommandSpec:
    """A `jfedrl` subcommand: `add_arguments(parser)`, then `run(args) -> exit code`."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    summary: str = ""


INPROCESS = ExecutorSpec(
    name="inprocess",
    make_runner="jfedrl.run.runner:InProcessRunner",
    summary="the jitted simulator in this process, clients sharded over local devices",
)


EXECUTORS: Registry[ExecutorSpec] = Registry(
    "executor", "offload.executor", EXECUTOR_GROUP, entry_type=ExecutorSpec
)
"""Every executor: `inprocess`, then the installed plugins' (loaded on first use)."""
EXECUTORS.register(INPROCESS.name, INPROCESS)

COMMANDS: Registry[CommandSpec] = Registry(
    "command", "command", COMMAND_GROUP, entry_type=CommandSpec
)
"""Every plugin subcommand (loaded on first use)."""


@functools.cache
def executors() -> dict[str, ExecutorSpec]:
    """Every available executor by name (`EXECUTORS`, read once per process)."""
    return dict(EXECUTORS.items())


def executor(name: str) -> ExecutorSpec:
    """The executor called `name`; a `ConfigError` naming `offload.executor` if none is."""
    available = executors()
    if name not in available:
        from jfedrl.schema.checks import ConfigError, not_allowed

        raise ConfigError(not_allowed("offload.executor", name, available))
    return available[name]


@functools.cache
def commands() -> dict[str, CommandSpec]:
    """Every plugin subcommand by name (`COMMANDS`, read once per process)."""
    return dict(COMMANDS.items())
