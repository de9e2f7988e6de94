"""Offload with the `ray` executor: a local Ray instance, actors killed mid-round.

Same tiny config as tests/test_offload.py (6 clients, 3 shards). The
equivalence run goes through the registered executor with no address, so it
also checks that a local Ray instance is started for the run and stopped with
it. The kill test wraps the executor so that chosen attempts have their actor
`ray.kill`ed while the attempt is in flight.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jfedrl import plugins
from jfedrl.cli.app import build_parser, config_from_args
from jfedrl.round.simulator import make_simulator
from jfedrl.run.checkpoint import Checkpointer
from jfedrl.run.runner import CHECKPOINT_DIR, train
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override
from offload.plugin import validate_ray
from tests.helpers import tiny_config, with_run_dir
from tests.test_offload import ROUNDS, assert_same_run, base_config


def ray_config(run_dir, **overrides):
    config = base_config(offload__executor="ray", offload__shards=3, **overrides)
    return with_run_dir(config, run_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run (2 rounds) every Ray run is compared with."""
    return train(with_run_dir(base_config(), tmp_path_factory.mktemp("inprocess")), quiet=True)


def test_config_errors_name_the_field():
    def check(changes, field):
        config = override(tiny_config(), {"offload.executor": "ray", **changes})
        with pytest.raises(ConfigError, match=field):
            validate_ray(config)

    check({"offload.ray.address": "nowhere"}, r"offload\.ray\.address: must be .*'auto'")
    check({"offload.ray.address": "ray://head"}, r"offload\.ray\.address")
    check({"offload.ray.num_cpus": 0}, r"offload\.ray\.num_cpus")
    check({"offload.ray.num_gpus": -1}, r"offload\.ray\.num_gpus")
    check({"offload.ray.transfer": "nfs"}, r"offload\.ray\.transfer.*objects.*path")
    for address in ("", "auto", "ray://head:10001", "10.0.0.2:6379"):
        validate_ray(override(tiny_config(), {"offload.ray.address": address}))


def test_cli_ray_section_alias():
    args = build_parser().parse_args(
        ["train", "--executor", "ray", "--shards", "3", "--ray.address", "auto"]
        + ["--ray.num-gpus", "0.5", "--offload.ray.transfer", "path"]
    )
    config = config_from_args(args)
    assert config.offload.executor == "ray" and config.offload.shards == 3
    assert config.offload.ray.address == "auto" and config.offload.ray.num_gpus == 0.5
    assert config.offload.ray.transfer == "path"


def test_a_cluster_too_small_for_every_actor_fails_fast(monkeypatch):
    ray = pytest.importorskip("ray")
    from offload import OffloadError
    from offload.ray_config import RayConfig
    from offload.ray_executor import check_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    check_resources(RayConfig(num_cpus=1), 4)
    with pytest.raises(OffloadError, match=r"offload\.ray\.num_cpus=2 need 8 CPU"):
        check_resources(RayConfig(num_cpus=2), 4)
    with pytest.raises(OffloadError, match=r"offload\.ray\.num_gpus=1 need 3 GPU.*has 0"):
        check_resources(RayConfig(num_gpus=1), 3)


@pytest.mark.slow  # Ray's start, 3 actors importing JAX and compiling: > 60 s on 2 cores
@pytest.mark.parametrize("transfer", ["objects", "path"])
def test_ray_executor_matches_inprocess(reference, tmp_path, transfer):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    run_dir = tmp_path / "ray"
    result = train(ray_config(run_dir, offload__ray__transfer=transfer), quiet=True)
    assert_same_run(result, reference)
    assert not ray.is_initialized()  # the run's own Ray instance stopped with it
    for record in result.records:
        assert record["offload/tasks"] == 3 and record["offload/retries"] == 0
        assert record["offload/bytes_sent"] > 0 and record["offload/bytes_received"] > 0
    # Round 2 ran on the actors of round 1: their step was compiled once, not again.
    reports = sorted((run_dir / "offload/round-000001").glob("shard-*/result-*/report.json"))
    assert len(reports) == 3
    for path in reports:
        assert json.loads(path.read_text())["timings"]["compiled_fresh"] is False


class _Killer:
    """The real Ray executor, whose actor is `ray.kill`ed right after chosen attempts start.

    `kills` holds (round, shard, attempt) triples; attempt None: every attempt.
    """

    def __init__(self, executor, kills):
        self.executor, self.kills, self.killed = executor, kills, []

    def submit(self, job):
        import ray

        self.executor.submit(job)
        header = json.loads((job.task_dir / "task.json").read_text())
        if header["op"] != "train":
            return
        for rnd, shard, attempt in self.kills:
            if (rnd, shard) == (header["round"], job.shard) and attempt in (None, job.attempt):
                ray.kill(self.executor.actor(job.shard), no_restart=True)
                self.killed.append((rnd, shard, job.attempt))

    def wait(self, timeout):
        return self.executor.wait(timeout)

    def verdict(self, outcome, error):
        self.executor.verdict(outcome, error)

    def close(self):
        self.executor.close()


@pytest.mark.slow
def test_killed_actor_is_retried_then_masked_and_checkpoints_survive(
    reference, tmp_path, monkeypatch
):
    """Round 2: one kill, retried on a fresh actor (exact). Round 3: a shard lost every
    attempt, masked. Round 4: every shard lost: the round fails, checkpoints intact."""
    ray = pytest.importorskip("ray")
    from offload.plugin import ray_executor
    from offload.requestor import OffloadRunner

    kills = [(1, 1, 0), (2, 2, None), (3, 0, None), (3, 1, None), (3, 2, None)]
    killers = []

    def make(simulator, run_dir):
        def factory(sim, work_dir, n):
            killers.append(_Killer(ray_executor(sim, work_dir, n), kills))
            return killers[-1]

        return OffloadRunner(simulator, run_dir, factory)

    spec = dataclasses.replace(plugins.executor("ray"), make_runner=make)
    monkeypatch.setitem(plugins.executors(), "ray", spec)
    run_dir = tmp_path / "killed"
    config = ray_config(
        run_dir,
        federation__rounds=4,
        federation__schedule_rounds=ROUNDS,  # the 2-round reference's LR anneal
        offload__max_retries=1,
        federation__min_participation=0.6,
        offload__state_sync_rounds=1,
    )
    from offload import OffloadError

    with pytest.raises(OffloadError, match=r"round 4 failed: 0 of 6 .*min_participation=0.6"):
        train(config, quiet=True)
    assert not ray.is_initialized()
    (killer,) = killers
    expected = [(1, 1, 0), (2, 2, 0), (2, 2, 1)] + [(3, s, a) for s in range(3) for a in (0, 1)]
    assert sorted(killer.killed) == expected
    log = (run_dir / "train.log").read_text()
    assert "ray actor died" in log and "giving up on its clients this round" in log

    from jfedrl.run.outputs import read_metrics

    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert [r["offload/retries"] for r in records] == [0, 1, 1]
    assert [r["offload/clients_lost"] for r in records] == [0, 0, 2]
    assert records[2]["clients_excluded"] == 2

    # Nothing checkpointed was lost: round 2's checkpoint (after a kill and a retry) is the
    # in-process run's end state, bit for bit; round 3's kept clients 4, 5 as they were.
    simulator = make_simulator(config)
    initial = simulator.init(jax.random.PRNGKey(config.seed))
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR)
    assert checkpointer.rounds() == [1, 2, 3]
    second, _ = checkpointer.restore(initial, round_index=2)
    third, _ = checkpointer.restore(initial, round_index=3)
    checkpointer.close()
    for got, want in zip(jax.tree.leaves(second), jax.tree.leaves(reference.state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert int(third.round) == 3
    for before, after in zip(
        jax.tree.leaves(second.clients), jax.tree.leaves(third.clients), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(after)[4:6], np.asarray(before)[4:6])
