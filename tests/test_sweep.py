"""`jfedrl sweep`: seeds vmapped in one compiled program, equal to the runs trained alone."""

from __future__ import annotations

import csv

import jax
import numpy as np
import pytest
import yaml

from jfedrl import runner, sweep
from jfedrl.config import ConfigError
from jfedrl.outputs import read_metrics
from tests.helpers import tiny_config, with_run_dir

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


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = write(root, name="seeds", seeds=[3, 5], threshold=0.0)
    return sweep.run_sweep(path, root / "out", progress=False, quiet=True)


def test_seeds_run_as_one_program_equal_to_runs_alone(swept, tmp_path):
    assert swept.compiles == [1] and not swept.interrupted
    assert [d.name for d in swept.run_dirs] == ["00-base-seed3", "00-base-seed5"]
    alone = runner.train(
        with_run_dir(tiny_config(seed=5), tmp_path / "alone"), progress=False, quiet=True
    )
    from jfedrl.checkpoint import Checkpointer
    from jfedrl.federated import make_simulator

    simulator = make_simulator(tiny_config(seed=5))
    checkpointer = Checkpointer(swept.run_dirs[1] / "checkpoints")
    target = jax.eval_shape(simulator.init, jax.random.PRNGKey(5))
    state, _ = checkpointer.restore(target)
    checkpointer.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone.state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    records = read_metrics(swept.run_dirs[1])
    assert len(records) == len(alone.records) == 4
    for mine, theirs in zip(records, alone.records, strict=True):
        for name in ("round", "env_steps", "train_return_mean", "eval_return", "pg_loss"):
            if theirs.get(name) is None:  # eval_return: only at a block's end
                assert mine.get(name) is None, name
            else:
                assert mine[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
    # The other seed is a different run.
    assert read_metrics(swept.run_dirs[0])[-1]["pg_loss"] != records[-1]["pg_loss"]


def test_sweep_folder_holds_summary_and_comparison(swept):
    rows = list(csv.DictReader((swept.sweep_dir / "summary.csv").open()))
    assert [r["seed"] for r in rows] == ["3", "5"]
    assert all(r["steps_to_threshold"] and r["auc"] for r in rows)
    assert (swept.sweep_dir / "sweep.yaml").is_file()
    assert (swept.sweep_dir / "comparison.md").is_file()
    for run_dir in swept.run_dirs:
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir()


def test_resume_of_a_finished_sweep_compiles_nothing(swept):
    again = sweep.run_sweep(None, resume=swept.sweep_dir, progress=False, quiet=True)
    assert again.compiles == [] and len(read_metrics(swept.run_dirs[0])) == 4


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_result(swept, tmp_path):
    path = write(tmp_path, name="seeds", seeds=[3, 5], threshold=0.0)
    out = tmp_path / "out"
    first = sweep.run_sweep(path, out, progress=False, quiet=True, stop_after_round=2)
    assert first.interrupted and len(read_metrics(first.run_dirs[0])) == 2
    again = sweep.run_sweep(None, resume=out, progress=False, quiet=True)
    assert not again.interrupted and again.compiles == [1]
    for resumed, whole in zip(again.run_dirs, swept.run_dirs, strict=True):
        for mine, theirs in zip(read_metrics(resumed), read_metrics(whole), strict=True):
            for name in ("round", "train_return_mean", "pg_loss", "eval_return"):
                assert mine.get(name) == theirs.get(name), name


def test_shape_changing_setups_are_split_into_groups(tmp_path):
    parsed = sweep.load(write(tmp_path, grid={"federation.num_clients": [3, 4]}, seeds=2))
    assert [s.config.federation.num_clients for s in parsed.setups] == [3, 4]
    lines = sweep.describe_groups(parsed)
    assert lines[0].startswith("group 1/2: federation.num_clients=3: 2 seed(s)")
    assert "2 setups run one after another" in lines[-1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seeds": 0}, "sweep seeds: must be >= 1"),
        ({"grid": {"federation.num_clients": []}}, "sweep grid.federation.num_clients"),
        ({"grid": {"federation.num_clients": [0]}}, "federation.num_clients: must be >= 1"),
        ({"setups": [{"seed": 1}]}, "sweep seed: is set by the sweep itself"),
        ({"grid": {"algo.ppo.nope": [1]}}, "algo.ppo.nope"),
        ({"grdi": {}}, "sweep grdi: unknown key"),
    ],
)
def test_bad_sweep_files_fail_naming_the_field(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        sweep.load(write(tmp_path, **data))


def _restored(run_dir, config):
    from jfedrl.checkpoint import Checkpointer
    from jfedrl.federated import make_simulator

    simulator = make_simulator(config)
    checkpointer = Checkpointer(run_dir / "checkpoints")
    try:
        target = jax.eval_shape(simulator.init, jax.random.PRNGKey(config.seed))
        return checkpointer.restore(target)[0]
    finally:
        checkpointer.close()


def test_learning_rates_and_seeds_run_as_one_program_equal_to_runs_alone(tmp_path, caplog):
    path = write(
        tmp_path,
        name="lr",
        grid={"algo.ppo.learning_rate": [1e-3, 3e-3]},
        seeds=[3, 5],
        base={**TINY, "federation": {**TINY["federation"], "rounds": 2}},
    )
    parsed = sweep.load(path)
    assert [g.traced for g in sweep.plan_groups(parsed)] == [("algo.ppo.learning_rate",)]
    assert sweep.describe_groups(parsed)[0] == "groups: 1"
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles():
        swept = sweep.run_sweep(path, tmp_path / "out", progress=False, quiet=True)
    compiled = [
        r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()
    ]
    assert swept.compiles == [1]
    assert sum("_run_block_vmapped" in m for m in compiled) == 1, compiled
    assert sum("_init_vmapped" in m for m in compiled) == 1, compiled
    assert sum("jit(evaluate)" in m for m in compiled) <= 1, compiled  # 0: a cache hit
    for run_dir, lr, seed in [(swept.run_dirs[0], 1e-3, 3), (swept.run_dirs[3], 3e-3, 5)]:
        config = tiny_config(seed=seed, algo__ppo__learning_rate=lr, federation__rounds=2)
        alone = runner.train(with_run_dir(config, tmp_path / f"alone{seed}"), quiet=True)
        state = _restored(run_dir, config)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone.state), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
        records = read_metrics(run_dir)
        assert len(records) == len(alone.records) == 2
        for mine, theirs in zip(records, alone.records, strict=True):
            assert mine.keys() == theirs.keys()
            for name, value in theirs.items():
                if name in ("wall_seconds", "steps_per_second", "compile_seconds"):
                    continue
                if isinstance(value, float):
                    assert mine[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
                else:
                    assert mine[name] == value, name
    # The two learning rates are different runs.
    first, last = (read_metrics(d)[-1]["pg_loss"] for d in swept.run_dirs[1:3])
    assert first != last
