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


def test_an_old_flag_exits_2_naming_its_new_paths():
    result = _cli("train", "--strategy.server-lr", "0.1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "renamed" in lines[0]
    for new in ("strategy.fedavgm.lr", "strategy.fedadam.lr", "strategy.fedyogi.lr"):
        assert new in lines[0], lines[0]
    assert not result.stdout


RENAMES = {
    "strategy.server_lr": ("strategy.fedavgm.lr", "strategy.fedadam.lr"),
    "strategy.krum_f": ("strategy.krum.f", "strategy.multi_krum.f"),
    "strategy.trim_beta": ("strategy.trimmed_mean.beta",),
    "strategy.beta1": ("strategy.fedadam.beta1",),
}
DEFAULTS = {
    "strategy.name": "fedavg",
    "strategy.fedavgm.lr": 1.0,
    "strategy.fedadam.lr": 1.0,
    "strategy.krum.f": 1,
    "strategy.multi_krum.f": 1,
    "strategy.trimmed_mean.beta": 0.1,
    "strategy.fedadam.beta1": 0.9,
}


def test_upgrade_moves_old_keys_under_the_files_own_rule(caplog):
    from jfedrl.schema.legacy import upgrade

    data = {
        "seed": 3,
        "strategy": {"name": "fedadam", "server_lr": 0.01, "krum_f": 2, "trim_beta": 0.2},
        "strategy.beta1": 0.8,  # a dotted key at the top level
    }
    with caplog.at_level("WARNING", logger="jfedrl"):
        out = upgrade(data, RENAMES, DEFAULTS)
    assert out == {
        "seed": 3,
        "strategy": {"name": "fedadam"},
        "strategy.fedadam.lr": 0.01,  # the file's own rule only, not fedavgm's copy
        "strategy.trimmed_mean.beta": 0.2,  # a key with one new path moves whatever the rule
        "strategy.fedadam.beta1": 0.8,
    }
    assert data["strategy"]["server_lr"] == 0.01  # the input is left as it was
    # krum_f=2 reached no rule of this run and differs from its default: it is logged.
    assert any("strategy.krum_f" in r.getMessage() for r in caplog.records)


def test_upgrade_of_an_old_default_drops_it_silently(caplog):
    from jfedrl.schema.legacy import upgrade

    with caplog.at_level("WARNING", logger="jfedrl"):
        out = upgrade({"strategy": {"name": "median", "krum_f": 1}}, RENAMES, DEFAULTS)
    assert out == {"strategy": {"name": "median"}}
    assert not caplog.records
