"""Layers hold: imports only point down (shared/DESIGN.md), and jfedrl runs without offload.

    scripts/  ->  offload/  ->  jfedrl/  ->  envs/

The static checks read every module's imports with `ast` (function-level
imports included); the run check starts a fresh interpreter in which `offload`
cannot be imported at all.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules of `package` that import a module under one of `forbidden`."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = sorted(
            name
            for name in imported_modules(path)
            if any(name == top or name.startswith(top + ".") for top in forbidden)
        )
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_imported_modules_sees_every_form(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import a.b\nfrom c import d\nfrom . import e\ndef f():\n    from offload import worker\n"
    )
    assert imported_modules(source) == {"a.b", "c", "c.d", "offload", "offload.worker"}


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("jfedrl", ("offload", "scripts")),
        ("envs", ("jfedrl", "offload", "scripts")),
        ("offload", ("scripts",)),
    ],
)
def test_no_module_imports_a_layer_above_it(package, forbidden):
    assert offenders(package, forbidden) == {}


def module_graph(package: str) -> dict[str, set[str]]:
    """`package`'s modules, each with the modules of the same package it imports.

    An imported name resolves to the longest module it names (`from a import b`
    imports `a.b` when that is a module); a module's own parent packages, which
    Python imports first anyway, are not edges.
    """
    modules = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in imported_modules(path)}
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_a_loop_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["jfedrl", "envs"])
def test_no_import_cycle(package):
    """Every import inside a package points one way, function-level imports included."""
    assert cycles(module_graph(package)) == []


BLOCKED_RUN = textwrap.dedent(
    """
    import dataclasses, json, sys

    class NoOffload:
        def find_spec(self, name, path=None, target=None):
            if name == "offload" or name.startswith("offload."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoOffload())

    from jfedrl import plugins
    from jfedrl.cli import app
    from jfedrl.config import OffloadConfig
    from jfedrl.schema.checks import ConfigError
    from jfedrl.schema.convert import replace_path
    from jfedrl.validation import validate
    from jfedrl.run.runner import train
    from tests.helpers import tiny_config, with_run_dir

    config = tiny_config(federation__rounds=1, log__rounds_per_block=1)
    result = train(with_run_dir(config, sys.argv[1]), quiet=True)
    app.build_parser()  # the CLI builds without offload's subcommand
    try:
        validate(replace_path(config, "offload.executor", "local"))
        local = "accepted"
    except ConfigError as error:
        local = str(error)
    print(json.dumps({
        "executors": sorted(plugins.executors()),
        "commands": sorted(plugins.commands()),
        "rounds": len(result.records),
        "offload_fields": [f.name for f in dataclasses.fields(OffloadConfig)],
        "local": local,
        "offload_loaded": any(m == "offload" or m.startswith("offload.") for m in sys.modules),
    }))
    """
)


def test_jfedrl_trains_in_process_with_offload_absent(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts.pop("local").startswith("offload.executor: 'local' is not allowed; allowed:")
    assert "golem" not in facts.pop("offload_fields")  # the section comes with its executor
    assert facts == {
        "executors": ["inprocess"],
        "commands": [],
        "rounds": 1,
        "offload_loaded": False,
    }
