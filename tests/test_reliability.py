"""Fault probes (issue 14): every fault a clear error, nothing lost, one run per folder.

Each test backs a row of docs/reliability.md. Full and read-only disks are real:
a small tmpfs (root, as in CI), else a chmod where that is enough.
"""

import dataclasses
import errno
import gc
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from jfedrl.cli import main as cli_main
from jfedrl.config import Config
from jfedrl.run import runner
from jfedrl.run.checkpoint import MANIFEST, Checkpointer, CheckpointError
from jfedrl.run.outputs import METRICS_FILE, RunDirError, RunLock, truncate_metrics
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import flat_fields, replace_path
from jfedrl.validation import validate
from offload import archive
from offload import task as fmt
from tests.helpers import tiny_config, with_run_dir

ROOT = Path(__file__).resolve().parent.parent
DROP = ("wall_seconds", "steps_per_second", "compile_seconds")
FLOAT_FIELDS = [path for path, annotation, _ in flat_fields(Config) if annotation is float]


def _maths(records):
    return [{k: v for k, v in r.items() if k not in DROP} for r in records]


def _assert_same_run(result, reference):
    for a, b in zip(jax.tree.leaves(reference.state), jax.tree.leaves(result.state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert _maths(result.records) == _maths(reference.records)


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jfedrl: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    config = with_run_dir(tiny_config(), tmp_path_factory.mktemp("uninterrupted"))
    return runner.train(config, quiet=True)


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts small tmpfs folders (`tmpfs(size)`), unmounted after the test."""
    mounted = []

    def mount(size: str, name: str = "fs", options: str = "") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        path = tmp_path / name
        path.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"this OS refuses a tmpfs mount: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _remount_read_only(path: Path, bind: bool = False) -> None:
    if bind:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def _fill(directory: Path, leave_bytes: int) -> Path:
    """Fills the filesystem of `directory` up to `leave_bytes` of free space."""
    stats = os.statvfs(directory)
    ballast = directory / "ballast"
    try:
        with open(ballast, "wb") as f:
            f.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave_bytes))
    except OSError as error:  # the last page may not fit: full is what we want
        assert error.errno == errno.ENOSPC, error
    return ballast


def _copy_of_round_2(uninterrupted, destination: Path) -> Path:
    """The uninterrupted run's folder as a crash right after round 2 leaves it."""
    shutil.copytree(uninterrupted.run_dir, destination, dirs_exist_ok=True)
    shutil.rmtree(destination / "checkpoints" / "4")
    return destination


# ---------------------------------------------------------------- 1: malicious archives


def _archive(*entries: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("state", b"x"), ("state/x", b"y")], "needs a folder where the entry 'state' is a file"),
        ([("state/x", b"y"), ("state", b"x")], "is a file where another entry needs a folder"),
        ([("a/b", b"x"), ("a/./b", b"y")], "appears twice"),
        ([("n" * 300, b"x")], "has a name longer than 255 bytes"),
        ([("/".join(["d" * 200] * 25), b"x")], "makes a path longer than 4096 bytes"),
    ],
    ids=["file-then-dir", "dir-then-file", "duplicate", "300-char-name", "5000-char-path"],
)
def test_malicious_archive_is_a_bad_result_not_a_crash(entries, message, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(fmt.TaskError, match=message):
        archive.unpack(_archive(*entries), out, max_bytes=10_000)
    assert not out.exists() or not any(out.rglob("*")), "nothing is written before the checks"


def test_archive_clashing_with_the_destination_is_a_bad_result(tmp_path):
    out = tmp_path / "out"
    (out / "state").mkdir(parents=True)
    with pytest.raises(fmt.TaskError, match="'state' cannot be written"):
        archive.unpack(_archive(("state", b"x")), out, max_bytes=10_000)


def test_archive_on_a_full_local_disk_stops_offloading(tmpfs):
    disk = tmpfs("64k")
    with pytest.raises(archive.OffloadError, match="cannot unpack a result into .*No space left"):
        archive.unpack(_archive(("big", os.urandom(100_000))), disk / "out", max_bytes=200_000)


# ---------------------------------------------------------------- 3: all updates excluded


def test_all_updates_excluded_reports_and_continues(tmp_path):
    config = with_run_dir(
        tiny_config(algo__ppo__learning_rate=1e30, federation__rounds=2), tmp_path / "run"
    )
    result = runner.train(config, quiet=True)
    last = result.records[-1]
    assert last["round"] == 2 and (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert last["clients_excluded"] == last["clients_participating"] > 0
    assert last["train_return_mean"] is None
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "every client update was excluded" in log_text
    assert "train return n/a" in log_text


# ---------------------------------------------------------------- 4: non-finite config values


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", FLOAT_FIELDS)
def test_non_finite_value_is_rejected_naming_the_field(path, value):
    with pytest.raises(ConfigError, match=rf"^{path}: must be a finite number, got '{value}'$"):
        replace_path(Config(), path, value)


def _set_unchecked(config, path: str, value):
    head, _, rest = path.partition(".")
    inner = _set_unchecked(getattr(config, head), rest, value) if rest else value
    return dataclasses.replace(config, **{head: inner})


@pytest.mark.parametrize("path", FLOAT_FIELDS)
def test_non_finite_value_set_in_code_fails_validation(path):
    with pytest.raises(ConfigError, match=rf"^{path}: must be a finite number, got nan$"):
        validate(_set_unchecked(tiny_config(), path, math.nan))


def test_non_finite_values_inside_mappings_are_rejected():
    config = _set_unchecked(tiny_config(), "env.ranges", {"length": [0.3, math.inf]})
    with pytest.raises(ConfigError, match=r"^env.ranges.length\[1\]: must be a finite number"):
        validate(config)


def test_non_finite_cli_flag_and_yaml_value_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "--participation", "nan", "--run-dir", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys)
    assert line == "jfedrl: error: federation.participation: must be a finite number, got 'nan'"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("offload:\n  task_timeout: .inf\n")
    assert cli_main(["train", "--config", str(yaml_file)]) == 2
    assert "offload.task_timeout: must be a finite number, got inf" in _one_error_line(capsys)
    assert not (tmp_path / "a").exists()


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("federation:\n  num_clients: [3\n  rounds: 2\n")
    assert cli_main(["train", "--config", str(yaml_file)]) == 2
    line = _one_error_line(capsys)
    assert f"config file {str(yaml_file)!r} is not valid YAML: " in line
    assert "at line " in line


# ---------------------------------------------------------------- 5: one run per folder


def test_concurrent_runs_on_one_folder_second_fails_naming_the_holder(
    uninterrupted, tmp_path, capsys
):
    run_dir = shutil.copytree(uninterrupted.run_dir, tmp_path / "run")
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", METRICS_FILE)}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from jfedrl.run.outputs import RunLock; "
            "lock = RunLock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
            str(run_dir),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        expected = (
            f"jfedrl: error: log.run_dir: {str(run_dir)!r} is in use by another run "
            f"(pid {holder.pid} on {socket.gethostname()}); wait for it to end or choose "
            "another --run-dir"
        )
        assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
        assert _one_error_line(capsys) == expected
        config = with_run_dir(tiny_config(), run_dir)
        with pytest.raises(RunDirError, match="is in use by another run"):
            runner.train(config, quiet=True)
        assert {n: (run_dir / n).read_bytes() for n in before} == before
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    with RunLock(run_dir):
        with pytest.raises(RunDirError, match=rf"\(pid {os.getpid()} on "):
            RunLock(run_dir)
    RunLock(run_dir).release()  # released on exit of the `with`


# ---------------------------------------------------------------- 6: unusable run folder


@pytest.mark.parametrize("case", ["file", "under-a-file", "read-only"])
def test_unusable_run_dir_is_one_line_exit_2(case, tmp_path, capsys, request):
    if case == "read-only":
        if os.geteuid() == 0:
            run_dir = request.getfixturevalue("tmpfs")("1m", options="ro") / "run"
        else:
            (tmp_path / "ro").mkdir(mode=0o555)
            run_dir = tmp_path / "ro" / "run"
        reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
        expected = f"log.run_dir: {str(run_dir)!r} cannot be used: {reason}"
    else:
        (tmp_path / "file").write_text("not a folder")
        run_dir = tmp_path / "file" if case == "file" else tmp_path / "file" / "run"
        expected = f"log.run_dir: {str(run_dir)!r} is not a folder (a file is in the way)"
    assert cli_main(["train", "--run-dir", str(run_dir), "--clients", "2"]) == 2
    assert _one_error_line(capsys) == f"jfedrl: error: {expected}"


# ---------------------------------------------------------------- 7: checkpoint saves


def test_failed_save_raises_at_once_and_leaves_no_thread(tmpfs):
    disk = tmpfs("4m")
    checkpointer = Checkpointer(disk / "checkpoints", 3)
    checkpointer.save(1, {"a": np.ones(3)}, {"round": 1})
    _remount_read_only(disk)
    threads = set(threading.enumerate())
    with pytest.raises(CheckpointError) as error:
        checkpointer.save(2, {"a": np.ones(3)}, {"round": 2})
    assert str(error.value) == (
        f"checkpoint of round 2 could not be saved in {str(disk / 'checkpoints')!r}: "
        "Read-only file system; the checkpoint of round 1 is intact"
    )
    # orbax's async saves left a thread waiting 300 s on a barrier, delaying the exit. (An
    # idle `asyncio_N` executor thread that an event loop in this process starts lazily, the
    # first time it is needed, is not one of them.)
    left = set(threading.enumerate()) - threads
    assert [t.name for t in left if t.is_alive() and not t.name.startswith("asyncio_")] == []
    checkpointer.close()
    assert Checkpointer(disk / "checkpoints").rounds() == [1]


@pytest.mark.slow
def test_full_disk_names_the_checkpoint_error_keeps_round_2_and_resumes(
    uninterrupted, tmpfs, capsys
):
    run_dir = _copy_of_round_2(uninterrupted, tmpfs("8m") / "run")
    ballast = _fill(run_dir.parent, leave_bytes=64 << 10)
    code = cli_main(
        ["train", "--resume", str(run_dir), "--quiet", "--no-progress", "--log.plot", "true"]
    )
    assert code == 2
    assert _one_error_line(capsys) == (
        f"jfedrl: error: checkpoint of round 4 could not be saved in "
        f"{str(run_dir / 'checkpoints')!r}: No space left on device; "
        "the checkpoint of round 2 is intact"
    )
    curve = run_dir / "learning_curve.png"
    assert not curve.exists() or curve.stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2"]
    ballast.unlink()
    resumed = runner.train(runner.resume_config(run_dir), resume=True, quiet=True)
    _assert_same_run(resumed, uninterrupted)


def test_read_only_checkpoints_fail_fast_with_one_line(uninterrupted, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    run_dir = _copy_of_round_2(uninterrupted, tmp_path / "run")
    _remount_read_only(run_dir / "checkpoints", bind=True)
    try:
        code = cli_main(["train", "--resume", str(run_dir), "--quiet", "--no-progress"])
    finally:
        subprocess.run(["umount", "-l", str(run_dir / "checkpoints")], check=False)
    assert code == 2
    assert _one_error_line(capsys).endswith(
        ": Read-only file system; the checkpoint of round 2 is intact"
    )


KILL_DURING_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
from jfedrl.run import runner
from jfedrl.run.checkpoint import Checkpointer
from tests.helpers import tiny_config, with_run_dir

saving = []
save, finalize = Checkpointer.save, atomicity.AtomicRenameTemporaryPath.finalize

def recording_save(self, round_index, *args):
    saving.append(round_index)
    return save(self, round_index, *args)

async def killing_finalize(self, *args, **kwargs):
    if saving[-1] == 4:  # round 4's files are written, not yet renamed into place
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)

Checkpointer.save = recording_save
atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
runner.train(with_run_dir(tiny_config(), sys.argv[1]), quiet=True)
"""


def test_kill_9_during_a_checkpoint_write_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(run_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert Checkpointer(run_dir / "checkpoints").rounds() == [2]
    assert len((run_dir / METRICS_FILE).read_text().splitlines()) == 4  # written before the save
    resumed = runner.train(runner.resume_config(run_dir), resume=True, quiet=True)
    _assert_same_run(resumed, uninterrupted)


# ---------------------------------------------------------------- also


def test_metrics_rewrite_on_resume_replaces_the_file(uninterrupted, tmp_path):
    run_dir = shutil.copytree(uninterrupted.run_dir, tmp_path / "run")
    path = run_dir / METRICS_FILE
    old_inode = path.stat().st_ino
    kept = truncate_metrics(run_dir, 2)
    assert [r["round"] for r in kept] == [1, 2]
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [1, 2]
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one
    assert sorted(p.name for p in run_dir.glob(METRICS_FILE + "*")) == [METRICS_FILE]


def test_metrics_rewrite_failure_leaves_the_history_whole(uninterrupted, tmpfs):
    disk = tmpfs("1m")
    metrics = Path(shutil.copy(uninterrupted.run_dir / METRICS_FILE, disk / METRICS_FILE))
    history = metrics.read_bytes()
    _fill(disk, leave_bytes=0)
    with pytest.raises(RunDirError, match="cannot rewrite .*No space left on device"):
        truncate_metrics(disk, 2)
    assert metrics.read_bytes() == history
    assert sorted(p.name for p in disk.iterdir()) == ["ballast", METRICS_FILE]


def test_config_into_a_closed_pipe_prints_no_traceback():
    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "jfedrl.cli", "config"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader_gone.stdout.close()  # like `| head` exiting before jfedrl writes
    stderr = reader_gone.stderr.read()
    assert reader_gone.wait() == 141
    assert stderr == ""


# ---------------------------------------------------------------- huge integers, bad flag values


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--clients", "100000000000000000000"], "federation.num_clients: must be an integer in"),
        (["--rounds", str(10**30)], "federation.rounds: must be an integer in [-2**63, 2**63)"),
        (["--clients", "3000000000"], "federation.num_clients: must be in [-2**31, 2**31)"),
        (["--seed", str(2**64)], "seed: must be an integer in [-2**63, 2**63)"),
        (["--seed", str(2**32)], "seed: must be in [0, 2**32)"),
        (["--seed", "-1"], "seed: must be in [0, 2**32)"),
        (["--clients", "1e400"], "federation.num_clients: expected an integer, got '1e400'"),
        (["--env.ranges", "{length: [0.9"], "env.ranges: not valid YAML: "),
        (["--ppo.learning-rate", "-inf"], "algo.ppo.learning_rate: must be a finite number"),
        (["--ppo.learning-rate", "-1e-3"], "algo.ppo.learning_rate: must be > 0, got -0.001"),
    ],
)
def test_huge_integers_and_bad_flag_values_are_one_line_before_a_folder(
    flags, message, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert cli_main(["train", *flags, "--run-dir", str(run_dir)]) == 2
    assert message in _one_error_line(capsys)
    assert not run_dir.exists()


def test_yaml_int_fields_are_exact_and_bounded(tmp_path, capsys):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"federation:\n  num_clients: {10**400}\n")
    assert cli_main(["train", "--config", str(yaml_file)]) == 2
    assert "federation.num_clients: must be an integer in" in _one_error_line(capsys)
    exact = replace_path(Config(), "federation.rounds", str(2**53 + 1)).federation.rounds
    assert exact == 2**53 + 1  # digits are not rounded through a float


# ---------------------------------------------------------------- resume edge cases


@pytest.fixture(scope="module")
def stopped_at_2(tmp_path_factory):
    config = with_run_dir(tiny_config(), tmp_path_factory.mktemp("stopped"))
    return runner.train(config, quiet=True, stop_after_round=2).run_dir


def test_resume_with_rounds_below_those_run_is_one_line(uninterrupted, tmp_path, capsys):
    run_dir = shutil.copytree(uninterrupted.run_dir, tmp_path / "run")
    saved = (run_dir / "config.yaml").read_bytes()
    assert cli_main(["train", "--resume", str(run_dir), "--rounds", "2", "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "federation.rounds: 2 is below the 4 rounds this run has already run" in line
    assert (run_dir / "config.yaml").read_bytes() == saved


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_resume_with_damaged_metrics_warns_naming_the_rounds_and_keeps_garbage(
    damage, stopped_at_2, uninterrupted, tmp_path
):
    run_dir = shutil.copytree(stopped_at_2, tmp_path / "run")
    metrics = run_dir / METRICS_FILE
    lines = metrics.read_text().splitlines()
    if damage == "deleted":
        metrics.unlink()
    else:  # round 1's line overwritten by junk, round 2's kept
        metrics.write_bytes(b"\x00\xffnot json\n42\n" + lines[1].encode() + b"\n")
    resumed = runner.train(runner.resume_config(run_dir), resume=True, quiet=True)
    assert int(resumed.state.round) == 4
    warnings = [line for line in (run_dir / "train.log").read_text().splitlines() if "WARN" in line]
    missing = "round(s) 1-2 of the 2" if damage == "deleted" else "round(s) 1 of the 2"
    assert any(f"metrics.jsonl: {missing} already run are missing" in w for w in warnings)
    kept = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert kept == ([3, 4] if damage == "deleted" else [2, 3, 4])
    assert _maths(resumed.records) == _maths(uninterrupted.records)[4 - len(kept) :]
    aside = run_dir / (METRICS_FILE + ".corrupt")
    if damage == "garbage":
        assert aside.read_bytes() == "\x00\ufffdnot json\n42\n".encode()
    else:
        assert not aside.exists()


# ---------------------------------------------------------------- signals: SIGTERM, early Ctrl-C

TRAIN_FLAGS = [
    "--clients", "2", "--rounds", "400", "--local-updates", "1", "--ppo.num-envs", "2",
    "--ppo.num-steps", "16", "--ppo.num-minibatches", "2", "--ppo.hidden-sizes", "8",
    "--log.rounds-per-block", "1", "--log.tensorboard", "false", "--log.plot", "false",
    "--no-progress",
]  # fmt: skip


class _Train:
    """A `jfedrl train` subprocess whose output lines are collected as they come."""

    def __init__(self, run_dir: Path, command: list[str] | None = None):
        self.run_dir = run_dir
        command = command or ["train", "--run-dir", str(run_dir), *TRAIN_FLAGS]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jfedrl.cli", *command],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, ready, limit: float = 300) -> None:
        """Polls until `ready()` (a line, a file); the limit only stops a hung test."""
        import time

        start = time.monotonic()
        while not ready():
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() - start < limit, "".join(self.lines)
            time.sleep(0.05)

    def signal_and_wait(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=300)
        self._reader.join(timeout=10)
        return code, "".join(self.lines)


def _has_line(train: _Train, text: str):
    return lambda: any(text in line for line in train.lines)


def test_sigterm_finishes_the_block_checkpoints_and_exits_143(tmp_path):
    train = _Train(tmp_path / "run")
    train.wait_for(_has_line(train, "round 2/400"))
    code, output = train.signal_and_wait(signal.SIGTERM)
    assert code == 143, output
    assert "Traceback" not in output and "Exception ignored" not in output
    assert "SIGTERM: finishing this block, then checkpointing" in output
    assert (
        f"terminated (SIGTERM), checkpointed; resume with: jfedrl train --resume {train.run_dir}"
        in output
    )
    rounds = sorted(
        int(p.name) for p in (train.run_dir / "checkpoints").iterdir() if p.name.isdigit()
    )
    records = [json.loads(x) for x in (train.run_dir / METRICS_FILE).read_text().splitlines()]
    assert rounds and rounds[-1] >= 2 and records[-1]["round"] == rounds[-1]


def test_sigterm_stops_a_sweep_after_the_block_and_exits_143(tmp_path):
    import yaml

    base = {
        "federation": {"num_clients": 2, "rounds": 400, "local_updates": 1},
        "algo": {
            "ppo": {"num_envs": 2, "num_steps": 16, "num_minibatches": 2, "hidden_sizes": [8]}
        },
        "log": {"rounds_per_block": 1, "tensorboard": False, "plot": False},
    }
    grid = {"algo.ppo.learning_rate": [1e-3, 2e-3]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "term", "base": base, "grid": grid, "seeds": [0]}))
    out = tmp_path / "out"
    sweep = _Train(out, ["sweep", str(path), "--out", str(out), "--no-progress"])
    sweep.wait_for(
        lambda: any(_read_or_empty(p).count("\n") >= 2 for p in out.glob(f"runs/*/{METRICS_FILE}"))
    )
    code, output = sweep.signal_and_wait(signal.SIGTERM)
    assert code == 143, output
    assert "Traceback" not in output and "Exception ignored" not in output
    assert f"terminated (SIGTERM), checkpointed; resume with: jfedrl sweep --resume {out}" in output
    for run_dir in (out / "runs").iterdir():
        records = [json.loads(x) for x in (run_dir / METRICS_FILE).read_text().splitlines()]
        rounds = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
        assert rounds and max(rounds) == records[-1]["round"] < 400


@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("before jax starts", signal.SIGINT),
        ("before jax starts", signal.SIGTERM),
        ("while it compiles", signal.SIGINT),
        ("while it compiles", signal.SIGTERM),
    ],
)
def test_a_signal_during_start_up_stops_the_run_with_one_line(moment, signum, tmp_path):
    train = _Train(tmp_path / "run")
    if moment == "before jax starts":  # the CLI's first line, printed before jax is imported
        train.wait_for(_has_line(train, "XLA host device(s)"))
    else:  # the run folder is set up; the first block compiles
        train.wait_for(lambda: "run folder:" in _read_or_empty(train.run_dir / "train.log"))
    code, output = train.signal_and_wait(signum)
    expected = {
        signal.SIGINT: (130, "jfedrl: aborted"),
        signal.SIGTERM: (143, "jfedrl: terminated"),
    }
    assert "Traceback" not in output and "Exception ignored" not in output, output
    if code == expected[signum][0] and expected[signum][1] in output:
        return
    # A signal that lands once the training loop holds the handlers stops after a block.
    assert code == expected[signum][0] and "resume with: jfedrl train --resume" in output, output


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_signal_inside_a_gc_callback_still_stops_the_run():
    from jfedrl.run import signals

    previous = signal.getsignal(signal.SIGINT)
    fired: list[str] = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(phase)
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the callback

    signals.install()
    gc.callbacks.append(callback)
    try:
        with pytest.raises(KeyboardInterrupt):
            gc.collect()
            for _ in range(3000):  # the signal comes back once the callback has returned
                threading.Event().wait(0.01)
    finally:
        gc.callbacks.remove(callback)
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert fired == ["start"]


# ---------------------------------------------------------------- orbax's late callbacks


def test_a_damaged_manifest_prints_no_closed_event_loop_tracebacks(uninterrupted, tmp_path):
    run_dir = shutil.copytree(uninterrupted.run_dir, tmp_path / "run")
    newest = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    (run_dir / "checkpoints" / str(newest) / "state" / "manifest.ocdbt").write_bytes(b"garbage")
    # Without digest manifests the damage reaches orbax's own reads (with them it is found first).
    for manifest in (run_dir / "checkpoints").glob(f"*/{MANIFEST}"):
        manifest.unlink()
    reported: list[BaseException] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: reported.append(unraisable.exc_value)
    try:
        for _ in range(6):  # each failed restore leaves reads in flight, completing late
            checkpointer = Checkpointer(run_dir / "checkpoints")
            with pytest.raises(CheckpointError, match="is corrupt"):
                checkpointer.restore(uninterrupted.state)
            checkpointer.close()
        threading.Event().wait(0.5)  # the last late callbacks
        gc.collect()

        class Unrelated:
            def __del__(self):
                raise ValueError("an unrelated finalizer error")

        Unrelated()  # still reaches the hook installed before
    finally:
        sys.unraisablehook = previous
    assert [str(e) for e in reported] == ["an unrelated finalizer error"]


def test_a_failed_resume_closes_the_checkpoint_manager(uninterrupted, tmp_path, monkeypatch):
    run_dir = shutil.copytree(uninterrupted.run_dir, tmp_path / "run")
    closed: list[Path] = []
    close = Checkpointer.close
    monkeypatch.setattr(
        Checkpointer, "close", lambda self: (closed.append(self.directory), close(self))
    )
    with pytest.raises(ConfigError, match="federation.rounds: 2 is below"):
        runner.train(
            runner.resume_config(run_dir, {"federation.rounds": 2}), resume=True, quiet=True
        )
    assert closed == [(run_dir / "checkpoints").absolute()]


# ---------------------------------------------------------------- memory, host devices


def test_a_run_too_big_for_memory_is_refused_before_its_state_is_built(
    tmp_path, monkeypatch, capsys
):
    from jfedrl.run import devices

    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: 2**14)  # 16 KiB
    run_dir = tmp_path / "run"
    flags = ["train", "--run-dir", str(run_dir), "--clients", "3", "--rounds", "2",
             "--local-updates", "1", "--ppo.num-envs", "2", "--ppo.num-steps", "16",
             "--ppo.num-minibatches", "2", "--ppo.hidden-sizes", "8",
             "--log.rounds-per-block", "2", "--log.tensorboard", "false",
             "--log.plot", "false", "--no-progress", "--quiet"]  # fmt: skip
    assert cli_main(flags) == 2
    line = _one_error_line(capsys)
    assert "federation.num_clients: 3 clients need about " in line
    assert " MiB (the compiled block on " in line and "0.02 MiB is available; about " in line
    assert line.endswith("Use fewer clients, or --force-memory to run anyway")
    fit = int(line.split("about ")[-1].split(" clients fit")[0])
    assert 0 <= fit < 3
    # Refused before the state is built (env_params.json) or config.yaml is written.
    assert not (run_dir / "env_params.json").exists() and not (run_dir / "config.yaml").exists()
    # --force-memory: the user knows better (here: the estimate is patched, not the machine).
    assert cli_main([*flags, "--force-memory"]) == 0
    assert [r["round"] for r in runner.read_metrics(run_dir)] == [1, 2]


@pytest.mark.parametrize("flag", ["--host-devices", "env"])
def test_host_devices_above_the_bound_are_one_line(flag, tmp_path):
    from jfedrl.run import devices

    limit = devices.max_host_devices()
    args = [sys.executable, "-m", "jfedrl.cli", "train", "--run-dir", str(tmp_path / "r")]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", devices.ENV_VAR)}
    if flag == "env":
        env[devices.ENV_VAR] = "100000"
    else:
        args += ["--host-devices", "100000"]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    where = "--host-devices" if flag != "env" else devices.ENV_VAR
    assert out.stderr == f"jfedrl: error: {where}: must be at most {limit} (max(64, 8 x " + (
        f"{devices.usable_cores()} usable cores)), got '100000'\n"
    )
    assert not (tmp_path / "r").exists()


def _write_task(task_dir: Path, config: dict, client_ids: list[int]) -> None:
    """A task folder with no input arrays: a worker refuses it before it reads any."""
    task_dir.mkdir(parents=True)
    header = fmt.TaskHeader(
        run_id="r", round=0, shard=0, client_ids=tuple(client_ids), quantize="none",
        config=config, inputs={},
    )  # fmt: skip
    (task_dir / fmt.TASK_FILE).write_text(json.dumps(header.to_json()))


def test_a_worker_given_a_huge_federation_answers_in_one_line(tmp_path):
    # A 2-client shard of 2**31 - 1 clients: the worker builds only the shard and the
    # peer weights every task carries (4 bytes per participant), so it refuses the task
    # if those do not fit, else goes on to read its inputs (absent here): one line
    # either way, never a hang or an OOM kill.
    import psutil

    from offload.worker import HOST_COPIES

    num_clients = 2**31 - 1
    _write_task(tmp_path / "task", {"federation": {"num_clients": num_clients}}, [0, 1])
    done = subprocess.run(
        [sys.executable, "-m", "offload.worker", "--input", "task", "--output", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # a worker that traced the whole federation would hang or be killed
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    refused = HOST_COPIES * 4 * num_clients > psutil.virtual_memory().available
    expected = f"federation.num_clients: {num_clients} clients" if refused else "inputs/ is missing"
    assert line.startswith(f"jfedrl offload worker: error: {expected}"), line
    assert not (tmp_path / "out").exists()


def test_a_worker_refuses_a_federation_whose_peer_arrays_do_not_fit(tmp_path, monkeypatch):
    from offload import worker

    _write_task(tmp_path / "task", {"federation": {"num_clients": 10**6}}, [0, 1])
    monkeypatch.setattr(worker, "available_bytes", lambda: 2**20)
    with pytest.raises(fmt.TaskError) as error:
        worker.Worker().run(tmp_path / "task", tmp_path / "out")
    assert str(error.value) == (
        "federation.num_clients: 1000000 clients: the peer arrays every task carries need "
        "about 11.44 MiB, this worker has 1.00 MiB available"
    )


def test_a_worker_refuses_a_shard_too_big_for_it_naming_the_limit(tmp_path, monkeypatch):
    from offload import worker
    from offload.requestor import task_config

    config = task_config(tiny_config(federation__num_clients=4))
    _write_task(tmp_path / "task", config, [0, 1, 2, 3])
    monkeypatch.setattr(worker, "available_bytes", lambda: 1024)
    with pytest.raises(fmt.TaskError) as error:
        worker.Worker().run(tmp_path / "task", tmp_path / "out")
    message = str(error.value)
    assert message.startswith("client_ids: a shard of 4 clients needs about ")
    assert "this worker has 0.00 MiB available; about 0 clients fit" in message


def test_a_worker_refuses_client_ids_outside_the_federation(tmp_path):
    from offload.worker import Worker

    _write_task(tmp_path / "task", {"federation": {"num_clients": 4}}, [3, 4])
    with pytest.raises(fmt.TaskError, match=r"client_ids: must be distinct clients in \[0, 4\)"):
        Worker().run(tmp_path / "task", tmp_path / "out")


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"federation__staleness": 1},
        {"federation__participation": 0.5},
        {"algo__ppo__comm_coef": 0.1, "algo__ppo__comm_reference": "mixture"},  # peer params
    ],
)
def test_worker_shapes_of_a_shard_equal_those_traced_over_the_federation(overrides):
    from jfedrl.round.simulator import make_simulator
    from offload.shapes import shard_shapes
    from offload.worker import Worker

    simulator = make_simulator(tiny_config(federation__num_clients=6, **overrides))
    whole, shard = shard_shapes(simulator, 2), Worker()._shapes(simulator, 2)
    assert jax.tree.structure(whole) == jax.tree.structure(shard)
    assert jax.tree.leaves(whole) == jax.tree.leaves(shard)


def _real_task(task_dir: Path) -> None:
    """A real train task for clients 0 and 1 of a 4-client federation (what the
    requestor writes, built here from the simulator's first round).
    """
    from jfedrl.round.simulator import make_simulator
    from offload.archive import digest_tree, save_arrays
    from offload.requestor import task_config
    from offload.shapes import encode_group, strip_params

    config = tiny_config(federation__num_clients=4)
    simulator = make_simulator(config)
    inputs = jax.device_get(simulator.begin_round(simulator.init(jax.random.PRNGKey(0))))
    rows = jax.tree.map(lambda x: np.asarray(x)[:2], inputs)  # the shard's clients
    trees = {
        "global": inputs.reference.global_params,
        "peers": inputs.reference.peer_params,
        "peer_weights": inputs.reference.peer_weights,
        "clients": jax.device_get(strip_params(simulator.algorithm, rows.clients)),
        "env": rows.env_params,
        "keys": rows.client_keys,
    }
    arrays = {}
    for group, tree in trees.items():
        arrays.update(encode_group(group, tree, "none", False, group == "peers")[0])
    task_dir.mkdir(parents=True)
    save_arrays(task_dir / fmt.INPUTS_DIR, arrays)
    header = fmt.TaskHeader(
        run_id="r", round=0, shard=0, client_ids=(0, 1), quantize="none",
        config=task_config(config), inputs=digest_tree(task_dir, exclude=(fmt.TASK_FILE,)),
    )  # fmt: skip
    (task_dir / fmt.TASK_FILE).write_text(json.dumps(header.to_json()))


def test_a_worker_refuses_a_shard_whose_compiled_training_does_not_fit(tmp_path, monkeypatch):
    from jfedrl.run import devices
    from offload.worker import Worker

    _real_task(tmp_path / "task")
    worker = Worker()
    report, _ = worker.run(tmp_path / "task", tmp_path / "out")  # fits: trains the shard
    assert report.client_ids == (0, 1) and report.env_steps > 0
    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: 1024)
    with pytest.raises(fmt.TaskError) as error:
        worker.run(tmp_path / "task", tmp_path / "again")
    message = str(error.value)
    assert message.startswith("client_ids: a shard of 2 clients needs about ")
    assert "(the compiled local training), this worker has 0.00 MiB available" in message
    assert not (tmp_path / "again" / fmt.REPORT_FILE).exists()
