"""Two federated rounds per algorithm (and a fedadam case and a vmapped sweep group) equal
the snapshot in tests/fixtures/snapshot-v0.npz: bit for bit on the jax version and CPU
that wrote it, else within float tolerance (scripts/snapshot.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "snapshot-v0.npz"


def _script():
    path = ROOT / "scripts" / "snapshot.py"
    spec = importlib.util.spec_from_file_location("_jfedrl_snapshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


def _assert_matches(cases):
    old = SCRIPT.load(FIXTURE)
    if cases is not None:
        old = {k: v for k, v in old.items() if k.split("/")[0] in ("meta", *cases)}
    new = SCRIPT.snapshot(cases)
    assert old.keys() == new.keys(), sorted(old.keys() ^ new.keys())
    exact, problems = SCRIPT.differences(old, new)
    if exact:
        how = "bit for bit (same jax version and CPU as the fixture)"
    else:
        how = (
            f"with allclose(rtol=1e-5, atol=1e-6) only: the fixture was made with jax "
            f"{old['meta/jax_version']} on {old['meta/cpu_key']}, this is jax "
            f"{new['meta/jax_version']} on {new['meta/cpu_key']}"
        )
    shown = "\n".join(problems[:40])
    assert not problems, f"{len(problems)} of {len(new)} arrays differ, compared {how}:\n{shown}"


def test_ppo_two_rounds_equal_the_snapshot():
    _assert_matches(("ppo",))


@pytest.mark.slow
def test_every_case_equals_the_snapshot():
    _assert_matches(None)


def test_a_changed_or_missing_leaf_is_reported():
    old = SCRIPT.load(FIXTURE)
    key = next(k for k in sorted(old) if k.startswith("ppo/state") and old[k].dtype.kind == "f")
    exact, problems = SCRIPT.differences(old, dict(old, **{key: old[key] + 1.0}))
    assert exact and problems == [f"{key}: not bit-identical"]
    missing = {k: v for k, v in old.items() if k != key}
    assert SCRIPT.differences(old, missing)[1] == [f"missing: {key}"]
    other = dict(old, **{"meta/jax_version": SCRIPT.np.asarray("0.0.0")})
    assert SCRIPT.differences(old, other) == (False, [])
