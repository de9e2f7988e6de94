"""`jfedrl sweep`: learning rates x seeds vmapped in one compiled program, each run equal to
the same setup trained alone."""

from __future__ import annotations

import contextlib
import csv

import jax
import numpy as np
import pytest
import yaml

from jfedrl.cli import main as cli_main
from jfedrl.experiments import sweep
from jfedrl.run import runner
from jfedrl.run.outputs import read_metrics
from jfedrl.schema.checks import ConfigError
from tests.helpers import Terminal, compiled_programs, tiny_config, with_run_dir

TINY = {
    "federation": {"num_clients": 3, "rounds": 4, "local_updates": 2},
    "algo": {
        "ppo": {
            "num_envs": 2,
            "num_steps": 16,
            "num_minibatches": 2,
            "update_epochs": 2,
            "hidden_sizes": [16, 16],
        }
    },
    "log": {
        "rounds_per_block": 2,
        "eval_episodes": 2,
        "tensorboard": False,
        "plot": False,
        "progress": False,
    },
}


def write(tmp_path, **data):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": TINY} | data))
    return path


#: Two learning rates (the default first) x two seeds: one group, the rate traced.
GRID = {"algo.ppo.learning_rate": [2.5e-3, 1e-3]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = write(root, name="lr", grid=GRID, seeds=[3, 5], threshold=0.0)
    with compiled_programs() as names:
        result = sweep.run_sweep(path, root / "out", progress=False, quiet=True)
    return result, names


def _restored(run_dir, config):
    from jfedrl.round.simulator import make_simulator
    from jfedrl.run.checkpoint import Checkpointer

    simulator = make_simulator(config)
    checkpointer = Checkpointer(run_dir / "checkpoints")
    try:
        target = jax.eval_shape(simulator.init, jax.random.PRNGKey(config.seed))
        return checkpointer.restore(target)[0]
    finally:
        checkpointer.close()


def _assert_equal_to_alone(run_dir, config, tmp_path):
    """The run's final state and metrics equal `config` trained alone with `train`."""
    alone = runner.train(with_run_dir(config, tmp_path / "alone"), progress=False, quiet=True)
    state = _restored(run_dir, config)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone.state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    records = read_metrics(run_dir)
    assert len(records) == len(alone.records) == 4
    for mine, theirs in zip(records, alone.records, strict=True):
        assert mine.keys() == theirs.keys()  # e.g. no other attack's diagnostics
        for name, value in theirs.items():
            if name in ("wall_seconds", "steps_per_second", "compile_seconds"):
                continue
            if isinstance(value, float):  # float32 tolerance: traced vs constant rate
                assert mine[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
            else:
                assert mine[name] == value, name


def test_rates_and_seeds_run_as_one_program(swept):
    result, compiled = swept
    assert result.compiles == [1] and not result.interrupted
    assert [d.name for d in result.run_dirs] == [
        "00-algo.ppo.learning_rate=0.0025-seed3",
        "00-algo.ppo.learning_rate=0.0025-seed5",
        "01-algo.ppo.learning_rate=0.001-seed3",
        "01-algo.ppo.learning_rate=0.001-seed5",
    ]
    # One block program, one init program, at most one evaluation (0: a cache hit).
    assert compiled.count("jit(_run_block_vmapped)") == 1, compiled
    assert compiled.count("jit(_init_vmapped)") == 1, compiled
    assert compiled.count("jit(evaluate)") <= 1, compiled
    parsed = sweep.load(result.sweep_dir / "sweep.yaml")
    assert [g.traced for g in sweep.plan_groups(parsed)] == [("algo.ppo.learning_rate",)]
    assert sweep.describe_groups(parsed)[0] == "groups: 1"


def test_traced_rate_run_equals_the_run_alone(swept, tmp_path):
    result, _ = swept
    config = tiny_config(seed=3, algo__ppo__learning_rate=1e-3)
    _assert_equal_to_alone(result.run_dirs[2], config, tmp_path)
    # The other seeds and the other rate are different runs.
    losses = [read_metrics(d)[-1]["pg_loss"] for d in result.run_dirs]
    assert len(set(losses)) == 4


@pytest.mark.slow  # the other setup of the same program; one train alone is in the default run
def test_default_rate_run_equals_the_run_alone(swept, tmp_path):
    result, _ = swept
    _assert_equal_to_alone(result.run_dirs[1], tiny_config(seed=5), tmp_path)


def test_sweep_folder_holds_summary_and_comparison(swept):
    swept, _ = swept
    rows = list(csv.DictReader((swept.sweep_dir / "summary.csv").open()))
    assert [r["seed"] for r in rows] == ["3", "5", "3", "5"]
    assert all(r["steps_to_threshold"] and r["auc"] for r in rows)
    assert (swept.sweep_dir / "sweep.yaml").is_file()
    assert (swept.sweep_dir / "comparison.md").is_file()
    for run_dir in swept.run_dirs:
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir()


def test_the_sweep_log_names_the_run_of_each_line(swept):
    swept, _ = swept
    lines = (swept.sweep_dir / "train.log").read_text().splitlines()
    rounds = [line for line in lines if "round 4/4" in line]
    names = sorted(line.split(" INFO ")[1].split(": round")[0] for line in rounds)
    assert names == sorted(run_dir.name for run_dir in swept.run_dirs)
    few = "setup 'algo.ppo.learning_rate=0.001' has 2 run(s) per environment (< 5)"
    assert any(few in line for line in lines)


def test_cli_sweep_prints_the_comparison_table(swept, capsys):
    from jfedrl import cli

    swept, _ = swept
    assert cli.main(["sweep", "--resume", str(swept.sweep_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| setup | runs | env | IQM final eval_return") == 1
    assert "| A | B | P(A > B) [95% CI] | verdict |" in printed
    assert printed.index("| setup |") < printed.index("sweep folder:")


def test_resume_of_a_finished_sweep_compiles_nothing(swept):
    swept, _ = swept
    again = sweep.run_sweep(None, resume=swept.sweep_dir, progress=False, quiet=True)
    assert again.compiles == [] and len(read_metrics(swept.run_dirs[0])) == 4


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_result(swept, tmp_path):
    swept, _ = swept
    path = write(tmp_path, name="lr", grid=GRID, seeds=[3, 5], threshold=0.0)
    out = tmp_path / "out"
    first = sweep.run_sweep(path, out, progress=False, quiet=True, stop_after_round=2)
    assert first.interrupted and len(read_metrics(first.run_dirs[0])) == 2
    stderr = Terminal()  # the bar is drawn only on a terminal
    with contextlib.redirect_stderr(stderr):
        again = sweep.run_sweep(None, resume=out, progress=True, quiet=True)
    assert not again.interrupted and again.compiles == [1]
    # The progress bar names the whole group, not its first 40 characters.
    label = "algo.ppo.learning_rate=0.0025; algo.ppo.learning_rate=0.001"
    assert f"group 1/1: {label}" in stderr.getvalue()
    for resumed, whole in zip(again.run_dirs, swept.run_dirs, strict=True):
        for mine, theirs in zip(read_metrics(resumed), read_metrics(whole), strict=True):
            for name in ("round", "train_return_mean", "pg_loss", "eval_return"):
                assert mine.get(name) == theirs.get(name), name


def test_shape_changing_setups_are_split_into_groups(tmp_path):
    grid = {"federation.num_clients": [3, 4], "algo.ppo.learning_rate": [1e-3, 2e-3]}
    parsed = sweep.load(write(tmp_path, grid=grid, seeds=2))
    assert [s.config.federation.num_clients for s in parsed.setups] == [3, 4, 3, 4]
    groups = sweep.plan_groups(parsed)
    assert [g.indices for g in groups] == [(0, 2), (1, 3)]  # the file's keys are sorted
    lines = sweep.describe_groups(parsed)
    assert lines[0] == "groups: 2 (federation.num_clients changes shapes or static structure)"
    assert lines[1].startswith("group 1/2: algo.ppo.learning_rate=0.001, federation.num_clients=3;")
    assert lines[1].endswith(
        "2 setup(s) x 2 seed(s) = 4 run(s) vmapped in one compiled program, "
        "traced: algo.ppo.learning_rate"
    )


def test_a_switch_off_and_on_splits_groups_and_says_why(tmp_path):
    parsed = sweep.load(write(tmp_path, grid={"algo.ppo.prox_mu": [0.0, 0.1, 0.2]}))
    groups = sweep.plan_groups(parsed)
    assert [g.indices for g in groups] == [(0,), (1, 2)]
    assert [g.traced for g in groups] == [(), ("algo.ppo.prox_mu",)]  # on in both: traced
    assert sweep.describe_groups(parsed)[0] == (
        "groups: 2 (algo.ppo.prox_mu switches the proximal term on in Python "
        "(0 and > 0 compile apart))"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seeds": 0}, "sweep seeds: must be >= 1"),
        ({"grid": {"federation.num_clients": []}}, "sweep grid.federation.num_clients"),
        ({"grid": {"federation.num_clients": [0]}}, "federation.num_clients: must be >= 1"),
        ({"setups": [{"seed": 1}]}, "sweep seed: is set by the sweep itself"),
        ({"grid": {"algo.ppo.nope": [1]}}, "algo.ppo.nope"),
        ({"grdi": {}}, "sweep grdi: unknown key"),
        ({"base": {"distributed": {"enabled": True}}}, "sweep distributed.enabled: a sweep runs"),
        ({"name": "../../../escape"}, "sweep name: must be one folder name"),
        ({"name": "/tmp/absolute"}, "sweep name: must be one folder name"),
        ({"name": ".."}, "sweep name: must be one folder name"),
        ({"name": "a\\b"}, "sweep name: must be one folder name"),
        ({"name": ""}, "sweep name: must be one folder name"),
    ],
)
def test_bad_sweep_files_fail_naming_the_field(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        sweep.load(write(tmp_path, **data))


def test_a_sweep_name_that_leaves_sweeps_writes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "inner").mkdir()
    monkeypatch.chdir(tmp_path / "inner")  # sweeps/../escape would be tmp_path/inner/escape
    path = write(tmp_path, name="../escape")
    assert cli_main(["sweep", str(path), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("jfedrl: error: sweep name: must be one folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner", "sweep.yaml"]
    assert list((tmp_path / "inner").iterdir()) == []


def test_parts_split_the_groups_deterministically():
    assert sweep.part_groups(5, (1, 2)) == [0, 2, 4] and sweep.part_groups(5, (2, 2)) == [1, 3]
    assert sweep.part_groups(2, (3, 3)) == [] and sweep.part_groups(3, None) == [0, 1, 2]
    shares = [sweep.part_groups(7, (i, 3)) for i in (1, 2, 3)]
    assert sorted(sum(shares, [])) == list(range(7))
    with pytest.raises(ConfigError, match=r"--part: must be i/N with 1 <= i <= N, got 4/3"):
        sweep.part_groups(7, (4, 3))


@pytest.mark.parametrize("part", ["0/3", "4/3", "x", "1/", "2/x"])
def test_a_bad_part_fails_in_one_line_naming_it(tmp_path, capsys, part):
    from jfedrl import cli

    path = write(tmp_path, name="p", grid={"algo.ppo.prox_mu": [0.0, 0.1]})
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--part", part]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("jfedrl: error: --part: must be i/N")
    assert not out.exists()


def test_parts_run_their_groups_into_one_folder_that_compare_merges(tmp_path, capsys):
    from jfedrl import cli
    from jfedrl.experiments import compare

    base = TINY | {"federation": TINY["federation"] | {"rounds": 2}}
    data = {"name": "parts", "base": base, "grid": {"algo.ppo.prox_mu": [0.0, 0.1]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    first = sweep.run_sweep(path, out, progress=False, quiet=True, part=(1, 2))
    assert [d.name for d in first.run_dirs] == ["00-algo.ppo.prox_mu=0.0-seed0"]
    assert first.compiles == [1] and not (out / "comparison.md").exists()
    assert cli.main(["sweep", str(path), "--out", str(out), "--part", "2/2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "part 2/2: 1 run(s)" in printed and f"jfedrl compare {out}" in printed
    for number, label in ((1, "algo.ppo.prox_mu=0.0"), (2, "algo.ppo.prox_mu=0.1")):
        rows = list(csv.DictReader((out / f"summary-part{number}of2.csv").open()))
        assert [r["setup"] for r in rows] == [label]
    assert not (out / "summary.csv").exists()
    rows = compare.compare([out], tmp_path / "cmp", reps=20, plots=False)
    assert sorted(r.setup for r in rows) == ["algo.ppo.prox_mu=0.0", "algo.ppo.prox_mu=0.1"]
    # A part joins a folder only of the same sweep file.
    other = write(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
    with pytest.raises(ConfigError, match="already holds a sweep"):
        sweep.run_sweep(other, out, progress=False, quiet=True, part=(1, 2))
