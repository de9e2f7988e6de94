"""A run folder written before issue 21's restructuring (tests/fixtures/run-v0: ppo, fedadam
with server_lr 0.01, 2 clients, 1 round) still loads, resumes, evaluates and compares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jfedrl.config import load_yaml
from jfedrl.run.outputs import read_metrics

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "run-v0"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "jfedrl.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The fixture's copy, resumed from round 1 to round 2 (the anneal restarts)."""
    run_dir = tmp_path_factory.mktemp("compat") / "run-v0"
    shutil.copytree(FIXTURE, run_dir)
    result = _cli(
        "train",
        "--resume",
        str(run_dir),
        "--rounds",
        "2",
        "--extend",
        "restart",
        "--no-progress",
        "--quiet",
    )
    return run_dir, result


def test_old_config_loads():
    config = load_yaml(FIXTURE / "config.yaml")
    assert config.strategy.name == "fedadam"
    assert config.strategy.fedadam.lr == 0.01  # upgraded from the old flat strategy.server_lr
    assert config.federation.num_clients == 2
    assert config.federation.rounds == 1


def test_old_run_resumes_to_two_rounds(resumed):
    run_dir, result = resumed
    assert result.returncode == 0, result.stderr
    assert [r["round"] for r in read_metrics(run_dir)] == [1, 2]
    assert (run_dir / "checkpoints" / "2").is_dir()
    assert load_yaml(run_dir / "config.yaml").federation.rounds == 2


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_old_run_evaluates_and_compares(resumed, tmp_path, command):
    run_dir, _ = resumed
    result = _cli(command, str(run_dir), "--out", str(tmp_path / command))
    assert result.returncode == 0, result.stderr
    assert any((tmp_path / command).iterdir())
