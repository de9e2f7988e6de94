"""The host loop: outputs, resume, determinism, Ctrl-C, and clear errors."""

import json
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl.cli import main as cli_main
from jfedrl.run import runner
from jfedrl.run.checkpoint import MANIFEST, CheckpointError
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import replace_path, save_yaml
from tests.helpers import compiled_programs, tiny_config, with_run_dir

DROP = ("wall_seconds", "steps_per_second", "compile_seconds")


def _maths(records):
    return [{k: v for k, v in r.items() if k not in DROP} for r in records]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    config = with_run_dir(tiny_config(), tmp_path_factory.mktemp("full"))
    return runner.train(config, quiet=True)


def test_outputs_are_written(full_run):
    run_dir = full_run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "train.log", "env_params.json"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["env_steps"] == 4 * 3 * 2 * 2 * 16
    for key in (
        "train_return_mean",
        "train_return_min",
        "train_return_max",
        "value_loss",
        "pg_loss",
        "entropy",
        "steps_per_second",
        "wall_seconds",
    ):
        assert key in records[-1], key
    assert records[1]["eval_return"] is not None and "eval_return" not in records[0]
    assert "compile_seconds" in records[0]
    assert (run_dir / "checkpoints" / "4").is_dir()


def test_resume_equals_uninterrupted_run(full_run, tmp_path):
    config = with_run_dir(tiny_config(), tmp_path / "resumed")
    first = runner.train(config, quiet=True, stop_after_round=2)
    assert first.interrupted and int(first.state.round) == 2
    resumed = runner.train(runner.resume_config(config.log.run_dir), resume=True, quiet=True)
    assert int(resumed.state.round) == 4
    # The README promises exactly the params of the uninterrupted run: bit for bit.
    for a, b in zip(jax.tree.leaves(full_run.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _maths(resumed.records) == _maths(full_run.records)


def test_same_seed_same_metrics_other_seed_differs(full_run, tmp_path):
    again = runner.train(with_run_dir(tiny_config(), tmp_path / "again"), quiet=True)
    assert _maths(again.records) == _maths(full_run.records)
    other = runner.train(with_run_dir(tiny_config(seed=1), tmp_path / "other"), quiet=True)
    assert _maths(other.records) != _maths(full_run.records)


def test_resume_refuses_to_change_the_maths(full_run):
    # What a resume with more --rounds computes (the schedules hold their end values) is
    # checked round by round in tests/test_schedules.py.
    for path, value in (("algo.ppo.learning_rate", 1.0), ("seed", 3), ("strategy.name", "mean")):
        with pytest.raises(ConfigError, match=f"{path}: cannot be changed"):
            runner.resume_config(full_run.run_dir, {path: value})


def test_resume_names_the_exact_fields_it_may_change(full_run):
    """The budget fields are resumable by their new paths; the old flat key is not a field."""
    with pytest.raises(ConfigError) as error:
        runner.resume_config(full_run.run_dir, {"strategy.dp_epsilon_budget": 9.0})
    message = str(error.value)
    assert message.startswith("strategy.dp_epsilon_budget: cannot be changed"), message
    assert "strategy.dp_fedavg.epsilon_budget" in message
    assert "strategy.dp_fedavg.budget_action" in message
    resumed = runner.resume_config(
        full_run.run_dir,
        {"strategy.dp_fedavg.epsilon_budget": 9.0, "strategy.dp_fedavg.budget_action": "warn"},
    )
    assert resumed.strategy.dp_fedavg.epsilon_budget == 9.0
    assert resumed.strategy.dp_fedavg.budget_action == "warn"


def test_new_run_refuses_a_folder_with_checkpoints(full_run):
    with pytest.raises(ConfigError, match="already holds a run"):
        runner.train(with_run_dir(tiny_config(), full_run.run_dir), quiet=True)


def test_resume_without_checkpoint_starts_over_with_one_warning(full_run, tmp_path):
    # A run killed before its first checkpoint: its config.yaml, a torn metrics line.
    config = with_run_dir(tiny_config(), tmp_path)
    save_yaml(config, tmp_path / "config.yaml")
    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "env_st')
    resumed = runner.train(runner.resume_config(tmp_path), resume=True, quiet=True)
    assert int(resumed.state.round) == 4
    assert _maths(resumed.records) == _maths(full_run.records)
    log_lines = (tmp_path / "train.log").read_text().splitlines()
    warnings = [line for line in log_lines if " WARNING " in line]
    assert len(warnings) == 2, warnings  # the start from scratch, and the torn line kept aside
    assert "--resume: no checkpoint in " in warnings[0] and "from round 0" in warnings[0]
    assert "1 unreadable line(s) moved to metrics.jsonl.corrupt" in warnings[1]
    assert (tmp_path / "metrics.jsonl.corrupt").read_text() == '{"round": 1, "env_st\n'
    with pytest.raises(CheckpointError, match="not a run folder"):
        runner.resume_config(tmp_path / "missing")


def test_corrupt_checkpoint_fails_clearly(full_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(full_run.run_dir, broken)
    # Without manifests (as before they existed), the damage is found by the restore itself.
    for manifest in (broken / "checkpoints").glob(f"*/{MANIFEST}"):
        manifest.unlink()
    for path in (broken / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "ocdbt" in str(path):
            path.write_bytes(b"\x00garbage" * 4)
    with pytest.raises(CheckpointError, match="corrupt or does not match"):
        runner.train(runner.resume_config(broken), resume=True, quiet=True)


def test_checkpoint_of_another_config_is_rejected(full_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(full_run.run_dir, other)
    config = with_run_dir(tiny_config(federation__num_clients=5), other)
    with pytest.raises(CheckpointError):
        runner.train(config, resume=True, quiet=True)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("env.name", "Nope-v0", "env.name: 'Nope-v0' is not allowed; allowed: .*CartPole-v1"),
        ("algo.name", "sarsa", "algo.name: 'sarsa' is not allowed; allowed: .*ppo"),
        ("strategy.name", "fedbest", "strategy.name: 'fedbest' is not allowed; allowed: .*fedavg"),
        ("federation.num_clients", 0, "federation.num_clients: must be >= 1"),
        ("federation.rounds", 0, "federation.rounds: must be > 0"),
        ("federation.local_updates", -1, "federation.local_updates: must be > 0"),
        ("algo.ppo.num_steps", 0, "algo.ppo.num_steps: must be >= 1"),
        ("algo.ppo.learning_rate", 0.0, "algo.ppo.learning_rate: must be > 0"),
        ("algo.ppo.learning_rate", -1e-3, "algo.ppo.learning_rate: must be > 0"),
        ("algo.ppo.num_minibatches", 3, "algo.ppo.num_minibatches: must divide"),
        ("algo.ppo.objective", "trpo", "algo.ppo.objective: 'trpo' is not allowed; allowed: clip"),
        ("offload.executor", "slurm", "offload.executor: 'slurm' is not allowed"),
    ],
)
def test_bad_config_fails_before_compiling(path, value, message, tmp_path):
    config = replace_path(with_run_dir(tiny_config(), tmp_path), path, value)
    with pytest.raises(ConfigError, match=message):
        runner.train(config, quiet=True)
    assert not (tmp_path / "checkpoints").exists()


def test_malformed_values_name_the_field():
    with pytest.raises(ConfigError, match="federation.num_clients: expected an integer"):
        replace_path(tiny_config(), "federation.num_clients", "many")
    with pytest.raises(ConfigError, match="federation.nope: unknown config field; allowed:"):
        replace_path(tiny_config(), "federation.nope", 1)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    code = cli_main(["train", "--clients", "0", "--run-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "jfedrl: error: federation.num_clients: must be >= 1, got 0"
    assert cli_main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("federation:\n  num_clientz: 3\n")
    assert cli_main(["train", "--config", str(bad_yaml)]) == 2
    assert "federation.num_clientz: unknown config field" in capsys.readouterr().err


def test_cli_flags_and_yaml(tmp_path):
    from jfedrl.cli.app import build_parser, config_from_args

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "federation:\n  num_clients: 7\n  rounds: 3\nalgo:\n  ppo:\n    gamma: 0.9\n"
    )
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(yaml_file),
            "--rounds",
            "5",
            "--env",
            "Acrobot-v1",
            "--strategy",
            "mean",
            "--ppo.learning-rate",
            "1e-3",
            "--algo.ppo.hidden-sizes",
            "8",
            "8",
            "--log.tensorboard",
            "false",
            "--golem.gpu",
        ]
    )
    config = config_from_args(args)
    assert config.federation.num_clients == 7  # from YAML
    assert config.federation.rounds == 5  # flag beats YAML
    assert config.algo.ppo.gamma == 0.9
    assert config.env.name == "Acrobot-v1"
    assert config.strategy.name == "mean"
    assert config.algo.ppo.learning_rate == 1e-3
    assert config.algo.ppo.hidden_sizes == (8, 8)
    assert config.log.tensorboard is False
    assert config.offload.golem.gpu is True


def test_ctrl_c_checkpoints_and_exits_cleanly(tmp_path):
    """A real SIGINT to a real `jfedrl train`: checkpoint, exit 130, resumable."""
    run_dir = tmp_path / "sigint"
    cmd = [
        sys.executable,
        "-m",
        "jfedrl.cli",
        "train",
        "--run-dir",
        str(run_dir),
        "--clients",
        "2",
        "--rounds",
        "400",
        "--local-updates",
        "1",
        "--ppo.num-envs",
        "2",
        "--ppo.num-steps",
        "16",
        "--ppo.num-minibatches",
        "2",
        "--ppo.hidden-sizes",
        "8",
        "--log.rounds-per-block",
        "1",
        "--log.tensorboard",
        "false",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = 180
    import time

    start = time.time()
    while not any("round 3/400" in line for line in lines):
        assert proc.poll() is None, "".join(lines)
        assert time.time() - start < deadline, "".join(lines)
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    reader.join(timeout=5)
    output = "".join(lines)
    assert code == 130, output
    assert "Traceback" not in output
    assert "resume with: jfedrl train --resume" in output
    rounds = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert rounds and rounds[-1] >= 3
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["round"] == rounds[-1]


def test_min_participation_fails_the_round_and_all_excluded_warns(caplog):
    from jfedrl.run.callbacks import ParticipationError, check_participation

    ok = [{"round": 1, "clients_participating": 4, "clients_excluded": 1}]
    check_participation(ok, 0.75)
    with pytest.raises(
        ParticipationError, match="round 1: only 3 of 4 clients .* federation.min_participation=0.8"
    ):
        check_participation(ok, 0.8)
    import logging

    logger = logging.getLogger("jfedrl")  # train() stops propagation to the root logger
    logger.addHandler(caplog.handler)
    try:
        check_participation([{"round": 2, "clients_participating": 2, "clients_excluded": 2}], 0)
    finally:
        logger.removeHandler(caplog.handler)
    assert "every client update was excluded" in caplog.text


def test_train_uses_the_block_and_evaluation_compiled_ahead(tmp_path):
    """The programs compiled in the background are the ones the run calls: no call
    during the run compiles the initial state, the evaluation or a block a second time."""
    with compiled_programs() as compiled:
        jax.jit(lambda x: x + 1)(jnp.zeros(3))  # a new program: the log is seen
        runner.train(with_run_dir(tiny_config(), tmp_path / "run"), progress=False, quiet=True)
    assert "jit(<lambda>)" in compiled
    ahead = ("init", "evaluate", "run_block")
    assert not [name for name in compiled if any(part in name for part in ahead)]
