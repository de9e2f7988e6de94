"""`jfedrl train --distributed`: one run over several processes (jax.distributed, gloo on CPU).

The equivalences launch real processes on localhost: two processes with one CPU
device each must train exactly as one process with two host devices, and a run
resumed from the two processes' checkpoint must end as the uninterrupted run.
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, PartitionSpec

from jfedrl import cli
from jfedrl.config import Config, DistributedConfig, load_yaml
from jfedrl.round.simulator import make_simulator
from jfedrl.run import distributed
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override
from jfedrl.validation import validate_distributed
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent
#: A tiny run (A2C compiles faster than PPO): 4 clients, 2 + 2 on the devices, a round a
#: block, drifting dynamics (their per-block record reads the sharded env params).
TINY = [
    "--clients", "4", "--local-updates", "1", "--seed", "3", "--drift", "sinusoidal",
    "--algo", "a2c", "--a2c.num-envs", "2", "--a2c.num-steps", "8", "--a2c.hidden-sizes", "8", "8",
    "--log.rounds-per-block", "1", "--log.eval-episodes", "1",
    "--log.tensorboard", "false", "--log.plot", "false", "--no-progress", "--quiet",
]  # fmt: skip
#: Fields that measure time, not the run.
TIMING = ("wall_seconds", "steps_per_second", "compile_seconds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # --host-devices decides
    command = [sys.executable, "-m", "jfedrl.cli", "train", *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _start_two(*args: str) -> list[subprocess.Popen]:
    """Two processes of one distributed run, one CPU device each."""
    port = _free_port()
    return [
        _start(
            *args,
            "--host-devices",
            "1",
            "--distributed",
            "--distributed.coordinator",
            f"127.0.0.1:{port}",
            "--distributed.num-processes",
            "2",
            "--distributed.process-id",
            str(i),
        )  # fmt: skip
        for i in range(2)
    ]


def _finish(processes: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    """Waits for every process; fails with their output unless all exit 0."""
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    codes = [p.returncode for p in processes]
    assert codes == [0] * len(processes), "\n\n".join(outputs)
    return outputs


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _checkpoint(run_dir: Path, round_index: int) -> dict:
    """A checkpoint's state as NumPy arrays, read by this (single-device) process."""
    path = run_dir / "checkpoints" / str(round_index) / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        meta = checkpointer.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore))


def _assert_same_state(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


class Reference:
    """One process with two host devices, 2 rounds: started at once, awaited when needed,
    so it runs beside a test's own processes."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        args = ("--rounds", "2", "--host-devices", "2", "--run-dir", str(run_dir))
        self.process = _start(*TINY, *args)

    def wait(self) -> Path:
        if self.process.returncode is None:
            _finish([self.process])
        return self.run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("one") / "run")
    yield ref
    if ref.process.poll() is None:
        ref.process.kill()
        ref.process.wait()


def test_two_processes_train_as_one_process_with_two_devices(reference, tmp_path):
    run_dir = tmp_path / "run"
    outputs = _finish(_start_two(*TINY, "--rounds", "2", "--run-dir", str(run_dir)))
    one_process = reference.wait()
    # Process 0 alone writes: one record per round, one config, one env_params.json.
    assert _records(run_dir) == _records(one_process)
    for round_index in (1, 2):
        _assert_same_state(_checkpoint(run_dir, round_index), _checkpoint(one_process, round_index))
    for name in ("env_params.json", "env_params.jsonl"):  # gathered from both processes
        assert (run_dir / name).read_text() == (one_process / name).read_text()
    # The saved config is the run's, without the launch info (a resume gives it again).
    saved, reference = load_yaml(run_dir / "config.yaml"), load_yaml(one_process / "config.yaml")
    assert saved.distributed == DistributedConfig()
    assert dataclasses.replace(saved, log=reference.log) == reference
    assert "run folder:" in outputs[0] and "run folder:" not in outputs[1]


@pytest.mark.slow
def test_resume_from_a_two_process_checkpoint(reference, tmp_path):
    """Stopped after round 1 by two processes; resumed by two processes and by one."""
    first = tmp_path / "first"
    _finish(_start_two(*TINY, "--rounds", "1", "--run-dir", str(first)))
    by_one = tmp_path / "by_one"
    shutil.copytree(first, by_one)
    resumes = _start_two("--resume", str(first), "--rounds", "2", "--no-progress", "--quiet")
    resumes.append(
        _start("--resume", str(by_one), "--rounds", "2", "--host-devices", "2", "--quiet")
    )
    _finish(resumes)
    one_process = reference.wait()
    for run_dir in (first, by_one):
        assert _records(run_dir) == _records(one_process)
        _assert_same_state(_checkpoint(run_dir, 2), _checkpoint(one_process, 2))
    # `jfedrl eval` (one process, one device here) reads the 2-process checkpoint too.
    from jfedrl.experiments.evaluate import evaluate_run

    evaluated = evaluate_run(first, round_index=1).mean
    assert evaluated == pytest.approx(_records(first)[0]["eval_return"], rel=1e-6)


# ---------------------------------------------------------------- checks before JAX starts


def _dist(**fields) -> Config:
    return dataclasses.replace(Config(), distributed=DistributedConfig(**fields))


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (dict(enabled=True, num_processes=2, process_id=2), "distributed.process_id", "[0, "),
        (dict(enabled=True, process_id=-2), "distributed.process_id", ">= 0"),
        (dict(enabled=True, coordinator="127.0.0.1"), "distributed.coordinator", "HOST:PORT"),
        (dict(enabled=True, coordinator=":1234"), "distributed.coordinator", "HOST:PORT"),
        (dict(enabled=True, coordinator="h:70000"), "distributed.coordinator", "65535"),
        (dict(enabled=True, num_processes=-1), "distributed.num_processes", ">= 0"),
        (dict(enabled=True, timeout=0), "distributed.timeout", "> 0"),
        (dict(coordinator="h:1234"), "distributed.coordinator", "--distributed"),
        (dict(process_id=1), "distributed.process_id", "--distributed"),
    ],
)
def test_bad_distributed_section_names_the_field(fields, field, says):
    with pytest.raises(ConfigError) as error:
        validate_distributed(_dist(**fields))
    assert str(error.value).startswith(field + ":") and says in str(error.value)


def test_good_distributed_sections_pass():
    validate_distributed(Config())
    validate_distributed(_dist(enabled=True))  # everything auto-detected
    validate_distributed(
        _dist(enabled=True, coordinator="node-7.cluster:1234", num_processes=4, process_id=3)
    )


def test_distributed_refuses_an_offload_executor():
    config = override(_dist(enabled=True), {"offload.executor": "local"})
    with pytest.raises(ConfigError, match=r"^offload\.executor: .*allowed: inprocess"):
        validate_distributed(config)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--distributed", "--distributed.process-id", "5", "--distributed.num-processes", "2"],
         "distributed.process_id: must be in [0, distributed.num_processes=2)"),
        (["--distributed.coordinator", "h:1"], "distributed.coordinator: set, but"),
        (["--distributed", "--dry-run"], "--dry-run cannot be combined with --distributed"),
        (["--resume", "nowhere", "--distributed", "--distributed.coordinator", "h"],
         "distributed.coordinator: must be HOST:PORT"),
    ],
)  # fmt: skip
def test_cli_rejects_a_bad_launch_before_jax_starts(argv, says, capsys):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jfedrl: error: ") and says in err and err.count("\n") == 1


def test_train_refuses_distributed_without_the_runtime(tmp_path):
    from jfedrl.run import runner

    config = override(tiny_config(), {"distributed.enabled": True, "log.run_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^distributed\.enabled: .*jfedrl train --distributed"):
        runner.train(config, quiet=True)
    assert not (tmp_path / "config.yaml").exists()


def test_resume_may_change_the_process_layout(tmp_path):
    from jfedrl.run import runner
    from jfedrl.schema.convert import save_yaml

    save_yaml(tiny_config(), tmp_path / "config.yaml")
    overrides = {"distributed.enabled": "true", "distributed.num_processes": "4"}
    config = runner.resume_config(tmp_path, overrides)
    assert config.distributed.enabled and config.distributed.num_processes == 4


# ---------------------------------------------------------------- one process


def test_config_digest_ignores_only_the_launch_section():
    base = tiny_config()
    launched = dataclasses.replace(base, distributed=DistributedConfig(True, "h:1", 2, 1))
    assert distributed.config_digest(launched) == distributed.config_digest(base)
    assert distributed.config_digest(override(base, {"seed": 1})) != distributed.config_digest(base)


def test_one_process_helpers_need_no_collectives():
    assert distributed.is_primary() and not distributed.multiprocess()
    assert distributed.any_process(True) and not distributed.any_process(False)
    assert distributed.broadcast_text("runs/x") == "runs/x"
    value = distributed.host_value({"a": jax.numpy.arange(3)})
    assert isinstance(value["a"], np.ndarray) and value["a"].tolist() == [0, 1, 2]
    distributed.check_same_config(tiny_config())  # alone: nothing to compare


def test_state_shardings_split_only_the_client_axis():
    simulator = make_simulator(tiny_config(federation__num_clients=4))
    mesh = Mesh(np.array(jax.devices()[:1]), ("clients",))
    simulator = dataclasses.replace(simulator, mesh=mesh, multiprocess=True)
    shapes = simulator.abstract_state(jax.random.PRNGKey(0))
    for leaf in jax.tree.leaves(shapes.clients) + jax.tree.leaves(shapes.env_params):
        assert leaf.sharding.spec == PartitionSpec("clients")
    for part in (shapes.global_params, shapes.server_state, shapes.round, shapes.key):
        for leaf in jax.tree.leaves(part):
            assert leaf.sharding.spec == PartitionSpec()
