"""Offload with the local executor: the task format, quantisation and faults.

The runs share one tiny config (6 clients, 3 shards, 2 rounds) and the
session's persistent compilation cache. The in-process reference run is
computed once per module. The equivalence test goes through the registered
`local` executor (its own worker processes); the fault tests borrow one
module-wide pool of worker processes (importing JAX and gymnax costs seconds
per process here), which they crash, hang and restart like any other.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import jax
import numpy as np
import pytest

from jfedrl import __version__, plugins
from jfedrl.round.simulator import make_simulator
from jfedrl.run.checkpoint import Checkpointer
from jfedrl.run.outputs import read_metrics
from jfedrl.run.runner import CHECKPOINT_DIR, resume_config, train
from jfedrl.schema.convert import replace_path
from offload import LocalExecutor, OffloadError, OffloadRunner, quantize
from offload import archive as fmt
from offload.faults import Fault, parse_faults
from offload.plugin import validate_golem, validate_local
from offload.requestor import shard_slices
from offload.task import FORMAT, TASK_FILE, Report, TaskHeader
from tests.helpers import tiny_config, with_run_dir

ROUNDS = 2
#: Metrics that measure time, not maths.
TIMING = ("wall_seconds", "steps_per_second", "compile_seconds")


def base_config(**overrides):
    values = dict(
        federation__num_clients=6,
        federation__rounds=ROUNDS,
        algo__ppo__num_steps=32,
        log__rounds_per_block=1,
    )
    values.update(overrides)
    return tiny_config(**values)


def local_config(run_dir, **overrides):
    config = base_config(offload__executor="local", offload__shards=3, **overrides)
    return with_run_dir(config, run_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run every offloaded run is compared with."""
    return train(with_run_dir(base_config(), tmp_path_factory.mktemp("inprocess")), quiet=True)


TASK_TIMEOUT = 8.0


class _Borrowed:
    """The module's worker pool, lent to one run (closing it is the fixture's job)."""

    def __init__(self, pool):
        self.pool = pool

    def submit(self, job):
        self.pool.submit(job)

    def wait(self, timeout):
        return self.pool.wait(timeout)

    def verdict(self, outcome, error):
        self.pool.verdict(outcome, error)

    def close(self):
        pass


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    workers = LocalExecutor(
        3, tmp_path_factory.mktemp("pool"), task_timeout=TASK_TIMEOUT, compile_timeout=900
    )
    yield workers
    workers.close()


@pytest.fixture
def pooled(pool, monkeypatch):
    """Runs with `offload.executor: local` use the module's worker pool."""

    def factory(simulator, run_dir):
        return OffloadRunner(simulator, run_dir, lambda sim, work_dir, n: _Borrowed(pool))

    local = dataclasses.replace(plugins.executor("local"), make_runner=factory)
    monkeypatch.setitem(plugins.executors(), "local", local)
    return pool


def assert_same_run(got, want):
    """Bit-identical final state and metrics (docs/offload.md promises it on CPU)."""
    for a, b in zip(jax.tree.leaves(got.state), jax.tree.leaves(want.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(got.records) == len(want.records)
    for record, expected in zip(got.records, want.records, strict=True):
        for name, value in expected.items():
            if name in TIMING:
                continue
            np.testing.assert_array_equal(
                np.asarray(record[name], float), np.asarray(value, float), err_msg=name
            )


# ---------------------------------------------------------------- unit tests


def test_int8_and_float16_quantisation_by_hand():
    x = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]], np.float32)
    encoded, error = quantize.encode("p", x, "int8", rows=True)
    # Row 0: scale 1/127, values 127, -63.5 -> -64 (round half to even), 31.75 -> 32.
    np.testing.assert_array_equal(encoded["p"], [[127, -64, 32], [0, 0, 0]])
    np.testing.assert_allclose(encoded["p@scale"], [1 / 127, 1.0], rtol=1e-7)
    decoded = quantize.decode("p", encoded, np.float32, rows=True)
    np.testing.assert_allclose(decoded[0], [1.0, -64 / 127, 32 / 127], rtol=1e-6)
    np.testing.assert_array_equal(decoded[1], 0.0)
    diff = np.array([0.0, -64 / 127 + 0.5, 32 / 127 - 0.25])
    assert error.max_abs_error == pytest.approx(np.abs(diff).max(), rel=1e-5)
    assert error.relative_error == pytest.approx(
        np.sqrt(np.sum(diff**2) / (1 + 0.25 + 0.0625)), rel=1e-4
    )
    assert (error.raw_bytes, error.encoded_bytes) == (24, 6 + 8)

    encoded, error = quantize.encode("p", np.array([0.1, 1.0], np.float32), "float16", rows=False)
    assert encoded["p"].dtype == np.float16
    assert error.max_abs_error == pytest.approx(abs(float(np.float16(0.1)) - 0.1), rel=1e-3)
    assert (error.raw_bytes, error.encoded_bytes) == (8, 4)

    ints = np.arange(4, dtype=np.int32)
    encoded, error = quantize.encode("k", ints, "int8", rows=False)
    assert encoded["k"] is not None and encoded["k"].dtype == np.int32  # only floats are quantised
    assert quantize.encoded_spec("k", (4,), np.int32, "int8", rows=False) == {
        "k": ((4,), np.dtype(np.int32))
    }


def test_shards_are_contiguous_and_never_empty():
    assert shard_slices(6, 3) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert [s.stop - s.start for s in shard_slices(5, 3)] == [2, 1, 2]
    assert shard_slices(2, 4) == [slice(0, 1), slice(1, 2)]


def test_fault_spec_parsing():
    faults = parse_faults("crash:shard=1;nan:shard=0,attempt=*,round=2")
    assert faults == [Fault("crash", 1, 0, None), Fault("nan", 0, None, 2)]
    assert faults[0].matches({"shard": 1, "attempt": 0, "round": 5})
    assert not faults[0].matches({"shard": 1, "attempt": 1, "round": 5})
    with pytest.raises(ValueError, match="allowed: crash"):
        parse_faults("explode")


def test_header_and_report_round_trip_through_json_and_name_bad_fields():
    header = TaskHeader("run", 3, 1, (4, 5), "int8", {"seed": 0}, {"inputs/a": "0" * 64})
    assert TaskHeader.from_json(json.loads(json.dumps(header.to_json()))) == header
    report = Report(
        "run",
        3,
        1,
        0,
        "train",
        (4, 5),
        (1.5, None),
        "int8",
        {"total": 1.0},
        "cpu",
        "cpu",
        {"jfedrl": __version__},
        env_steps=8,
        quantize_error={"relative": 0.25},
    )
    data = json.loads(json.dumps(report.to_json()))
    assert Report.from_json(data) == report and report.relative_error == 0.25
    report.check(header)
    with pytest.raises(fmt.TaskError, match="report.json: returns is missing or not a list"):
        Report.from_json(dict(data, returns="1.5"))
    with pytest.raises(fmt.TaskError, match="report.json: device is missing or not a str"):
        Report.from_json({k: v for k, v in data.items() if k != "device"})
    with pytest.raises(fmt.TaskError, match="report is for round 4, expected 3"):
        Report.from_json(dict(data, round=4)).check(header)


def _tar(entries):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_unpack_accepts_plain_files_only(tmp_path):
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "a.bin").write_bytes(b"12345")
    (source / "report.json").write_text("{}")
    fmt.unpack(fmt.pack(source), tmp_path / "out", max_bytes=1000)
    assert (tmp_path / "out" / "d" / "a.bin").read_bytes() == b"12345"

    def file(name, data=b"x"):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        return info, data

    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases = {
        "escapes": [file("../evil")],
        "not a regular file": [(link, None)],
        "exceeds the cap": [file("big", b"x" * 2000)],
    }
    for message, entries in cases.items():
        with pytest.raises(fmt.TaskError, match=message):
            fmt.unpack(_tar(entries), tmp_path / "bad", max_bytes=1500)
    with pytest.raises(fmt.TaskError, match="cap"):
        fmt.unpack(b"\0" * (fmt.archive_cap(1000) + 1), tmp_path / "bad", max_bytes=1000)
    with pytest.raises(fmt.TaskError, match="damaged"):
        fmt.unpack(b"\1" * 5000, tmp_path / "bad", max_bytes=1000)


# ---------------------------------------------------------------- runs


def test_local_executor_matches_inprocess(reference, tmp_path):
    result = train(local_config(tmp_path / "local"), quiet=True)
    assert_same_run(result, reference)
    for record in result.records:
        assert record["offload/tasks"] == 3
        assert record["offload/retries"] == 0 and record["offload/clients_lost"] == 0
        assert record["offload/bytes_sent"] > 0 and record["offload/bytes_received"] > 0
        assert record["offload/bytes_saved"] == 0 and record["offload/quantize_error_sent"] == 0
    # The task of the last round stays for inspection: a task.json a worker can run again.
    # Sticky clients: round 1 starts from the states the worker kept, so it carries none.
    task = json.loads(
        (tmp_path / "local/offload/round-000001/shard-001/train-cache/task.json").read_text()
    )
    assert task["round"] == 1 and task["client_ids"] == [2, 3] and task["quantize"] == "none"
    assert task["state"] == "cache" and task["return_state"] is False
    assert "log" not in task["config"] and task["config"]["federation"]["num_clients"] == 6


def test_every_fault_is_detected_and_retried(reference, tmp_path, monkeypatch, pooled):
    """Two faults per task and round; the third attempt succeeds, so the run equals a clean one."""
    faults = [
        "crash:shard=0,round=0,attempt=0",
        "missing:shard=0,round=0,attempt=1",
        "corrupt:shard=1,round=0,attempt=0",
        "truncate:shard=1,round=0,attempt=1",
        "missing:shard=2,round=0,attempt=0",
        "shape:shard=2,round=0,attempt=1",
        "hang:shard=0,round=1,attempt=0",
        "wrong_round:shard=0,round=1,attempt=1",
        "dtype:shard=1,round=1,attempt=0",
        "wrong_clients:shard=1,round=1,attempt=1",
        "stall:shard=2,round=1,attempt=0",
    ]
    monkeypatch.setenv("JFEDRL_FAULT", ";".join(faults))
    run_dir = tmp_path / "faults"
    restarts = pooled.restarts
    result = train(local_config(run_dir, offload__max_retries=2), quiet=True)
    assert_same_run(result, reference)
    assert [r["offload/retries"] for r in result.records] == [6, 5]
    assert [r["offload/attempts"] for r in result.records] == [9, 8]
    assert all(r["offload/tasks_failed"] == 0 for r in result.records)
    assert pooled.restarts == restarts + 3  # the crashed, the hung and the stalled worker
    log = (run_dir / "train.log").read_text()
    for expected in (
        "worker exited with code 17",
        "missing file(s): state/",
        "digest mismatch",
        "/float32 where (2, 16)/float32 is expected",  # one client too many
        f"timed out while training (offload.task_timeout={TASK_TIMEOUT:g}s)",
        # A warm worker stuck before its step is held to task_timeout, not compile_timeout.
        f"timed out while restoring (offload.task_timeout={TASK_TIMEOUT:g}s)",
        "report is for round 2, expected 1",
        "/float64 where",
        "report is for other client ids",
    ):
        assert expected in log, expected
    assert log.count("digest mismatch") == 2  # corrupt and truncate
    # Round 2: shard 1's retry (which then fails on its client ids) ran while shard 0 hung;
    # a failed shard is retried at once, not after the round's slowest shard.
    assert log.index("report is for other client ids") < log.index("timed out while training")


def test_lost_clients_are_masked_then_min_participation_fails(tmp_path, monkeypatch, pooled):
    run_dir = tmp_path / "lost"
    monkeypatch.setenv(
        "JFEDRL_FAULT", "missing:shard=1,attempt=*,round=0;corrupt:attempt=*,round=1"
    )
    config = local_config(run_dir, offload__max_retries=1, federation__min_participation=0.6)
    with pytest.raises(OffloadError, match=r"round 2 failed: 0 of 6 .*min_participation=0.6"):
        train(config, quiet=True)
    # Round 1 lost shard 1 (clients 2, 3) after 1 retry, but 4 of 6 >= 0.6: masked.
    (record,) = read_metrics(run_dir)
    assert record["offload/tasks_failed"] == 1 and record["offload/clients_lost"] == 2
    assert record["clients_excluded"] == 2 and record["offload/retries"] == 1
    # Round 2 failed: the checkpoint of round 1 is intact, nothing of round 2 was kept.
    simulator = make_simulator(config)
    initial = simulator.init(jax.random.PRNGKey(config.seed))
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR)
    assert checkpointer.rounds() == [1]
    state, _ = checkpointer.restore(initial)
    checkpointer.close()
    assert int(state.round) == 1
    leaves = zip(jax.tree.leaves(state.clients), jax.tree.leaves(initial.clients), strict=True)
    for got, start in leaves:
        np.testing.assert_array_equal(np.asarray(got)[2:4], np.asarray(start)[2:4])  # masked
        if np.issubdtype(np.asarray(got).dtype, np.floating) and np.asarray(got).ndim > 2:
            assert not np.array_equal(np.asarray(got)[:2], np.asarray(start)[:2])  # trained
    # Without the faults the run resumes from round 1 and finishes.
    monkeypatch.delenv("JFEDRL_FAULT")
    resumed = train(resume_config(run_dir, {"federation.rounds": 2}), resume=True, quiet=True)
    assert [r["round"] for r in resumed.records] == [1, 2]
    assert resumed.records[-1]["offload/clients_lost"] == 0


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {
                "federation__local_updates_dist": "uniform",
                "federation__local_updates_redraw": True,
                "federation__dropout_prob": 0.3,
                "federation__staleness": 2,
                "federation__staleness_decay": 0.5,
            },
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {
                "algo__name": "td3",
                "env__name": "Pendulum-v1",
                "algo__td3__critic_period": 1,
                "algo__td3__actor_period": 2,
            },
            marks=pytest.mark.slow,
        ),
    ],
    ids=["unequal-work-dropouts-staleness", "td3-periods"],
)
def test_per_client_work_and_start_params_offload_exactly(tmp_path, overrides):
    """Unequal local work, drop-outs, stale starts and per-component periods travel too."""
    rounds = 2 if overrides.get("algo__name") == "td3" else 3  # TD3: periods show in round 2
    values = dict(federation__rounds=rounds, log__rounds_per_block=rounds, **overrides)
    config = base_config(**values)
    want = train(with_run_dir(config, tmp_path / "inprocess"), quiet=True)
    got = train(local_config(tmp_path / "local", **values), quiet=True)
    if config.algo.name == "ppo":
        assert_same_run(got, want)
        return
    # TD3's update compiles to a different fusion alone than inside the whole round, so its
    # floats agree to rounding, which its training amplifies (to ~1e-4 over 3 rounds here),
    # not bit for bit (PPO's agree exactly). A wrong start (another client's params, the
    # global actor in round 2, a NaN) is off by far more.
    for a, b in zip(jax.tree.leaves(got.state), jax.tree.leaves(want.state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-2, atol=1e-3)


def test_one_non_finite_client_is_masked_not_its_shard(tmp_path, monkeypatch, pooled):
    """A worker returns NaN params for one client: only that client is left out, no retry."""
    monkeypatch.setenv("JFEDRL_FAULT", "nan:shard=2,round=0,attempt=*")
    result = train(local_config(tmp_path / "nan"), quiet=True, stop_after_round=1)
    (record,) = result.records
    assert record["offload/retries"] == 0 and record["offload/tasks_failed"] == 0
    assert record["offload/clients_rejected"] == 1 and record["clients_excluded"] == 1
    assert record["offload/clients_lost"] == 0
    log = (tmp_path / "nan" / "train.log").read_text()
    assert "returned non-finite values for client(s) 4" in log


def test_int8_transfer_reports_bytes_saved_and_error(tmp_path, pooled):
    config = local_config(tmp_path / "int8", offload__quantize="int8")
    # One round (the same config otherwise, so the pooled workers reuse their compiled step).
    result = train(config, quiet=True, stop_after_round=1)
    (record,) = result.records
    assert record["offload/bytes_saved"] > 0
    assert 0 < record["offload/quantize_error_sent"] < 0.01  # int8: at most ~1/254 per value
    assert 0 < record["offload/quantize_error_received"] < 0.01
    # One round from an int8 broadcast, with int8 updates back, lands within about the
    # quantisation error of the exact round's global params (and not on them).
    exact = train(local_config(tmp_path / "exact"), quiet=True, stop_after_round=1)
    got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(result.state.global_params)])
    want = np.concatenate([np.ravel(x) for x in jax.tree.leaves(exact.state.global_params)])
    relative = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < relative < 0.02, relative


def test_worker_cli_rejects_a_damaged_task(tmp_path):
    from offload.worker import Worker

    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / TASK_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(fmt.TaskError, match="task format 99"):
        Worker().run(task_dir, tmp_path / "out")
    fields = {"format": FORMAT, "run_id": "r", "round": 0, "shard": 0, "attempt": 0}
    fields.update(client_ids="0,1", quantize="none", config={}, inputs={})
    fields.update(op="train", state="task", revert=[], return_state=True)
    (task_dir / TASK_FILE).write_text(json.dumps(fields))
    with pytest.raises(fmt.TaskError, match="client_ids is missing or not a list"):
        Worker().run(task_dir, tmp_path / "out")
    (task_dir / TASK_FILE).write_text(json.dumps(dict(fields, client_ids=[0], quantize="x")))
    with pytest.raises(fmt.TaskError, match="quantize 'x'; allowed: none, float16, int8"):
        Worker().run(task_dir, tmp_path / "out")
    (task_dir / TASK_FILE).write_text(json.dumps(dict(fields, client_ids=[0], op="x")))
    with pytest.raises(fmt.TaskError, match="op 'x'; allowed: train, fetch"):
        Worker().run(task_dir, tmp_path / "out")
    (task_dir / TASK_FILE).write_text(json.dumps(dict(fields, client_ids=[0], revert=[5])))
    with pytest.raises(fmt.TaskError, match="revert must list some of the task's client ids"):
        Worker().run(task_dir, tmp_path / "out")
    (task_dir / TASK_FILE).write_text("not json")
    with pytest.raises(fmt.TaskError, match="not valid JSON"):
        Worker().run(task_dir, tmp_path / "out")


def test_config_errors_name_the_field(tmp_path):
    config = replace_path(base_config(), "offload.task_timeout", 0)
    with pytest.raises(ValueError, match="offload.task_timeout: must be > 0"):
        validate_local(config)
    config = replace_path(base_config(), "offload.executor", "golem")
    with pytest.raises(ValueError, match="offload.golem.image_hash / offload.golem.image_tag"):
        validate_golem(config)


def test_fault_op_filter_hits_state_fetches_only_when_asked():
    fetch, train_task = {"op": "fetch", "shard": 0, "attempt": 0}, {"op": "train", "shard": 0}
    (default,) = parse_faults("crash:shard=0")
    (fetches,) = parse_faults("crash:shard=0,op=fetch")
    (either,) = parse_faults("crash:shard=0,op=*")
    assert not default.matches(fetch) and default.matches(train_task | {"attempt": 0})
    assert fetches.matches(fetch) and not fetches.matches(train_task | {"attempt": 0})
    assert either.matches(fetch) and either.matches(train_task | {"attempt": 0})
    with pytest.raises(ValueError, match="op='eval'; allowed: train, fetch, \\*"):
        parse_faults("crash:op=eval")


def test_a_worker_killed_during_the_state_fetch_is_counted_and_its_folder_deleted(
    tmp_path, monkeypatch, pooled
):
    run_dir = tmp_path / "fetch"
    # The fetch before the checkpoint of round 1: shard 0's worker dies after writing; its
    # retry runs on the restarted worker, which no longer keeps the states (a cache miss).
    monkeypatch.setenv("JFEDRL_FAULT", "crash:shard=0,round=1,op=fetch")
    result = train(local_config(run_dir), quiet=True)
    assert int(result.state.round) == ROUNDS
    first, second = result.records
    assert first["offload/fetch_failed"] == 0 and first["offload/clients_rolled_back"] == 0
    # Counted in the next round's record (the fetch runs after its block's record is written).
    assert second["offload/fetch_failed"] == 1 and second["offload/clients_rolled_back"] == 2
    log = (run_dir / "train.log").read_text()
    assert "state fetch for the checkpoint of round 1 shard 0 attempt 0 on " in log
    assert "worker exited with code 17" in log
    assert "offload: round 2 shard 0" not in log  # not blamed on the next round
    assert "the worker keeping clients 0-1 is lost" in log
    assert sorted(p.name for p in (run_dir / "offload").glob("fetch-*")) == []
    assert sorted(p.name for p in (run_dir / "offload").glob("round-*")) == ["round-000001"]


def test_keep_tasks_keeps_the_state_fetch_folders(tmp_path, monkeypatch, pooled):
    monkeypatch.delenv("JFEDRL_FAULT", raising=False)
    run_dir = tmp_path / "kept"
    train(local_config(run_dir, offload__keep_tasks=True), quiet=True)
    fetches = sorted(p.name for p in (run_dir / "offload").glob("fetch-*"))
    assert fetches == ["fetch-000001", "fetch-000002"]


def test_local_workers_get_the_requestors_host_device_count():
    """A worker pads participants as the requestor does: it must see as many CPU devices.

    The requestor may have set its count through `jax_num_cpu_devices`, which a child
    process does not inherit, so the executor writes it into the workers' `XLA_FLAGS`.
    """
    import jax

    from offload import plugin

    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=99"}
    plugin._with_host_devices(env)
    flags = env["XLA_FLAGS"].split()
    assert flags == [
        "--xla_dump_to=/tmp/x",
        f"--xla_force_host_platform_device_count={jax.local_device_count()}",
    ]
