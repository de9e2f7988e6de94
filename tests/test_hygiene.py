"""Importing jfedrl changes nothing in the process; `prepare_process` is the opt-in.

Each case runs in a fresh interpreter: the test session itself is prepared
(tests/conftest.py), so only a new process shows what an import alone does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Snapshots `sys.modules` and JAX's CPU lowering table after `import jax`, runs
#: the code in argv[1], then prints what changed. The table is private
#: (`jax._src.interpreters.mlir._platform_specific_lowerings`, jax 0.4 through
#: 0.11); where it is missing, `table` is null.
_PROBE = """
import json, sys
import jax

try:
    from jax._src.interpreters import mlir

    table = mlir._platform_specific_lowerings["cpu"]
except (ImportError, AttributeError):
    table = None
threefry = None
for name in ("jax._src.random.threefry2x32", "jax._src.prng"):
    try:
        threefry = __import__(name, fromlist=["threefry2x32_p"]).threefry2x32_p
        break
    except (ImportError, AttributeError):
        pass
before = dict(table) if table is not None else {}
exec(sys.argv[1])
print(json.dumps({
    "table": None if table is None else {
        "changed": sorted(str(p) for p, rule in before.items() if table.get(p) is not rule),
        "threefry_added": threefry is not None and table.get(threefry) is not before.get(threefry),
    },
    "stand_ins": sorted(
        name for name, module in sys.modules.items() if type(module).__name__ == "_Deferred"
    ),
}))
"""


def _changes(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.splitlines()[-1])


def _needs_table(changes: dict) -> dict:
    if changes["table"] is None:
        pytest.skip("this JAX has no jax._src.interpreters.mlir._platform_specific_lowerings")
    return changes["table"]


def test_importing_jfedrl_changes_no_module_and_no_lowering():
    changes = _changes(
        "import jfedrl, jfedrl.round.simulator, jfedrl.run.runner, jfedrl.config, jfedrl.cli"
    )
    assert changes["stand_ins"] == []
    # gymnax (imported by the environments) loads the real modules, not stand-ins.
    table = _needs_table(changes)
    assert table == {"changed": [], "threefry_added": False}


def test_prepare_process_installs_the_stand_ins_and_the_cpu_lowering():
    changes = _changes("from jfedrl.run import startup; startup.prepare_process()")
    assert changes["stand_ins"] == ["matplotlib.pyplot", "seaborn"]
    assert _needs_table(changes)["threefry_added"] is True


def test_prepare_process_without_lowering_leaves_jax_alone():
    changes = _changes(
        "from jfedrl.run import startup; startup.prepare_process(lowering=False); "
        "startup.defer_plotting()"  # idempotent: a second call changes nothing
    )
    assert changes["stand_ins"] == ["matplotlib.pyplot", "seaborn"]
    assert _needs_table(changes) == {"changed": [], "threefry_added": False}


def test_the_test_session_compiles_with_the_unrolled_cpu_lowering():
    # tests/conftest.py prepares the process, so the many tests that build a
    # simulator directly compile what `jfedrl train` compiles.
    from jfedrl.round import xla_cpu

    try:
        from jax._src.interpreters import mlir

        table = mlir._platform_specific_lowerings["cpu"]
    except (ImportError, AttributeError):
        pytest.skip("this JAX has no jax._src.interpreters.mlir._platform_specific_lowerings")
    import importlib

    for name in xla_cpu.THREEFRY_MODULES:
        try:
            module = importlib.import_module(name)
            primitive, unrolled = module.threefry2x32_p, module._threefry2x32_lowering_rule
        except (ImportError, AttributeError):
            continue
        assert table[primitive].rule is unrolled
        return
    pytest.fail("no Threefry lowering rule found in " + ", ".join(xla_cpu.THREEFRY_MODULES))
