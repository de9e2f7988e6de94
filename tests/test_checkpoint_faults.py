"""Checkpoints that move between device layouts and cannot be silently corrupted (issue 26).

Each test backs a row of docs/reliability.md. A run of 3 clients on 2 devices pads
its participant slots to 4; the checkpoint must still resume and evaluate on 1, 2
or 3 devices, and in 1 process after 2. Multi-device runs are subprocesses with
XLA's host device count set (this process keeps its one device).
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from jfedrl.experiments.evaluate import evaluate_run
from jfedrl.run import runner
from jfedrl.run.checkpoint import MANIFEST, CheckpointError
from tests.helpers import tiny_config, with_run_dir

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("wall_seconds", "steps_per_second", "compile_seconds")
#: Peers' mixture communication: the padded peer slots are in the checkpoint.
MIXTURE = {"algo__ppo__comm_coef": 0.1, "algo__ppo__comm_reference": "mixture"}

LAYOUT_SCRIPT = """
import json, sys
import jax, numpy as np
from jfedrl.run import runner
from tests.helpers import tiny_config, with_run_dir
run_dir, stop, extra = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
if stop == 0:
    result = runner.train(runner.resume_config(run_dir), resume=True, quiet=True)
else:
    config = with_run_dir(tiny_config(**extra), run_dir)
    result = runner.train(config, quiet=True, stop_after_round=stop)
np.savez(run_dir + "/final.npz", *[np.asarray(x) for x in jax.tree.leaves(result.state)])
print(json.dumps({"devices": jax.device_count(), "round": int(result.state.round)}))
"""


def _in_layout(run_dir: Path, devices: int, stop: int = 0, **extra) -> dict:
    """Trains (`stop` > 0: until round `stop`) or resumes (0) `run_dir` on `devices` devices."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.pop("JFEDRL_HOST_DEVICES", None)
    out = subprocess.run(
        [sys.executable, "-c", LAYOUT_SCRIPT, str(run_dir), str(stop), json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done = json.loads(out.stdout.strip().splitlines()[-1])
    assert done["devices"] == devices
    return done


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _leaves(run_dir: Path) -> list[np.ndarray]:
    with np.load(run_dir / "final.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _assert_close_runs(run_dir: Path, reference: Path, leaves=None) -> None:
    """Same maths up to the float rounding of a sharded reduction: state and records."""
    for a, b in zip(_leaves(reference), leaves or _leaves(run_dir), strict=True):
        if a.shape != b.shape:  # the peers' slots: the padding past the participants is inert
            assert a.shape[1:] == b.shape[1:] and min(a.shape[0], b.shape[0]) >= 3
            a, b = a[:3], b[:3]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    got, want = _records(run_dir), _records(reference)
    assert [r.keys() for r in got] == [r.keys() for r in want]
    for a, b in zip(got, want, strict=True):
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """4 rounds of 3 clients on this process's one device."""
    assert jax.device_count() == 1
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = runner.train(with_run_dir(tiny_config(**MIXTURE), run_dir), quiet=True)
    np.savez(run_dir / "final.npz", *[np.asarray(x) for x in jax.tree.leaves(result.state)])
    return run_dir


# ------------------------------------------------------- 1: checkpoints across layouts


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    env.pop("JFEDRL_HOST_DEVICES", None)
    command = [sys.executable, "-m", "jfedrl.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_checkpoint_of_2_devices_resumes_and_evaluates_on_1(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    _in_layout(run_dir, devices=2, stop=2, **MIXTURE)  # 3 participants padded to 4 slots
    # `jfedrl eval --host-devices 1`: the return the run logged at round 2.
    done = _cli("eval", str(run_dir), "--host-devices", "1", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    mean = float(
        next(line for line in done.stdout.splitlines() if line.startswith("| all")).split("|")[2]
    )
    assert mean == pytest.approx(_records(run_dir)[1]["eval_return"], abs=0.006)
    result = runner.train(runner.resume_config(run_dir), resume=True, quiet=True)
    assert int(result.state.round) == 4
    assert result.state.peer_weights.shape == (3,)
    leaves = [np.asarray(x) for x in jax.tree.leaves(result.state)]
    _assert_close_runs(run_dir, uninterrupted, leaves)


def test_eval_rejects_a_bad_host_device_count(tmp_path):
    done = _cli("eval", str(tmp_path), "--host-devices", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jfedrl: error: --host-devices: must be a whole number >= 1, got '0'"
    ]


@pytest.mark.slow
def test_checkpoint_of_1_device_resumes_on_2(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    result = runner.train(
        with_run_dir(tiny_config(**MIXTURE), run_dir), quiet=True, stop_after_round=2
    )
    assert result.interrupted
    _in_layout(run_dir, devices=2)  # 3 slots re-padded to 4
    _assert_close_runs(run_dir, uninterrupted)


@pytest.mark.slow
def test_checkpoint_of_2_devices_resumes_on_3(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    _in_layout(run_dir, devices=2, stop=2, **MIXTURE)
    _in_layout(run_dir, devices=3)  # 4 slots cut to 3
    _assert_close_runs(run_dir, uninterrupted)


@pytest.mark.slow
def test_checkpoint_of_2_processes_resumes_in_1(uninterrupted, tmp_path):
    """Two processes of one device each (3 clients, 4 slots), resumed by one process."""
    from tests.test_distributed import _finish, _start_two

    run_dir = tmp_path / "run"
    flags = [  # tiny_config's run, as flags
        "--clients", "3", "--rounds", "2", "--federation.schedule-rounds", "4",
        "--local-updates", "2", "--ppo.num-envs", "2", "--ppo.num-steps", "16",
        "--ppo.num-minibatches", "2", "--ppo.update-epochs", "2",
        "--ppo.hidden-sizes", "16", "16", "--ppo.comm-coef", "0.1",
        "--ppo.comm-reference", "mixture", "--log.rounds-per-block", "2",
        "--log.eval-episodes", "2", "--log.tensorboard", "false", "--log.plot", "false",
        "--no-progress", "--quiet", "--run-dir", str(run_dir),
    ]  # fmt: skip
    _finish(_start_two(*flags))
    result = runner.train(
        runner.resume_config(run_dir, {"federation.rounds": 4}), resume=True, quiet=True
    )
    leaves = [np.asarray(x) for x in jax.tree.leaves(result.state)]
    _assert_close_runs(run_dir, uninterrupted, leaves)


@pytest.mark.slow
def test_evolutionary_checkpoint_on_another_layout_names_the_slots(tmp_path):
    """The population has one member per slot: a clear error, not 'corrupt'."""
    run_dir = tmp_path / "run"
    extra = {"strategy__name": "evolutionary", "federation__num_clients": 5}
    _in_layout(run_dir, devices=2, stop=1, **extra)  # 5 participants in 6 slots
    with pytest.raises(CheckpointError, match=r"written with 6 participant slots .* has 5"):
        evaluate_run(run_dir)
    assert (run_dir / "checkpoints" / "2" / MANIFEST).is_file()  # the run's own, intact


# ------------------------------------------------------- 2: damaged checkpoint files


def _largest_file(checkpoint: Path) -> Path:
    return max((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _copy(run_dir: Path, destination: Path) -> Path:
    shutil.copytree(run_dir, destination)
    return destination


def test_flipped_byte_falls_back_to_the_newest_intact_checkpoint(uninterrupted, tmp_path):
    run_dir = _copy(uninterrupted, tmp_path / "run")
    checkpoints = run_dir / "checkpoints"
    _flip_a_byte(_largest_file(checkpoints / "4"))
    logged = (run_dir / "train.log").stat().st_size
    result = runner.train(runner.resume_config(run_dir), resume=True, quiet=True)
    resume_log = (run_dir / "train.log").read_text()[logged:]
    damaged = [line for line in resume_log.splitlines() if "damaged" in line]
    assert len(damaged) == 1 and "WARNING" in damaged[0], resume_log
    assert "round 4 (" in damaged[0] and "does not match its digest" in damaged[0]
    assert "restoring round 2" in damaged[0]
    # Rounds 3-4 run again from round 2: exactly the uninterrupted run; round 4 saved anew.
    assert [a.tolist() for a in _leaves(uninterrupted)] == [
        np.asarray(x).tolist() for x in jax.tree.leaves(result.state)
    ]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "4.damaged"]
    assert (checkpoints / "4" / MANIFEST).is_file()


def test_eval_verifies_the_checkpoint_it_restores(uninterrupted, tmp_path):
    run_dir = _copy(uninterrupted, tmp_path / "run")
    _flip_a_byte(_largest_file(run_dir / "checkpoints" / "4"))
    with pytest.raises(CheckpointError, match=r"checkpoints/4' is damaged: .* digest"):
        evaluate_run(run_dir, round_index=4)
    assert evaluate_run(run_dir).round == 2  # the newest intact one, as a resume takes
    assert (run_dir / "checkpoints" / "4").is_dir()  # eval only reads


def test_no_intact_checkpoint_is_one_line_exit_2(uninterrupted, tmp_path):
    run_dir = _copy(uninterrupted, tmp_path / "run")
    for checkpoint in ("2", "4"):
        _flip_a_byte(_largest_file(run_dir / "checkpoints" / checkpoint))
    done = _cli("train", "--resume", str(run_dir), "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"jfedrl: error: no intact checkpoint in {str(run_dir / 'checkpoints')!r}: round 4 ("
    )
    assert "round 2 (" in lines[0]


def test_checkpoint_without_manifest_restores_unverified(uninterrupted, tmp_path, caplog):
    """Checkpoints written before manifests existed restore as before (an info line)."""
    run_dir = _copy(uninterrupted, tmp_path / "run")
    for manifest in (run_dir / "checkpoints").glob(f"*/{MANIFEST}"):
        manifest.unlink()
    jfedrl_log = logging.getLogger("jfedrl")
    propagate, jfedrl_log.propagate = jfedrl_log.propagate, True  # a train turns it off
    try:
        with caplog.at_level(logging.INFO, logger="jfedrl"):
            assert evaluate_run(run_dir).round == 4
    finally:
        jfedrl_log.propagate = propagate
    assert any("no digest manifest" in r.getMessage() for r in caplog.records)


def test_damaged_unverified_checkpoint_is_one_line(uninterrupted, tmp_path):
    """Without a manifest, a truncated file is found by the restore: still one line."""
    run_dir = _copy(uninterrupted, tmp_path / "run")
    newest = run_dir / "checkpoints" / "4"
    (newest / MANIFEST).unlink()
    largest = _largest_file(newest)
    largest.write_bytes(largest.read_bytes()[:100])
    done = _cli("eval", str(run_dir), "--host-devices", "1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoints/4' is corrupt" in lines[0], lines


def test_abandoned_orbax_reads_are_silenced_and_nothing_else(monkeypatch):
    """A failed restore's abandoned sibling reads print nothing; other reports still do."""
    from types import SimpleNamespace

    from jfedrl.run import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "filters", list(asyncio_log.filters))
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    checkpoint._silence_abandoned_reads()
    checkpoint._silence_abandoned_reads()  # installed once, not stacked
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(
            "coroutine '_read_array_index_and_device_put' was never awaited",
            RuntimeWarning,
            stacklevel=1,
        )
        warnings.warn("coroutine 'mine' was never awaited", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["coroutine 'mine' was never awaited"]

    def coroutine_from(filename: str) -> SimpleNamespace:
        return SimpleNamespace(cr_code=SimpleNamespace(co_filename=filename))

    orbax_file = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
    mine = SimpleNamespace(object=coroutine_from("/work/jfedrl/round/simulator.py"))
    sys.unraisablehook(SimpleNamespace(object=coroutine_from(orbax_file), exc_value=None))
    sys.unraisablehook(mine)
    assert seen == [mine]

    def record_raised_in(filename: str) -> logging.LogRecord:
        code = compile("raise ValueError('read')", filename, "exec")
        try:
            exec(code)
        except ValueError:
            exc_info = sys.exc_info()
        return logging.LogRecord("asyncio", logging.ERROR, "", 0, "never retrieved", (), exc_info)

    assert not asyncio_log.filter(record_raised_in(orbax_file))
    assert asyncio_log.filter(record_raised_in("/work/elsewhere.py"))
    assert asyncio_log.filter(logging.LogRecord("asyncio", logging.ERROR, "", 0, "x", (), None))
