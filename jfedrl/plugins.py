"""Plugins: executors and CLI commands found through packaging entry points, and
the modules `--plugin` imports (algorithms, strategies, envs, variants).

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
import os
import sys
from collections.abc import Callable, Iterable
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
        plan: `simulator -> lines` that `jfedrl train --dry-run` prints for a run on
            this executor (what it would ask of its workers and cost), or None.
    """

    name: str
    make_runner: Callable[[Any, Path], Any] | str
    validate: Callable[[Any], None] = _no_checks
    section: type | None = None
    summary: str = ""
    plan: Callable[[Any], list[str]] | None = None

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


#: Comma-separated plugin modules every `jfedrl` process and offload worker loads
#: (the offload executors pass their run's plugins to their workers this way).
ENV_VAR = "JFEDRL_PLUGINS"


def from_environment() -> list[str]:
    """The plugin modules `$JFEDRL_PLUGINS` names."""
    return [name for name in os.environ.get(ENV_VAR, "").split(",") if name]


#: The modules `load_modules` imported in this process, by name, with the folder each
#: was found in (the offload workers get these folders on their `PYTHONPATH`).
LOADED: dict[str, str] = {}


def load_modules(names: Iterable[str]) -> None:
    """Imports the plugin modules `names` (`--plugin`, `plugins:` in a config file).

    A plugin module registers what it defines (an algorithm, a strategy, an env
    or a variant) when imported, so it must be imported before `jfedrl.config`
    assembles the config tree from the registries. The current folder is
    searched first, as for `python -m`.

    Raises:
        ConfigError: naming `plugins` and the module, if one cannot be imported.
    """
    from jfedrl.schema.checks import ConfigError

    names = [n for n in names if n not in LOADED]
    if not names:
        return
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.split(".")[0] == error.name.split(".")[0]:
                raise ConfigError(
                    f"plugins: no module named {name!r} (searched the current folder and "
                    "sys.path; give a module name, not a file path)"
                ) from None
            raise
        file = getattr(module, "__file__", None)
        folder = Path(file).resolve().parent if file else Path.cwd()
        for _ in name.split(".")[1:]:  # a package module: the folder above the package
            folder = folder.parent
        LOADED[name] = str(folder)
