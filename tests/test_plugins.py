"""Plugins without packaging: the one-file examples of docs/extending.md, run verbatim.

Each example is written into a fresh folder exactly as the docs show it, and
`jfedrl` runs there as a user would (a subprocess whose current folder holds the
plugin files): train, eval, compare and a sweep whose plugin field is traced in
one program; the slow tests add `--executor local` (its workers import the
plugins too) and `--resume`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jfedrl import algorithms, attacks, strategies
from jfedrl.algorithms.spec import AlgorithmSpec
from jfedrl.attacks.spec import AttackSpec
from jfedrl.strategies.spec import StrategySpec

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "extending.md"
PLUGINS = ("--plugin", "my_strategy", "--plugin", "my_algorithm", "--plugin", "my_variant")
TINY = (
    "--algo", "reinforce",
    "--strategy", "fedavg_step",
    "--fedavg-step.step-size", "0.5",
    "--clients", "3",
    "--variant", "spread",
    "--rounds", "2",
    "--reinforce.num-steps", "16",
    "--log.rounds-per-block", "1",
    "--log.eval-episodes", "1",
    "--log.tensorboard", "false",
    "--log.plot", "false",
    "--log.progress", "false",
)  # fmt: skip


def examples() -> dict[str, str]:
    """The plugin files of docs/extending.md: file name -> source, verbatim."""
    text = DOCS.read_text()
    return dict(re.findall(r"<!-- plugin: (\S+) -->\n```python\n(.*?)```", text, re.S))


def jfedrl(folder: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m jfedrl.cli ARGS` with `folder` as the current folder."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(folder)}
    return subprocess.run(
        [sys.executable, "-m", "jfedrl.cli", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A fresh folder holding the docs' plugin files and nothing else."""
    path = tmp_path_factory.mktemp("plugins")
    for name, source in examples().items():
        (path / name).write_text(source)
    return path


@pytest.fixture(scope="module")
def run(folder) -> Path:
    """One short run with the docs' algorithm and strategy."""
    done = jfedrl(folder, "train", *PLUGINS, *TINY, "--run-dir", "run")
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "run"


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_docs_hold_a_strategy_an_algorithm_and_a_variant_example():
    assert {"my_strategy.py", "my_algorithm.py", "my_variant.py"} <= set(examples())


def test_train_records_the_plugins_and_uses_their_fields(run):
    saved = (run / "config.yaml").read_text()
    assert "plugins:\n- my_strategy\n- my_algorithm\n- my_variant\n" in saved
    assert "fedavg_step:\n    step_size: 0.5\n" in saved
    assert "reinforce:\n" in saved
    length = json.loads((run / "env_params.json").read_text())["length"]
    assert length[0] < length[1] < length[2]  # the variant's even spread, low to high
    assert length[1] - length[0] == pytest.approx(length[2] - length[1], rel=1e-5)
    rounds = records(run)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["eval_return"] > 0 for r in rounds)


def test_eval_and_compare_load_the_plugins_the_run_recorded(folder, run):
    done = jfedrl(folder, "eval", "run", "--out", "evaluated")
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((folder / "evaluated").glob("round_2_*.csv"))
    done = jfedrl(folder, "compare", "run", "--out", "compared")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / "compared" / "comparison.csv").is_file()


def test_a_sweep_traces_the_plugins_field_in_one_program(folder):
    (folder / "sweep.yaml").write_text(
        "name: steps\n"
        "base:\n"
        "  plugins: [my_strategy, my_algorithm, my_variant]\n"
        "  algo: {name: reinforce, reinforce: {num_steps: 16}}\n"
        "  strategy: {name: fedavg_step}\n"
        "  federation: {num_clients: 2, rounds: 1}\n"
        "  log: {rounds_per_block: 1, eval_episodes: 1, tensorboard: false, plot: false,"
        " progress: false}\n"
        "grid:\n"
        "  strategy.fedavg_step.step_size: [0.5, 0.9]\n"
        "seeds: 1\n"
    )
    done = jfedrl(folder, "sweep", "sweep.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "groups: 1" in done.stdout
    assert "vmapped in one compiled program, traced: strategy.fedavg_step.step_size" in (
        done.stdout
    )


def test_an_unknown_plugin_is_one_line_and_exit_2(folder):
    done = jfedrl(folder, "train", "--plugin", "no_such_module", "--rounds", "1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jfedrl: error: plugins: no module named 'no_such_module' (searched the current "
        "folder and sys.path; give a module name, not a file path)"
    ]


def test_a_plugins_own_checks_run_before_anything_is_written(folder):
    done = jfedrl(
        folder, "train", *PLUGINS, *TINY, "--fedavg-step.step-size", "3", "--run-dir", "bad"
    )
    assert done.returncode == 2
    assert "strategy.fedavg_step.step_size: must be in (0, 2), got 3" in done.stderr
    assert not (folder / "bad").exists()


@pytest.mark.slow
def test_local_executor_workers_and_a_resume_load_the_plugins(folder, run):
    done = jfedrl(
        folder, "train", *PLUGINS, *TINY, "--executor", "local", "--shards", "2",
        "--run-dir", "local",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["round"] for r in records(folder / "local")] == [1, 2]
    done = jfedrl(folder, "train", "--resume", "run", "--rounds", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["round"] for r in records(run)] == [1, 2, 3]


def test_importing_the_cli_entry_assembles_no_config_tree():
    """`jfedrl.cli` must stay light: plugins register before `jfedrl.config` is built."""
    code = "import sys, jfedrl.cli; print('jfedrl.config' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    "registry, spec",
    [
        (algorithms, AlgorithmSpec("late_algo", "m:build", section=type("S", (), {}))),
        (strategies, StrategySpec("late_rule", "m:build", section=type("S", (), {}))),
        (attacks, AttackSpec("late_attack", "update", "m:build", section=type("S", (), {}))),
    ],
)
def test_a_section_registered_after_the_tree_exists_is_refused(registry, spec):
    import jfedrl.config  # noqa: F401  (the tree is assembled)

    with pytest.raises(ValueError, match="after jfedrl.config assembled the config tree"):
        registry.register(spec)
    assert spec.name not in registry.names()
