"""Schedules with a horizon fixed at the run's start (issue 12 part 5).

Raising `--rounds` on `--resume` used to stretch the PPO/A2C learning-rate
anneal and the DQN epsilon decay. Prepare tiny runs whose horizon
`federation.schedule_rounds` is 2; execute them fresh, interrupted and resumed,
and extended; assert exact equality of params and metrics.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from jfedrl.algorithms import common
from jfedrl.cli import main as cli_main
from jfedrl.config import load_yaml
from jfedrl.round.simulator import make_simulator
from jfedrl.run import runner
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import replace_path
from jfedrl.validation import validate
from tests.helpers import equal_trees, tiny_config, with_run_dir

HORIZON = 2


def _maths(records):
    """Every metric that does not measure time."""
    return [
        {k: v for k, v in r.items() if "seconds" not in k and k != "steps_per_second"}
        for r in records
    ]


def _ppo(**overrides):
    # Two clients: FedAvg of two equal copies (0.5 x + 0.5 x) is exact.
    return tiny_config(federation__num_clients=2, algo__ppo__anneal_lr=True, **overrides)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A PPO run of HORIZON rounds: its horizon is fixed at HORIZON when it starts."""
    run_dir = tmp_path_factory.mktemp("short")
    return runner.train(with_run_dir(_ppo(federation__rounds=HORIZON), run_dir), quiet=True)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A fresh run of 2 * HORIZON rounds with the same explicit horizon."""
    run_dir = tmp_path_factory.mktemp("long")
    config = _ppo(federation__rounds=2 * HORIZON, federation__schedule_rounds=HORIZON)
    return runner.train(with_run_dir(config, run_dir), quiet=True)


def test_the_horizon_is_fixed_and_saved_at_the_start(short_run):
    saved = load_yaml(short_run.run_dir / runner.CONFIG_FILE)
    assert saved.federation.schedule_rounds == HORIZON


def _copy(run_dir, tmp_path):
    """A copy of a finished run folder, to extend without changing the module's run."""
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def test_extending_past_an_annealed_horizon_asks_for_a_choice(short_run, tmp_path, capsys):
    """Without --extend, the added rounds would train at learning rate 0, silently."""
    run_dir = _copy(short_run.run_dir, tmp_path)
    with pytest.raises(ConfigError, match="federation.rounds: 4 extends the run past round 2"):
        runner.resume_config(run_dir, {"federation.rounds": 2 * HORIZON})
    before = (run_dir / runner.CONFIG_FILE).read_text()
    argv = ["train", "--resume", str(run_dir), "--rounds", "4", "--no-progress", "--quiet"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jfedrl: error: federation.rounds:")
    assert "--extend restart" in err and "--extend hold" in err
    assert (run_dir / runner.CONFIG_FILE).read_text() == before  # nothing written
    assert cli_main([*argv, "--extend", "sideways"]) == 2
    assert "--extend: 'sideways' is not a choice; allowed: hold, restart" in capsys.readouterr().err
    assert cli_main(["train", "--extend", "hold", "--run-dir", str(tmp_path / "new")]) == 2
    assert "--extend: only with --resume" in capsys.readouterr().err
    # The same horizon: a plain resume needs no choice.
    same = runner.resume_config(run_dir, {"federation.rounds": HORIZON})
    assert same.federation.schedule_restarts == ()


def test_extend_restart_anneals_again_over_the_added_rounds(short_run, tmp_path):
    run_dir = _copy(short_run.run_dir, tmp_path)
    config = runner.resume_config(run_dir, {"federation.rounds": 2 * HORIZON}, extend="restart")
    assert config.federation.schedule_restarts == (HORIZON, 2 * HORIZON)
    extended = runner.train(config, resume=True, quiet=True)
    assert _maths(extended.records[:HORIZON]) == _maths(short_run.records)
    added = [r["update_norm_mean"] for r in extended.records[HORIZON:]]
    first = [r["update_norm_mean"] for r in short_run.records]
    assert min(added) > 0.1 * min(first)  # learning again, not the ~1e-9 of learning rate 0
    assert not equal_trees(extended.state.global_params, short_run.state.global_params)
    # Recorded: config.yaml repeats the extended run as a fresh run, exactly; train.log says so.
    saved = load_yaml(run_dir / runner.CONFIG_FILE)
    assert saved.federation.schedule_restarts == (HORIZON, 2 * HORIZON)
    assert (
        "--extend restart: the schedules run again over rounds 3-4"
        in (run_dir / "train.log").read_text()
    )
    fresh = runner.train(with_run_dir(saved, tmp_path / "fresh"), quiet=True)
    assert equal_trees(fresh.state, extended.state)
    assert _maths(fresh.records) == _maths(extended.records)
    # Repeating the command after the extension adds nothing more.
    again = runner.resume_config(run_dir, {"federation.rounds": 2 * HORIZON}, extend="restart")
    assert again.federation.schedule_restarts == (HORIZON, 2 * HORIZON)


def test_a_restarted_linear_schedule_runs_again_then_holds():
    schedule = common.restarted_linear(1.0, 0.0, 10, ((10, 20), (30, 34)), 1)
    counts = np.array([0, 5, 9, 10, 15, 20, 25, 30, 32, 34, 50])
    want = [1.0, 0.5, 0.1, 1.0, 0.5, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0]
    np.testing.assert_allclose([float(schedule(c)) for c in counts], want, atol=1e-6)
    assert common.restarted_linear(1.0, 0.0, 10, (), 1) is None  # the run's own anneal


@pytest.mark.parametrize(
    "restarts", [(4,), (4, 4), (6, 8, 7, 9), (-1, 2)], ids=["odd", "empty", "overlap", "negative"]
)
def test_bad_schedule_restarts_are_refused(restarts):
    with pytest.raises(ConfigError, match="federation.schedule_restarts: must be pairs"):
        validate(tiny_config(federation__schedule_restarts=list(restarts)))


def test_extending_a_run_continues_at_the_schedules_end(short_run, long_run, tmp_path):
    run_dir = _copy(short_run.run_dir, tmp_path)
    config = runner.resume_config(run_dir, {"federation.rounds": 2 * HORIZON}, extend="hold")
    assert config.federation.schedule_rounds == HORIZON
    extended = runner.train(config, resume=True, quiet=True)
    # The extension is the fresh longer run with the same horizon, exactly ...
    assert equal_trees(extended.state, long_run.state)
    assert _maths(extended.records) == _maths(long_run.records)
    # ... whose first part is the original run, exactly.
    assert _maths(long_run.records[:HORIZON]) == _maths(short_run.records)
    # After the horizon the learning rate is the anneal's end value, 0: nothing moves.
    assert equal_trees(extended.state.global_params, short_run.state.global_params)
    for i in range(2):  # the clients received it and did not move it either
        client = jax.tree.map(lambda x, i=i: x[i], extended.state.clients.params)
        assert equal_trees(client, short_run.state.global_params)
    assert max(r["update_norm_mean"] for r in extended.records[HORIZON:]) < 1e-6
    saved = load_yaml(run_dir / runner.CONFIG_FILE)
    assert saved.federation.rounds == 2 * HORIZON and saved.federation.schedule_rounds == HORIZON
    assert (
        "--extend hold: the schedules hold their end values after round 2"
        in (run_dir / "train.log").read_text()
    )


def test_interrupted_and_resumed_equals_uninterrupted_exactly(long_run, tmp_path):
    config = _ppo(federation__rounds=2 * HORIZON, federation__schedule_rounds=HORIZON)
    first = runner.train(with_run_dir(config, tmp_path), quiet=True, stop_after_round=HORIZON)
    assert first.interrupted
    resumed = runner.train(runner.resume_config(tmp_path), resume=True, quiet=True)
    assert equal_trees(resumed.state, long_run.state)
    assert _maths(resumed.records) == _maths(long_run.records)


def test_a_run_saved_without_a_horizon_keeps_its_rounds_as_horizon(short_run, tmp_path):
    """Runs saved before `schedule_rounds` existed: the horizon is their saved rounds."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(short_run.run_dir, old)
    text = (old / runner.CONFIG_FILE).read_text()
    (old / runner.CONFIG_FILE).write_text(text.replace(f"schedule_rounds: {HORIZON}", ""))
    saved = load_yaml(old / runner.CONFIG_FILE).federation
    assert saved.schedule_rounds == 0
    config = runner.resume_config(old, {"federation.rounds": saved.rounds + 2}, extend="hold")
    assert runner.fixed_schedule(config, resume=True).federation.schedule_rounds == saved.rounds
    with pytest.raises(ConfigError, match="federation.schedule_rounds: cannot be changed"):
        runner.resume_config(old, {"federation.schedule_rounds": 10})


def tiny_dqn_config():
    """A DQN config of 2 * HORIZON rounds whose epsilon decays over the whole horizon."""
    fields = {
        "hidden_sizes": [8],
        "num_steps": 8,
        "gradient_steps": 2,
        "batch_size": 16,
        "buffer_size": 256,
        "learning_starts": 16,
        "exploration_fraction": 1.0,
    }
    config = tiny_config(algo__name="dqn", federation__rounds=2 * HORIZON)
    for name, value in fields.items():
        config = replace_path(config, f"algo.dqn.{name}", value)
    return config


def test_dqn_epsilon_decays_over_the_horizon_only():
    config = tiny_dqn_config()
    short = replace_path(config, "federation.rounds", HORIZON)
    extended = replace_path(config, "federation.schedule_rounds", HORIZON)
    key = jax.random.PRNGKey(0)
    runs = {}
    for name, c in (("short", short), ("extended", extended)):
        sim = make_simulator(c)
        runs[name] = sim.run_block(jax.jit(sim.init)(key), c.federation.rounds)[1]
    for name, values in runs["short"].items():
        assert np.array_equal(
            np.asarray(values), np.asarray(runs["extended"][name])[:HORIZON], equal_nan=True
        ), name
    epsilon = np.asarray(runs["extended"]["epsilon"])
    assert epsilon[0] > epsilon[HORIZON - 1] > config.algo.dqn.epsilon_end
    np.testing.assert_allclose(epsilon[HORIZON:], config.algo.dqn.epsilon_end, rtol=1e-6)


def test_negative_horizon_is_refused():
    with pytest.raises(ConfigError, match="federation.schedule_rounds: must be >= 0"):
        validate(tiny_config(federation__schedule_rounds=-1))


def test_dqn_epsilon_decays_again_over_a_restart():
    config = tiny_dqn_config()
    config = replace_path(config, "federation.schedule_rounds", HORIZON)
    config = replace_path(config, "federation.schedule_restarts", [HORIZON, 2 * HORIZON])
    sim = make_simulator(config)
    key = jax.random.PRNGKey(0)
    epsilon = np.asarray(sim.run_block(jax.jit(sim.init)(key), 2 * HORIZON)[1]["epsilon"])
    # The restart's rounds repeat the first rounds' decay (the same clock, shifted).
    np.testing.assert_allclose(epsilon[HORIZON:], epsilon[:HORIZON], rtol=1e-5)
    assert epsilon[0] > epsilon[HORIZON - 1] > config.algo.dqn.epsilon_end
