"""`envs.registry.Registry`: every registry instance reads and fails the same way."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from envs.registry import Registry, UnknownName


def _envs():
    import envs

    return envs.ENVS


def _variants():
    from envs.variants import VARIANTS

    return VARIANTS


def _drifts():
    from envs.drift import DRIFTS

    return DRIFTS


def _executors():
    from jfedrl.plugins import EXECUTORS

    return EXECUTORS


def _commands():
    from jfedrl.plugins import COMMANDS

    return COMMANDS


def _algorithms():
    from jfedrl.algorithms import ALGORITHMS

    return ALGORITHMS


def _strategies():
    from jfedrl.strategies import STRATEGIES

    return STRATEGIES


def _personal():
    from jfedrl.personal import PERSONAL

    return PERSONAL


def _attacks():
    from jfedrl.attacks import ATTACKS

    return ATTACKS


def _fresh():
    fresh = Registry("widget", "widgets.name")
    fresh.register("alpha", object())
    return fresh


INSTANCES = {
    "envs": (_envs, "environment", "env.name"),
    "variants": (_variants, "variant", "env.variant"),
    "drifts": (_drifts, "drift", "env.drift"),
    "executors": (_executors, "executor", "offload.executor"),
    "commands": (_commands, "command", "command"),
    "algorithms": (_algorithms, "algorithm", "algo.name"),
    "strategies": (_strategies, "strategy", "strategy.name"),
    "personal": (_personal, "personalization method", "personal.name"),
    "attacks": (_attacks, "attack", "attack.name"),
    "fresh": (_fresh, "widget", "widgets.name"),
}


@pytest.fixture(params=list(INSTANCES))
def registry(request, monkeypatch):
    """The registry with a probe entry added, restored after the test."""
    make, kind, field = INSTANCES[request.param]
    reg = make()
    assert (reg.kind, reg.field) == (kind, field)
    reg.names()  # loads its modules and entry points before the copy below
    monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    monkeypatch.setattr(reg, "_hints", dict(reg._hints))
    reg.register("probe-entry", "the probe", hints={"probe-elsewhere": "use probe-entry"})
    return reg


def test_register_then_get_returns_the_entry(registry):
    entry = object()
    assert registry.register("zz-new", entry) is entry
    assert registry.get("zz-new") is entry
    assert "zz-new" in registry and "zz-missing" not in registry
    assert registry.get("probe-entry") == "the probe"


def test_names_are_sorted_and_agree_with_items_iter_len(registry):
    names = registry.names()
    assert list(names) == sorted(names) and len(names) == len(set(names))
    assert "probe-entry" in names
    assert tuple(registry) == names and len(registry) == len(names)
    assert [name for name, _ in registry.items()] == list(names)
    assert all(registry.get(name) is entry for name, entry in registry.items())


def test_a_duplicate_name_is_refused_naming_kind_and_name(registry):
    before = registry.get("probe-entry")
    with pytest.raises(ValueError, match=rf"^{registry.kind} 'probe-entry' is already registered"):
        registry.register("probe-entry", object())
    assert registry.get("probe-entry") is before  # untouched


def test_an_unknown_name_lists_the_allowed_and_suggests_the_nearest(registry):
    with pytest.raises(UnknownName) as error:
        registry.get("probe-entr")
    allowed = ", ".join(sorted(registry.names()))
    assert str(error.value) == (
        f"{registry.field}: 'probe-entr' is not allowed; allowed: {allowed}."
        " Did you mean 'probe-entry'?"
    )


def test_a_hinted_name_that_is_no_entry_says_where_it_lives(registry):
    for asked in ("probe-elsewhere", "Probe_Elsewhere"):
        with pytest.raises(UnknownName) as error:
            registry.get(asked)
        assert str(error.value).endswith(". use probe-entry."), str(error.value)
        assert "Did you mean" not in str(error.value)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("probe-elsewhere", object())  # a hinted name is not free


def test_unknown_name_is_a_value_error_with_field_value_allowed(registry):
    with pytest.raises(ValueError) as error:
        registry.get("nothing-like-it")
    assert isinstance(error.value, UnknownName)
    assert error.value.field == registry.field
    assert error.value.value == "nothing-like-it"
    assert error.value.allowed == registry.names()
    assert "Did you mean" not in str(error.value)


class _Point:
    """A stand-in for `importlib.metadata.EntryPoint` (its `load` is what matters)."""

    def __init__(self, name: str, value: str):
        self.name, self.value = name, value
        self.module = value.partition(":")[0]

    def load(self):
        return metadata.EntryPoint(self.name, self.value, "g").load()


def test_entry_points_load_once_on_first_use_and_absent_packages_are_skipped(monkeypatch):
    calls = []

    def entry_points(group):
        calls.append(group)
        return [_Point("tuple", "builtins:tuple"), _Point("gone", "no_such_pkg_jfedrl:X")]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    reg = Registry("thing", "things.name", "jfedrl.test-things")
    reg.register("list", list)
    assert calls == []  # nothing loaded by building or registering
    assert reg.names() == ("list", "tuple") and reg.get("tuple") is tuple
    assert "gone" not in reg and calls == ["jfedrl.test-things"]


def test_an_entry_point_of_the_wrong_type_is_refused(monkeypatch):
    monkeypatch.setattr(metadata, "entry_points", lambda group: [_Point("x", "builtins:tuple")])
    reg = Registry("thing", "things.name", "g", entry_type=int)
    with pytest.raises(TypeError, match=r"entry point g:x \(builtins:tuple\) must name a int"):
        reg.names()


def test_the_builtin_hints_live_with_their_entries():
    from jfedrl import algorithms, strategies
    from jfedrl.schema.checks import not_allowed

    with pytest.raises(UnknownName) as error:
        algorithms.get("DDPG")
    assert str(error.value) == (
        f"algo.name: 'DDPG' is not allowed; allowed: {', '.join(algorithms.names())}. "
        "DDPG is a TD3 switch: --algo td3 --td3.ddpg true."
    )
    with pytest.raises(UnknownName, match="--evolutionary.algorithm pso"):
        strategies.get("pso")
    assert not_allowed("a.b", "mena", ["mean", "krum"]).endswith(" Did you mean 'mean'?")


def test_a_new_variant_is_one_registration(monkeypatch):
    import jax
    import numpy as np

    import envs
    from envs import variants

    monkeypatch.setattr(variants.VARIANTS, "_entries", dict(variants.VARIANTS._entries))
    variants.register_variant(
        "top", lambda key, t, num: jax.numpy.full((num,), t.random[1]), "the `random` top"
    )
    assert "top" in envs.spec("CartPole-v1").variants
    params = envs.client_params("CartPole-v1", jax.random.PRNGKey(0), 3, variant="top")
    top = envs.spec("CartPole-v1").tunable("length").random[1]
    np.testing.assert_allclose(np.asarray(params.length), [top] * 3, rtol=1e-6)


def test_a_new_drift_is_one_registration(monkeypatch):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import envs
    from envs import drift

    monkeypatch.setattr(drift.DRIFTS, "_entries", dict(drift.DRIFTS._entries))
    drift.register_drift("hold", lambda key, t, period, m, num: jnp.full((num,), m), "s = m")
    base = envs.batch_params(envs.make("CartPole-v1")[1], 2)
    moved = envs.make_drift("CartPole-v1", "hold", 3, 0.5, ("length",))(
        jax.random.PRNGKey(0), base, jnp.asarray(1)
    )
    np.testing.assert_allclose(np.asarray(moved.length), np.asarray(base.length) * 1.5, rtol=1e-6)


def test_the_registries_import_without_jax():
    probe = (
        "import sys, envs, envs.registry, jfedrl.plugins, jfedrl.schema.checks, jfedrl.personal; "
        "jfedrl.plugins.executors(); print(sorted({'jax', 'gymnax'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
