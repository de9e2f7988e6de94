"""Personalization methods (`jfedrl.personal`): FedPer, Ditto, fine-tuning, IFCA.

Exact checks against hand computations where the maths allows (FedPer's
aggregate, IFCA's choice and masked means on a toy bandit), equivalences
otherwise (Ditto's global model trains as FedAvg's; lambda = 0 never reads the
global after the start; fine-tuning with 0 updates is the global), resume, and
the one-line errors.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jfedrl import personal
from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.personal import ifca
from jfedrl.personal.ifca import ifca_algorithm, ifca_strategy
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.run import runner
from jfedrl.schema.checks import ConfigError
from jfedrl.strategies.averaging import fedavg
from jfedrl.strategies.base import ClientInfo
from jfedrl.validation import validate
from tests.helpers import equal_trees, tiny_config, with_run_dir

KEY = jax.random.PRNGKey(0)


#: The smallest PPO round that still trains (compiles fast on shared CPU cores).
SMALL = dict(
    federation__rounds=2,
    federation__local_updates=1,
    algo__ppo__num_steps=8,
    algo__ppo__num_minibatches=1,
    algo__ppo__update_epochs=2,
    algo__ppo__hidden_sizes=[8, 8],
    env__max_episode_steps=20,
    log__rounds_per_block=1,
    log__eval_episodes=1,
)


def config_for(name: str, **overrides):
    values = dict(SMALL, personal__name=name)
    values.update(overrides)
    return tiny_config(**values)


def leaves_where(params, pattern: str):
    """`{path: leaf}` of the leaves whose path contains `pattern`."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = {}
    for path, leaf in flat:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if pattern in name:
            out[name] = np.asarray(leaf)
    return out


# ---------------------------------------------------------------- FedPer


@pytest.fixture(scope="module")
def fedper_round():
    """One jitted FedPer round, and the second round's broadcast."""
    sim = make_simulator(config_for("fedper"))
    after, _ = sim.run_block(sim.init(KEY), 1)
    return sim, after, jax.jit(sim.begin_round)(after)


def test_fedper_aggregates_the_body_and_keeps_the_heads(fedper_round):
    sim, after, second = fedper_round
    trained = after.clients  # every client trained and was accepted
    own = jax.vmap(sim.algorithm.get_params)(trained)
    # Equal environment steps: FedAvg's weights are 1/3 each (a float32 weighted sum).
    weights = np.full((3,), 1 / 3, np.float32)
    for name, stack in leaves_where(own, "").items():
        mean = np.tensordot(weights, stack.astype(np.float32), axes=1)
        got = leaves_where(after.global_params, name)[name]
        # Body: FedAvg's mean; heads (Dense_2): the participants' mean, kept only by the server.
        np.testing.assert_allclose(got, mean, rtol=1e-6, atol=1e-7, err_msg=name)
    # Round 2: the body is broadcast, each client keeps its own head (they differ).
    start = jax.vmap(sim.algorithm.get_params)(second.clients)
    for name, stack in leaves_where(start, "").items():
        if "Dense_2" in name:
            np.testing.assert_array_equal(stack, leaves_where(own, name)[name], err_msg=name)
            assert not np.array_equal(stack[0], stack[1]), name
        else:
            want = leaves_where(after.global_params, name)[name]
            np.testing.assert_array_equal(stack, np.broadcast_to(want, stack.shape), err_msg=name)
    # The personalized policy: the global body with the client's own head.
    mine = personal.personal_params(sim, after)
    for name, stack in leaves_where(mine, "").items():
        want = leaves_where(own if "Dense_2" in name else after.global_params, name)[name]
        np.testing.assert_array_equal(stack, np.broadcast_to(want, stack.shape), err_msg=name)
    assert after.round == 1


@pytest.mark.slow
def test_fedper_heads_never_reach_the_rule():
    """A robust rule (coordinate median) sees only the body: the heads' global is the mean."""
    sim = make_simulator(config_for("fedper", strategy__name="median"))
    after, _ = sim.run_block(sim.init(KEY), 1)
    own = jax.vmap(sim.algorithm.get_params)(after.clients)
    for name, stack in leaves_where(own, "").items():
        got = leaves_where(after.global_params, name)[name]
        if "Dense_2" in name:
            np.testing.assert_allclose(got, stack.mean(axis=0), rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_allclose(got, np.median(stack, axis=0), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- Ditto


def run_rounds(config, rounds=2):
    sim = make_simulator(config)
    state = sim.init(KEY)
    state, _ = sim.run_block(state, rounds)
    return sim, state


@pytest.fixture(scope="module")
def ditto_zero():
    return run_rounds(config_for("ditto", personal__ditto__lam=0.0))


def test_ditto_global_trains_as_fedavg_and_the_personal_model_apart(ditto_zero):
    sim, ditto = ditto_zero
    _, plain = run_rounds(config_for("none"))
    pairs = zip(
        jax.tree.leaves(ditto.global_params), jax.tree.leaves(plain.global_params), strict=True
    )
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert bool(np.all(np.asarray(ditto.clients.started)))
    mine = sim.personal_params(ditto)
    assert not equal_trees(mine, jax.vmap(sim.algorithm.get_params)(ditto.clients))


@pytest.mark.slow
def test_ditto_lambda_zero_is_pure_local_training(ditto_zero):
    """With lambda = 0 the personal model reads the global only at its start: another
    server rule (another global trajectory) leaves it exactly as it is."""
    sim, state = ditto_zero
    _, other = run_rounds(config_for("ditto", personal__ditto__lam=0.0, strategy__name="fedavgm"))
    assert not equal_trees(state.global_params, other.global_params)
    assert equal_trees(state.clients.personal, other.clients.personal)


@pytest.mark.slow
def test_ditto_huge_lambda_keeps_the_personal_model_at_the_global():
    def distance(lam):
        # Four local updates of two epochs: eight Adam steps in the round.
        config = config_for("ditto", personal__ditto__lam=lam, federation__local_updates=4)
        sim, state = run_rounds(config, rounds=1)
        start = sim.init(KEY).global_params  # the round's broadcast
        mine = sim.personal_params(state)
        return max(
            float(np.max(np.abs(np.asarray(v) - np.asarray(w)[None])))
            for v, w in zip(jax.tree.leaves(mine), jax.tree.leaves(start), strict=True)
        )

    free, pinned = distance(0.0), distance(1e6)
    # Adam moves each coordinate by about the learning rate per step: pinned, it oscillates
    # within a step or two of the global; free, it walks away for every step of the round.
    lr = config_for("ditto").algo.ppo.learning_rate
    assert pinned <= 2.5 * lr < free, (pinned, free)


@pytest.mark.slow
def test_ditto_resume_equals_uninterrupted_run(tmp_path):
    config = config_for("ditto")
    full = runner.train(with_run_dir(config, tmp_path / "full"), quiet=True)
    first = runner.train(with_run_dir(config, tmp_path / "resumed"), quiet=True, stop_after_round=1)
    assert first.interrupted
    resumed = runner.train(runner.resume_config(tmp_path / "resumed"), resume=True, quiet=True)
    assert int(resumed.state.round) == 2
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- fine-tuning


def test_finetune_zero_updates_is_the_global_and_more_moves_it():
    sim = make_simulator(config_for("finetune", personal__finetune__updates=0))
    state = sim.init(KEY)
    mine = sim.personal_params(state, jax.random.PRNGKey(3))
    for v, w in zip(jax.tree.leaves(mine), jax.tree.leaves(state.global_params), strict=True):
        np.testing.assert_array_equal(np.asarray(v), np.broadcast_to(np.asarray(w), v.shape))
    tuned_config = dataclasses.replace(
        sim.config,
        personal=dataclasses.replace(
            sim.config.personal,
            finetune=dataclasses.replace(sim.config.personal.finetune, updates=1),
        ),
    )
    tuned = make_simulator(tuned_config).personal_params(state, jax.random.PRNGKey(3))
    assert not equal_trees(tuned, mine)


# ---------------------------------------------------------------- IFCA


class Bandit:
    """A one-step bandit: reward 1 for the action equal to the client's `target`."""

    @struct.dataclass
    class Params:
        target: jax.Array = 0
        max_steps_in_episode: int = 1

    def reset(self, key, params):
        return jnp.zeros((1,)), jnp.zeros(())

    def step(self, key, state, action, params):
        reward = (action == params.target).astype(jnp.float32)
        return jnp.zeros((1,)), state, reward, jnp.asarray(True), jnp.asarray(False), {}


def toy_algorithm() -> Algorithm:
    """params {"w"}: action 1 iff w > 0; a local update adds the client's target + 1 to w."""

    @struct.dataclass
    class State:
        params: dict

    def local_update(key, state, env_params, reference):
        w = state.params["w"] + env_params.target.astype(jnp.float32) + 1.0
        return State({"w": w}), {"train_return": jnp.zeros(())}

    return Algorithm(
        init=lambda key, env_params: State({"w": jax.random.normal(key, ())}),
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=lambda state, params: State(params),
        act=lambda params, obs: (params["w"] > 0).astype(jnp.int32),
        env_steps_per_update=1,
    )


def test_ifca_picks_the_right_cluster_and_averages_within_it():
    algorithm = ifca_algorithm(toy_algorithm(), k=2, env=Bandit(), episodes=1, max_steps=1)
    targets = jnp.asarray([0, 1, 1, 0, 1])
    env_params = Bandit.Params(target=targets, max_steps_in_episode=jnp.ones(5, jnp.int32))
    clients = jax.vmap(algorithm.init)(jax.random.split(KEY, 5), env_params)
    models = {"w": jnp.asarray([-1.0, 2.0])}  # model 0 plays action 0, model 1 action 1
    broadcast = {"models": models, "choice": jnp.zeros(2)}
    clients = jax.vmap(algorithm.set_params, in_axes=(0, None))(clients, broadcast)
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    trained, metrics = local_training(algorithm, 1, keys, clients, env_params, Reference(broadcast))
    np.testing.assert_array_equal(np.asarray(trained.cluster), np.asarray(targets))
    np.testing.assert_array_equal(np.asarray(metrics["ifca/switched"][0]), np.zeros(5))
    params = jax.vmap(algorithm.get_params)(trained)
    strategy = ifca_strategy(fedavg(), 2)
    mask = jnp.asarray([True, True, True, True, False])  # client 4 rejected
    info = ClientInfo(jnp.ones(5), jnp.zeros(5), mask)
    new, _, strategy_metrics = strategy.aggregate(
        strategy.init(broadcast), broadcast, params, info, KEY
    )
    # Model 0: clients 0 and 3 (target 0: w + 1); model 1: clients 1 and 2 (w + 2).
    np.testing.assert_allclose(np.asarray(new["models"]["w"]), [0.0, 4.0])
    np.testing.assert_allclose(np.asarray(new["choice"]), [0.5, 0.5])
    assert int(strategy_metrics["ifca/cluster_size_0"]) == 2
    assert int(strategy_metrics["ifca/cluster_size_1"]) == 2
    # A model nobody chose keeps its params.
    info = ClientInfo(jnp.ones(5), jnp.zeros(5), targets == 0)
    new, _, _ = strategy.aggregate(strategy.init(broadcast), broadcast, params, info, KEY)
    np.testing.assert_allclose(np.asarray(new["models"]["w"]), [0.0, 2.0])


@pytest.mark.slow
def test_ifca_runs_in_the_round():
    sim = make_simulator(config_for("ifca", personal__ifca__k=2))
    state, metrics = sim.run_block(sim.init(KEY), 2)
    sizes = metrics["strategy/ifca/cluster_size_0"] + metrics["strategy/ifca/cluster_size_1"]
    np.testing.assert_array_equal(np.asarray(sizes), [3, 3])
    assert metrics["ifca/switched"].shape == (2,)
    assert set(np.asarray(state.clients.cluster).tolist()) <= {0, 1}
    chosen = ifca.assignments(state)
    np.testing.assert_array_equal(np.asarray(chosen), np.asarray(state.clients.cluster))
    mine = sim.personal_params(state)
    np.testing.assert_array_equal(np.asarray(mine["choice"]).argmax(axis=1), np.asarray(chosen))
    returns = sim.evaluate(state, KEY)
    assert returns.shape == (3, 1) and bool(jnp.all(jnp.isfinite(returns)))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"personal__name": "fedpr"}, "personal.name"),
        ({"personal__name": "ifca", "personal__ifca__k": 4}, "personal.ifca.k"),
        ({"personal__name": "ifca", "federation__staleness": 1}, "federation.staleness"),
        ({"personal__name": "ifca", "strategy__clip_update_norm": 1.0}, "clip_update_norm"),
        ({"personal__name": "ditto", "personal__ditto__lam": -1.0}, "personal.ditto.lam"),
        ({"personal__name": "finetune", "personal__finetune__updates": -1}, "finetune.updates"),
        ({"personal__name": "fedper", "personal__fedper__local": "("}, "personal.fedper.local"),
        ({"personal__name": "fedper", "strategy__clip_update_norm": 1.0}, "clip_update_norm"),
    ],
)
def test_bad_personalization_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(tiny_config(**overrides))


@pytest.mark.parametrize("pattern, what", [("nothing_here", "no params"), (".", "every")])
def test_fedper_pattern_must_split_the_params(pattern, what):
    config = tiny_config(personal__name="fedper", personal__fedper__local=pattern)
    with pytest.raises(ConfigError, match=f"personal.fedper.local: .*{what}"):
        make_simulator(config)


# ---------------------------------------------------------------- offload


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fedper", "ditto", "ifca"])
def test_offloaded_personalization_equals_inprocess(tmp_path, name):
    """The local executor's workers run the same local training: the same run, bit for bit."""
    from jfedrl.run.runner import train
    from tests.test_offload import TIMING, assert_same_run, base_config, local_config

    values = {"personal__name": name}
    want = train(with_run_dir(base_config(**values), tmp_path / "inprocess"), quiet=True)
    got = train(local_config(tmp_path / "local", **values), quiet=True)
    if name != "ifca":
        assert_same_run(got, want)
        return
    # IFCA: the state is bit-identical; a metric's float mean (entropy) can differ by an ulp,
    # its reduction fusing differently beside the choice's evaluation episodes.
    for a, b in zip(jax.tree.leaves(got.state), jax.tree.leaves(want.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(got.records) == len(want.records)
    for record, expected in zip(got.records, want.records, strict=True):
        for key, value in expected.items():
            if key in TIMING:
                continue
            np.testing.assert_allclose(
                np.asarray(record[key], float), np.asarray(value, float), rtol=1e-6, err_msg=key
            )


def test_the_cli_exits_2_naming_the_field_before_writing(tmp_path, capsys):
    from jfedrl.cli import main

    run_dir = tmp_path / "run"
    argv = ["train", "--personal", "ifca", "--ifca.k", "9", "--clients", "3"]
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "personal.ifca.k" in err and "num_clients=3" in err
    assert not run_dir.exists()
