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


BLOCKED_RUN = textwrap.dedent(
    """
    import dataclasses, json, sys

    class NoOffload:
        def find_spec(self, name, path=None, target=None):
            if name == "offload" or name.startswith("offload."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoOffload())

    from jfedrl import cli, plugins
    from jfedrl.config import ConfigError, OffloadConfig, replace_path, validate
    from jfedrl.runner import train
    from tests.helpers import tiny_config, with_run_dir

    config = tiny_config(federation__rounds=1, log__rounds_per_block=1)
    result = train(with_run_dir(config, sys.argv[1]), quiet=True)
    cli.build_parser()  # the CLI builds without offload's subcommand
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
