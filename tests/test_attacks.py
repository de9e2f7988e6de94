"""Byzantine clients and attacks (issue 22): the maths against NumPy, the Byzantine set,
the hooks in the round, the checks, offload equality and a small learning sanity check.

The simulator tests share a module-scoped tiny config (4 clients, one local update,
one round per block) and compile one round per attack they run.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jfedrl import attacks
from jfedrl.attacks import env as env_attacks
from jfedrl.attacks import update
from jfedrl.attacks.byzantine import byzantine_count, byzantine_mask, mask_for, record
from jfedrl.attacks.round import detection_metrics
from jfedrl.cli import main as cli_main
from jfedrl.config import Config
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override
from jfedrl.validation import validate
from tests.helpers import tiny_config

# ---------------------------------------------------------------- update attacks vs NumPy

K = 5
BYZANTINE = np.array([False, True, False, True, False])
HONEST = np.array([True, True, True, True, False])  # participant 4 did not return
BENIGN = HONEST & ~BYZANTINE  # participants 0 and 2


def _trees():
    rng = np.random.default_rng(0)
    global_params = {"a": rng.normal(size=3).astype(np.float32), "b": rng.normal(size=(2, 2))}
    global_params["b"] = global_params["b"].astype(np.float32)
    params = {
        "a": (global_params["a"] + rng.normal(size=(K, 3))).astype(np.float32),
        "b": (global_params["b"] + rng.normal(size=(K, 2, 2))).astype(np.float32),
    }
    return global_params, params


def _run(name, section=None, key=None):
    key = jax.random.PRNGKey(3) if key is None else key
    global_params, params = _trees()
    attack = attacks.get(name).builder()(section)
    sent, metrics = jax.jit(update.apply_update_attack, static_argnums=0)(
        attack,
        key,
        global_params,
        global_params,
        params,
        jnp.asarray(BYZANTINE),
        jnp.asarray(HONEST),
    )
    return global_params, params, jax.tree.map(np.asarray, sent), metrics


def _check(sent, params, expected_delta, global_params):
    """Byzantine rows are `global + expected_delta(leaf name, delta)`, the others untouched."""
    for name in params:
        delta = params[name] - global_params[name]
        want = np.where(
            BYZANTINE.reshape((-1,) + (1,) * (delta.ndim - 1)),
            global_params[name] + expected_delta(name, delta),
            params[name],
        )
        np.testing.assert_allclose(sent[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


class _Section:
    def __init__(self, **values):
        self.__dict__.update(values)


def test_sign_flip_scale_zero_free_rider_nan_by_hand():
    g, p, sent, _ = _run("sign_flip", _Section(scale=4.0))
    _check(sent, p, lambda n, d: -4.0 * d, g)
    g, p, sent, metrics = _run("scale", _Section(factor=0.0))
    # factor 0: the participants with a finite real update (4 of 5) boost by n = 4.
    assert float(metrics["scale_factor"]) == 4.0
    _check(sent, p, lambda n, d: 4.0 * d, g)
    g, p, sent, _ = _run("scale", _Section(factor=2.5))
    _check(sent, p, lambda n, d: 2.5 * d, g)
    for name in ("zero", "free_rider"):
        g, p, sent, _ = _run(name)
        _check(sent, p, lambda n, d: 0.0 * d, g)
    g, p, sent, _ = _run("nan")
    assert np.isnan(sent["a"][BYZANTINE]).all() and np.isfinite(sent["a"][~BYZANTINE]).all()


def test_alie_and_ipm_use_the_benign_updates_only():
    g, p, sent, metrics = _run("alie", _Section(z=0.0))
    n, f = 4, 2  # real finite participants, Byzantine among them
    s = np.floor(n / 2 + 1) - f
    z = norm.ppf((n - s) / n)
    np.testing.assert_allclose(float(metrics["alie_z"]), z, rtol=1e-5)

    def alie(name, d):
        benign = d[BENIGN]
        return benign.mean(0) + z * benign.std(0)  # population std over the benign

    _check(sent, p, alie, g)
    g, p, sent, metrics = _run("alie", _Section(z=1.5))
    assert float(metrics["alie_z"]) == 1.5
    _check(sent, p, lambda n, d: d[BENIGN].mean(0) + 1.5 * d[BENIGN].std(0), g)
    g, p, sent, _ = _run("ipm", _Section(eps=0.1))
    _check(sent, p, lambda n, d: -0.1 * d[BENIGN].mean(0), g)


def test_alie_z_is_the_papers_formula():
    # FedPG-BR's setting: n = 10, f = 3 -> s = 3, z = Phi^-1(0.7).
    for n, f in ((10, 3), (50, 12), (64, 13), (7, 1)):
        s = np.floor(n / 2 + 1) - f
        want = norm.ppf((n - s) / n)
        got = float(update.alie_z(jnp.asarray(n), jnp.asarray(f)))
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gaussian_and_random_noise_against_their_draws():
    key = jax.random.PRNGKey(7)
    g, p, sent, _ = _run("gaussian", _Section(std=0.5), key=key)
    names = sorted(p)  # jax.tree flattens dict keys in sorted order
    keys = jax.random.split(key, len(names))
    noise = {
        n: np.asarray(0.5 * jax.random.normal(k, p[n].shape))
        for n, k in zip(names, keys, strict=True)
    }
    _check(sent, p, lambda n, d: noise[n], g)

    g, p, sent, _ = _run("random_noise", _Section(scale=3.0), key=key)
    deltas = {n: p[n] - g[n] for n in names}
    flat = np.concatenate([deltas[n].reshape(K, -1) for n in names], axis=1)
    spread = flat.max(1) - flat.min(1)
    u = {
        n: np.asarray(jax.random.uniform(k, p[n].shape, minval=-1, maxval=1))
        for n, k in zip(names, keys, strict=True)
    }

    def noisy(n, d):
        return d + 3.0 * spread.reshape((-1,) + (1,) * (d.ndim - 1)) * u[n]

    _check(sent, p, noisy, g)


def test_every_registered_attack_has_a_kind_and_the_none_entry():
    assert attacks.get("none").kind == "none"
    kinds = {name: attacks.get(name).kind for name in attacks.names()}
    assert {n for n, k in kinds.items() if k == "update"} == {
        "sign_flip",
        "scale",
        "gaussian",
        "zero",
        "free_rider",
        "random_noise",
        "alie",
        "ipm",
        "nan",
    }
    assert {n for n, k in kinds.items() if k == "env"} == {
        "reward_flip",
        "reward_scale",
        "random_action",
        "obs_noise",
    }


# ---------------------------------------------------------------- the Byzantine set


def test_byzantine_set_is_a_function_of_the_run_key():
    key = jax.random.PRNGKey(5)
    a = np.asarray(byzantine_mask(key, 10, 3))
    assert a.sum() == 3
    np.testing.assert_array_equal(
        a, np.asarray(jax.jit(byzantine_mask, static_argnums=(1, 2))(key, 10, 3))
    )
    others = {tuple(np.asarray(byzantine_mask(jax.random.PRNGKey(s), 10, 3))) for s in range(8)}
    assert len(others) > 1  # seeds draw different sets
    ids = np.asarray(byzantine_mask(key, 10, 3, ids=(0, 7)))
    assert np.flatnonzero(ids).tolist() == [0, 7]
    assert byzantine_count(0.3, 10) == 3 and byzantine_count(0.25, 10) == 2
    assert byzantine_count(0.9, 10, (1, 2)) == 2


def test_byzantine_record_lists_the_drawn_ids():
    config = tiny_config(federation__num_clients=10, attack__name="sign_flip", attack__fraction=0.3)
    key = jax.random.PRNGKey(1)
    rec = record(config.attack, 10, key)
    want = np.flatnonzero(np.asarray(mask_for(config.attack, 10, key))).tolist()
    assert rec["clients"] == want and rec["count"] == 3 and rec["drawn"] is True
    assert rec["attack"] == "sign_flip" and rec["start_round"] == 0


def test_detection_metrics_by_hand():
    attacking = jnp.array([True, True, False, False, False, True])
    finite = jnp.array([True, True, True, True, True, False])  # the last was masked
    returned = jnp.ones(6, bool)
    selected = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    out = {k: float(v) for k, v in detection_metrics(attacking, finite, returned, selected).items()}
    assert out == {
        "byzantine/screened_out": 1.0,
        "byzantine/passed": 1.0,
        "byzantine/benign_dropped": 1.0,
        "byzantine/detection_rate": 0.5,
        "byzantine/false_positive_rate": pytest.approx(1 / 3),
    }
    none = detection_metrics(jnp.zeros(6, bool), finite, returned, selected)
    assert np.isnan(float(none["byzantine/detection_rate"]))
    assert set(detection_metrics(attacking, finite, returned, None)) == {"byzantine/screened_out"}


# ---------------------------------------------------------------- the environment wrapper


def test_env_attacks_poison_only_flagged_clients():
    import envs

    env, params = envs.make("CartPole-v1")
    key = jax.random.PRNGKey(0)
    obs, state = env.reset(key, params)
    cases = {
        "reward_flip": None,
        "reward_scale": _Section(factor=3.0),
        "obs_noise": _Section(std=0.5),
        "random_action": _Section(prob=1.0),
    }
    for name, section in cases.items():
        wrapped = env_attacks.AttackedEnv(env, attacks.get(name).builder()(section).kind)
        value = attacks.get(name).builder()(section).value
        clean = env.step(key, state, 1, params)
        for plain in (
            params,
            env_attacks.AttackParams(params, jnp.asarray(False), jnp.float32(value)),
        ):
            got = wrapped.step(key, state, 1, plain)
            for a, b in zip(jax.tree.leaves(got[:5]), jax.tree.leaves(clean[:5]), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        flagged = env_attacks.AttackParams(params, jnp.asarray(True), jnp.float32(value))
        got = wrapped.step(key, state, 1, flagged)
        if name == "reward_flip":
            assert float(got[2]) == -float(clean[2])
        elif name == "reward_scale":
            assert float(got[2]) == 3.0 * float(clean[2])
        elif name == "obs_noise":
            assert not np.allclose(got[0], clean[0])
            np.testing.assert_array_equal(np.asarray(got[1].x), np.asarray(clean[1].x))
            reset_obs, _ = wrapped.reset(key, flagged)
            assert not np.allclose(reset_obs, obs)
        else:  # the executed action is the wrapper's random draw
            _, draw = jax.random.split(jax.random.fold_in(key, env_attacks._ATTACK))
            action = int(jax.random.randint(draw, (), 0, 2))
            want = env.step(key, state, action, params)
            np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))


# ---------------------------------------------------------------- checks


def _attack(**values):
    return tiny_config(federation__num_clients=6, **{f"attack__{k}": v for k, v in values.items()})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"name": "sign_flip", "fraction": 1.0},
            r"^attack.fraction: must be in \[0, 1\), got 1.0$",
        ),
        ({"name": "sign_flip", "fraction": -0.1}, r"^attack.fraction: must be in \[0, 1\)"),
        (
            {"name": "sign_flip", "clients": (1, 6)},
            r"^attack.clients: must be client ids in \[0, num_clients=6\)",
        ),
        ({"name": "sign_flip", "clients": (1, 1)}, r"^attack.clients: must be unique client ids"),
        ({"name": "sign_flip", "start_round": -1}, r"^attack.start_round: must be >= 0"),
        ({"name": "signflip"}, r"^attack.name: .*sign_flip"),
        (
            {"name": "sign_flip", "fraction": 0.5, "sign_flip.scale": 0.0},
            r"^attack.sign_flip.scale: must be > 0",
        ),
        (
            {"name": "random_action", "fraction": 0.5, "random_action.prob": 1.5},
            r"^attack.random_action.prob: must be in \(0, 1\]",
        ),
    ],
)
def test_bad_attack_settings_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        validate(_attack(**values))


def test_a_rule_tolerating_fewer_attackers_is_warned_about_naming_both_fields(caplog, monkeypatch):
    from jfedrl.attacks import checks

    monkeypatch.setattr(checks, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="jfedrl.attacks.checks"):
        krum = {"strategy.name": "krum", "strategy.krum.f": 1}
        validate(override(_attack(name="sign_flip", fraction=0.34), krum))
    assert (
        "strategy.krum.f = 1 is below the Byzantine count: attack.fraction gives 2" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jfedrl.attacks.checks"):
        validate(override(_attack(name="ipm", clients=(0, 1)), {"strategy.name": "trimmed_mean"}))
    assert "strategy.trimmed_mean.beta = 0.1 trims 0 per side" in caplog.text
    assert "attack.clients gives 2 Byzantine clients" in caplog.text


def test_bad_attack_flag_exits_2_before_anything_is_written(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--attack", "sign_flip", "--attack.fraction", "1.5", "--run-dir", str(run_dir)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "jfedrl: error: attack.fraction: must be in [0, 1), got 1.5"
    assert not run_dir.exists()


def test_train_help_lists_the_attack_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--attack.name V, --attack V", "--attack.fraction", "--attack.clients"):
        assert flag in out
    assert "--attack.start-round" in out
    assert "--attack.sign-flip.scale V, --sign-flip.scale V" in out
    assert "--attack.alie.z V, --alie.z V" in out


# ---------------------------------------------------------------- in the round


def sim_config(**overrides):
    values = dict(
        federation__num_clients=4,
        federation__local_updates=1,
        algo__ppo__num_steps=8,
        algo__ppo__hidden_sizes=[8],
        log__rounds_per_block=1,
    )
    values.update(overrides)
    return tiny_config(**values)


def _round_jaxpr(config: Config) -> str:
    sim = make_simulator(config)
    state = jax.eval_shape(sim.init, jax.random.PRNGKey(0))
    return str(jax.make_jaxpr(sim.round_step)(state))


def test_attack_none_traces_exactly_the_round_without_an_attack():
    plain = _round_jaxpr(sim_config())
    none = sim_config(attack__name="none", attack__fraction=0.5, attack__clients=(1,))
    assert _round_jaxpr(none) == plain
    assert _round_jaxpr(sim_config(attack__name="zero", attack__clients=(1,))) != plain


@pytest.fixture(scope="module")
def honest():
    """Two one-round blocks of the honest federation (the reference of the attacked runs)."""
    return _two_rounds(sim_config())


def _two_rounds(config):
    sim = make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    first, m1 = sim.run_block(state, 1)
    first = jax.tree.map(np.asarray, first)
    second, m2 = sim.run_block(jax.tree.map(jnp.asarray, first), 1)
    metrics = [jax.tree.map(lambda x: np.asarray(x)[0], m) for m in (m1, m2)]
    return sim, [first, jax.tree.map(np.asarray, second)], metrics


def test_update_attack_starts_at_start_round_on_the_fixed_set(honest):
    _, (h1, h2), hm = honest
    sim, (a1, a2), am = _two_rounds(
        sim_config(attack__name="sign_flip", attack__clients=(1,), attack__start_round=1)
    )
    # Round 0: no attack yet, so the round is the honest one; round 1 attacks.
    assert [int(m["attack/active"]) for m in am] == [0, 1]
    assert [int(m["byzantine/count"]) for m in am] == [1, 1]
    for a, b in zip(
        jax.tree.leaves(a1.global_params), jax.tree.leaves(h1.global_params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Round 1 under FedAvg: the mean of 3 honest updates and -4 x the Byzantine's one.
    get = jax.vmap(sim.algorithm.get_params)
    honest_sent = get(h2.clients)  # in round 1 the honest run's client 1 is honest too
    g = h1.global_params
    want = jax.tree.map(
        lambda c, g: (
            g
            + (
                (c - g) * jnp.array([1.0, -4.0, 1.0, 1.0]).reshape((-1,) + (1,) * (c.ndim - 1))
            ).mean(0)
        ),
        honest_sent,
        g,
    )
    for a, b in zip(jax.tree.leaves(a2.global_params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert "strategy/selected" not in am[0] and "byzantine/passed" not in am[0]
    assert "byzantine/count" not in hm[0]


@pytest.mark.slow
def test_env_attack_changes_only_the_byzantine_clients_training(honest):
    _, (h1, _), _ = honest
    sim, (a1, _), am = _two_rounds(sim_config(attack__name="reward_flip", attack__clients=(2,)))
    get = jax.vmap(sim.algorithm.get_params)
    for a, b in zip(
        jax.tree.leaves(get(a1.clients)), jax.tree.leaves(get(h1.clients)), strict=True
    ):
        np.testing.assert_allclose(a[[0, 1, 3]], b[[0, 1, 3]], rtol=1e-5, atol=1e-6)
    diff = max(
        float(np.abs(a[2] - b[2]).max())
        for a, b in zip(
            jax.tree.leaves(get(a1.clients)), jax.tree.leaves(get(h1.clients)), strict=True
        )
    )
    assert diff > 1e-4
    # The run's base env params are the env's own (no attack flag in the state).
    assert type(a1.env_params) is type(h1.env_params)
    assert int(am[0]["byzantine/count"]) == 1


@pytest.mark.slow
def test_krum_reports_its_selection_and_the_detection_metrics():
    sim = make_simulator(
        sim_config(
            federation__num_clients=5,
            strategy__name="multi_krum",
            strategy__multi_krum__m=2,
            attack__name="gaussian",
            attack__gaussian__std=10.0,
            attack__clients=(0,),
        )
    )
    state, metrics = sim.run_block(sim.init(jax.random.PRNGKey(0)), 1)
    m = jax.tree.map(lambda x: np.asarray(x)[0], metrics)
    assert m["strategy/selected"].shape == (5,) and m["strategy/selected"].sum() == 2
    assert m["strategy/selected"][0] == 0  # the noisy update is far from every other
    assert int(m["byzantine/passed"]) == 0 and float(m["byzantine/detection_rate"]) == 1.0
    assert int(m["byzantine/benign_dropped"]) == 2
    assert float(m["byzantine/false_positive_rate"]) == 0.5


# ---------------------------------------------------------------- outputs and offload


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["sign_flip", "random_action"])
def test_an_offloaded_run_under_attack_equals_the_in_process_one(attack, tmp_path):
    import json

    from jfedrl.run.runner import train
    from tests.helpers import with_run_dir
    from tests.test_offload import TIMING

    if "local" not in __import__("jfedrl.plugins", fromlist=["x"]).executors():
        pytest.skip("the offload package is not installed")
    values = dict(
        federation__num_clients=6,
        federation__rounds=2,
        algo__ppo__num_steps=16,
        log__rounds_per_block=1,
        attack__name=attack,
        attack__clients=(1, 4),
    )
    want = train(with_run_dir(tiny_config(**values), tmp_path / "inprocess"), quiet=True)
    local = tiny_config(offload__executor="local", offload__shards=3, **values)
    got = train(with_run_dir(local, tmp_path / "local"), quiet=True)
    # The state is bit-identical. The in-process round fuses the metrics' means over the
    # clients with their training, so a metric may differ from the offloaded one (whose
    # `aggregate` reads the workers' results) in its last bit.
    for a, b in zip(jax.tree.leaves(got.state), jax.tree.leaves(want.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(got.records) == len(want.records)
    for row, expected in zip(got.records, want.records, strict=True):
        for name, value in expected.items():
            if name not in TIMING:
                np.testing.assert_allclose(
                    np.asarray(row[name], float), np.asarray(value, float), 1e-6, err_msg=name
                )
    assert all(r["byzantine/count"] == 2 for r in got.records)
    for run in ("inprocess", "local"):
        rec = json.loads((tmp_path / run / "byzantine.json").read_text())
        assert rec["clients"] == [1, 4] and rec["attack"] == attack


@pytest.mark.slow
def test_sign_flip_collapses_fedavg_while_the_median_holds():
    """FedPG-BR's setting, small: CartPole, 10 clients of which 3 Byzantine flip x4."""

    def final_eval(rule):
        config = tiny_config(
            federation__num_clients=10,
            federation__local_updates=1,
            algo__ppo__num_envs=4,
            algo__ppo__num_steps=64,
            algo__ppo__learning_rate=2.5e-3,
            algo__ppo__anneal_lr=False,
            strategy__name=rule,
            attack__name="sign_flip",
            attack__fraction=0.3,
        )
        sim = make_simulator(config)
        state, _ = sim.run_block(sim.init(jax.random.PRNGKey(0)), 16)
        return float(np.mean(sim.evaluate(state, jax.random.PRNGKey(1))))

    fedavg, median = final_eval("fedavg"), final_eval("median")
    assert median > 60.0, (fedavg, median)
    assert fedavg < 30.0, (fedavg, median)


@pytest.mark.parametrize("name", [n for n in attacks.names() if attacks.get(n).section is not None])
def test_attack_params_trace_through_the_round_but_not_the_evaluation(name):
    """A sweep may vmap an attack's parameter: one compiled program for every value."""
    from jfedrl.config import traceable
    from jfedrl.experiments import traced
    from jfedrl.round.simulator import Simulator
    from tests.test_traced import reaches_outputs

    config = sim_config(attack__name=name, attack__clients=(1,))
    simulator = make_simulator(config)
    fields = [p for p in traceable() if p.startswith(f"attack.{name}.")]
    assert fields
    values = {p: jnp.float32(traced.get_path(config, p)) for p in fields}
    state = jax.eval_shape(simulator.init, jax.random.PRNGKey(0))

    def round_step(values, state):
        return traced.simulator_with(simulator, values).round_step(state)

    jaxpr = jax.make_jaxpr(round_step)(values, state).jaxpr  # no Python branch on a tracer
    assert reaches_outputs(jaxpr, jaxpr.invars[: len(fields)])

    def evaluate(values, state):
        run = traced.simulator_with(simulator, values)
        return Simulator.evaluate.__wrapped__(run, state, jax.random.PRNGKey(1))

    jaxpr = jax.make_jaxpr(evaluate)(values, state).jaxpr
    assert not reaches_outputs(jaxpr, jaxpr.invars[: len(fields)])


def test_the_docs_attack_plugin_registers_a_section_and_flags(tmp_path):
    """The "Adding an attack" example of the docs, as a `--plugin` module."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "robustness.md").read_text()
    code = re.search(r"```python\n(.*?register\(AttackSpec\(\"flip_half\".*?)```", text, re.S)
    (tmp_path / "flip_half.py").write_text(code.group(1))
    run = [sys.executable, "-m", "jfedrl.cli", "train", "--plugin", "flip_half", "--help"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--attack.flip-half.scale V, --flip-half.scale V" in done.stdout
