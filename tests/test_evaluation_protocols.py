"""Held-out clients, the evaluation protocols (global / personal / held-out / gap), the
clustered variants and the `local_only` baseline (docs/personalization.md)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from jfedrl import validation
from jfedrl.config import holdout_clients, participants_per_round, training_clients
from jfedrl.round import evaluation
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from tests.helpers import equal_trees, tiny_config, with_run_dir

# ---------------------------------------------------------------- config and validation


def test_holdout_counts_and_participants():
    fed = tiny_config(federation__num_clients=10, federation__holdout=3).federation
    assert (holdout_clients(fed), training_clients(fed)) == (3, 7)
    fed = tiny_config(
        federation__num_clients=10, federation__holdout_fraction=0.25, federation__participation=0.5
    ).federation
    assert (holdout_clients(fed), training_clients(fed)) == (2, 8)
    assert participants_per_round(fed) == 4  # half of the 8 training clients
    fed = tiny_config(federation__num_clients=10, federation__holdout_fraction=0.01).federation
    assert holdout_clients(fed) == 1  # a positive fraction holds out at least one


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"federation.holdout": 3}, r"^federation\.holdout: .*at least one must train"),
        ({"federation.holdout": -1}, r"^federation\.holdout: must be >= 0"),
        ({"federation.holdout_fraction": 1.0}, r"^federation\.holdout_fraction: must be in"),
        (
            {"federation.holdout": 1, "federation.holdout_fraction": 0.5},
            r"^federation\.holdout_fraction: set together with federation\.holdout",
        ),
        (
            {"federation.holdout": 1, "federation.participation": 3},
            r"^federation\.participation: .*exceed the 2 training clients.*federation\.holdout",
        ),
        ({"log.eval_personal": "yes"}, r"^log\.eval_personal: "),
    ],
)
def test_bad_holdout_is_one_line_naming_the_field(fields, match):
    config = tiny_config(**{k.replace(".", "__"): v for k, v in fields.items()})
    with pytest.raises(ConfigError, match=match) as error:
        validation.validate(config)
    assert "\n" not in str(error.value)


def test_a_holdout_that_breaks_krum_names_both_fields():
    fields = {"strategy__name": "krum", "strategy__krum__f": 1, "federation__num_clients": 6}
    validation.validate(tiny_config(**fields))  # n = 6 > 2f + 2 = 4
    with pytest.raises(ConfigError) as error:
        validation.validate(tiny_config(federation__holdout=2, **fields))  # n = 4
    message = str(error.value)
    assert message.startswith("strategy.krum.f: ") and "federation.holdout" in message
    assert "\n" not in message


def test_cli_exits_2_on_a_bad_holdout(tmp_path, monkeypatch, capsys):
    from jfedrl import cli

    monkeypatch.chdir(tmp_path)
    flags = ["--clients", "4", "--federation.holdout", "2", "--strategy", "krum"]
    code = cli.main(["train", "--no-progress", *flags, "--strategy.krum.f", "1"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert error.startswith("jfedrl: error: strategy.krum.f:") and "federation.holdout" in error
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the protocols' maths


def test_protocol_views_match_numpy():
    rng = np.random.default_rng(0)
    glob = rng.uniform(0, 100, (7, 3)).astype(np.float32)
    pers = rng.uniform(0, 100, (7, 3)).astype(np.float32)
    views = jax.device_get(evaluation.protocol_views(glob, pers, 5, True))
    train, held = glob[:5], glob[5:]
    per_client, mine = train.mean(1), pers[:5].mean(1)
    close = dict(rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(views["eval_return"], train.mean(), **close)
    np.testing.assert_allclose(views["eval/global/mean"], train.mean(), **close)
    np.testing.assert_allclose(views["eval/global/worst"], per_client.min(), **close)
    np.testing.assert_allclose(views["eval/global/p10"], np.percentile(per_client, 10), **close)
    np.testing.assert_allclose(views["eval_return_min_client"], per_client.min(), **close)
    np.testing.assert_allclose(views["eval/personal/mean"], pers[:5].mean(), **close)
    np.testing.assert_allclose(views["eval/personal/p10"], np.percentile(mine, 10), **close)
    np.testing.assert_allclose(views["eval/gap"], pers[:5].mean() - train.mean(), **close)
    np.testing.assert_allclose(views["eval/gap/improved"], np.mean(mine > per_client), **close)
    np.testing.assert_allclose(views["eval/holdout/mean"], held.mean(), **close)
    np.testing.assert_allclose(views["eval/holdout/worst"], held.mean(1).min(), **close)
    np.testing.assert_allclose(views["eval/holdout/personal/mean"], pers[5:].mean(), **close)
    # Without held-out clients or the personalized pass, their keys are absent.
    plain = evaluation.protocol_views(glob, None, 7, False)
    assert not any(k.startswith(("eval/holdout", "eval/personal", "eval/gap")) for k in plain)
    np.testing.assert_allclose(plain["eval_return"], glob.mean(), **close)


def test_eval_personal_auto_follows_the_method():
    assert not evaluation.eval_personal(tiny_config())
    assert evaluation.eval_personal(tiny_config(strategy__name="local_only"))
    assert evaluation.eval_personal(tiny_config(log__eval_personal="on"))
    assert not evaluation.eval_personal(
        tiny_config(strategy__name="local_only", log__eval_personal="off")
    )


# ---------------------------------------------------------------- the clustered variants


@pytest.mark.parametrize("name", ["CartPole-v1", "Acrobot-v1"])
@pytest.mark.parametrize(
    "variant, groups", [("clustered", 2), ("clustered3", 3), ("clustered4", 4)]
)
def test_clustered_groups_are_what_they_claim(name, variant, groups):
    num = 9
    params = envs.client_params(name, jax.random.PRNGKey(0), num, variant)
    claimed = envs.variants.variant_groups(variant, num)
    np.testing.assert_array_equal(claimed, np.arange(num) % groups)
    table = envs.param_table(name, params)
    rows = np.stack([table[t] for t in envs.spec(name).tunable_names], axis=1)
    for g in range(groups):
        members = rows[claimed == g]
        assert np.all(members == members[0]), "a group's clients share their dynamics"
    distinct = {tuple(rows[claimed == g][0]) for g in range(groups)}
    assert len(distinct) == groups, "every group has its own dynamics"
    # Far apart: every non-cluster param differs between groups by >= 1/groups of its span.
    for t in envs.spec(name).tunables:
        values = np.unique(table[t.name])
        if not t.clusters:
            intervals = t.extreme or (t.random,)
            span = max(h for _, h in intervals) - min(lo for lo, _ in intervals)
            assert np.min(np.diff(values)) >= span / groups * 0.999
    # A draw does not depend on the key: the groups are fixed by the client index.
    again = envs.client_params(name, jax.random.PRNGKey(7), num, variant)
    assert equal_trees(params, again)


def test_clustered_cartpole_mirrors_the_actions_of_odd_groups():
    """Odd groups push with -force_mag: action a there is action 1 - a of a normal cart."""
    env, default = envs.make("CartPole-v1")
    params = envs.client_params("CartPole-v1", jax.random.PRNGKey(0), 2, "clustered")
    force = np.asarray(params.force_mag)
    assert force[0] > 0 and force[1] == -force[0]
    mirrored = jax.tree.map(lambda x: x[1], params)
    normal = mirrored.replace(force_mag=-mirrored.force_mag)
    key = jax.random.PRNGKey(1)
    _, state = env.reset(key, normal)
    for action in (0, 1):
        a = env.step(key, state, action, mirrored)[0]
        b = env.step(key, state, 1 - action, normal)[0]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_env_params_extras_record_groups_and_holdout():
    config = tiny_config(federation__num_clients=5, federation__holdout=2, env__variant="clustered")
    extras = evaluation.env_params_extras(config, 5)
    assert extras == {"client_group": [0, 1, 0, 1, 0], "holdout": [3, 4]}
    assert evaluation.env_params_extras(tiny_config(), 3) == {}


# ---------------------------------------------------------------- the round


@pytest.fixture(scope="module")
def held_out_sim():
    config = tiny_config(
        federation__num_clients=5, federation__holdout=2, federation__participation=2
    )
    sim = make_simulator(config)
    return sim, sim.init(jax.random.PRNGKey(0))


def test_held_out_clients_are_never_sampled(held_out_sim):
    sim, state = held_out_sim
    assert (sim.training_clients, sim.num_participants) == (3, 2)
    begin = jax.jit(lambda s: sim.begin_round(s).ids)
    seen = set()
    for r in range(12):
        seen.update(np.asarray(begin(state.replace(round=jnp.asarray(r, jnp.int32)))).tolist())
    assert seen == {0, 1, 2}, "the training clients are sampled, never the held-out ones"


def test_local_only_broadcasts_nothing():
    sim = make_simulator(tiny_config(strategy__name="local_only"))
    state = sim.init(jax.random.PRNGKey(0))
    # Give each client params of its own; the round must train from them, not the global.
    own = jax.tree.map(
        lambda x: x + jnp.arange(x.shape[0], dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)),
        jax.vmap(sim.algorithm.get_params)(state.clients),
    )
    state = state.replace(clients=jax.vmap(sim.algorithm.set_params)(state.clients, own))
    inputs = jax.jit(sim.begin_round)(state)
    assert equal_trees(jax.vmap(sim.algorithm.get_params)(inputs.clients), own)
    global_params, _, _ = sim.strategy.aggregate((), state.global_params, own, None, None)
    assert equal_trees(global_params, state.global_params)


@pytest.mark.slow
def test_a_run_logs_every_protocol_and_keeps_held_out_clients_untrained(tmp_path):
    from jfedrl.run.runner import train

    config = tiny_config(
        federation__num_clients=5,
        federation__holdout=2,
        federation__rounds=2,
        env__variant="clustered",
        log__eval_personal="on",
    )
    result = train(with_run_dir(config, tmp_path), quiet=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    for key in ("eval_return", "eval/global/p10", "eval/personal/worst", "eval/gap"):
        assert key in last
    assert "eval/holdout/mean" in last and "eval/holdout/personal/mean" not in last
    assert last["eval_return"] == pytest.approx(last["eval/global/mean"])
    saved = json.loads((tmp_path / "env_params.json").read_text())
    assert saved["client_group"] == [0, 1, 0, 1, 0] and saved["holdout"] == [3, 4]
    sim = make_simulator(config)
    fresh = sim.init(jax.random.PRNGKey(config.seed))
    held = slice(3, 5)
    assert equal_trees(
        jax.tree.map(lambda x: x[held], result.state.clients),
        jax.tree.map(lambda x: x[held], fresh.clients),
    ), "held-out clients never train"
    assert not equal_trees(
        jax.tree.map(lambda x: x[:3], result.state.clients),
        jax.tree.map(lambda x: x[:3], fresh.clients),
    )


# ---------------------------------------------------------------- compare


def test_compare_reports_the_protocols_of_the_runs_that_logged_them(tmp_path):
    from scipy import stats

    from jfedrl.experiments import compare
    from jfedrl.schema.convert import override, save_yaml

    holdout = {"fedavg": [10.0, 20.0, 30.0, 40.0, 90.0], "local_only": [1.0, 2.0, 3.0, 4.0, 5.0]}
    for strategy, finals in holdout.items():
        for seed, final in enumerate(finals):
            run_dir = tmp_path / "runs" / f"{strategy}-{seed}"
            run_dir.mkdir(parents=True)
            config = override(tiny_config(), {"strategy.name": strategy, "seed": seed})
            save_yaml(config, run_dir / "config.yaml")
            record = {"round": 1, "env_steps": 100, "wall_seconds": 1.0, "eval_return": 5.0}
            record.update({"eval/global/mean": 5.0, "eval/holdout/mean": final})
            if strategy == "local_only":
                record["eval/personal/mean"] = final + 1.0
            (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    groups = compare.group_by_setup(compare.find_runs([tmp_path / "runs"]))
    protocol = compare.protocol_stats(groups, reps=200, seed=0)
    fedavg, local = protocol["strategy.name=fedavg"], protocol["strategy.name=local_only"]
    assert fedavg["eval/holdout/mean"].value == pytest.approx(
        stats.trim_mean(holdout["fedavg"], 0.25)
    )
    assert "eval/personal/mean" not in fedavg and "eval/personal/mean" in local
    compare.compare([tmp_path / "runs"], tmp_path / "out", reps=200, plots=False)
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "eval/holdout/mean IQM [95% CI]" in table and "eval/personal/mean" in table
    rows = compare.compare(
        [tmp_path / "runs"], tmp_path / "out2", reps=200, plots=False, metric="eval/holdout/mean"
    )
    assert {r.setup: r.iqm.value for r in rows}["strategy.name=local_only"] == pytest.approx(3.0)
