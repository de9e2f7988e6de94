"""`jfedrl compare` on hand-made run folders: IQM and bootstrap CIs against NumPy/SciPy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from jfedrl.cli import main as cli_main
from jfedrl.experiments import compare
from jfedrl.schema.convert import override, save_yaml
from tests.helpers import tiny_config

FINALS = {"fedavg": [10.0, 50.0, 20.0, 40.0, 30.0], "fedprox": [1.0, 2.0, 300.0, 4.0, 5.0]}


def make_run(run_dir, strategy, seed, final):
    config = override(tiny_config(), {"strategy.name": strategy, "seed": seed})
    run_dir.mkdir(parents=True)
    save_yaml(config, run_dir / "config.yaml")
    records = [
        {"round": 1, "env_steps": 100, "wall_seconds": 1.0, "eval_return": final / 2},
        {"round": 2, "env_steps": 200, "wall_seconds": 2.0, "eval_return": final},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for strategy, finals in FINALS.items():
        for seed, final in enumerate(finals):
            make_run(root / f"{strategy}-{seed}", strategy, seed, final)
    return root


def reference_interval(scores, statistic, reps, seed):
    """The bootstrap written out plainly: one resample at a time, SciPy's trim_mean."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(scores), size=(reps, len(scores), 1))
    values = []
    for rep in range(reps):
        sample = np.asarray(scores)[index[rep, :, 0]]
        values.append(stats.trim_mean(sample, 0.25) if statistic == "iqm" else sample.mean())
    return np.percentile(values, [2.5, 97.5])


def test_iqm_is_scipy_trim_mean():
    scores = np.array([[3.0, 1.0], [100.0, 4.0], [2.0, 8.0], [5.0, -7.0]])
    assert compare.iqm(scores) == pytest.approx(stats.trim_mean(scores, 0.25, axis=None))
    assert compare.iqm([1.0, 2.0, 3.0, 1000.0]) == pytest.approx(2.5)


def test_compare_matches_a_direct_numpy_computation(runs_root, tmp_path):
    rows = compare.compare([runs_root], tmp_path / "out", reps=500, seed=7)
    by_setup = {row.setup: row for row in rows}
    assert set(by_setup) == {"strategy.name=fedavg", "strategy.name=fedprox"}
    for strategy, finals in FINALS.items():
        row = by_setup[f"strategy.name={strategy}"]
        assert row.runs == 5
        assert row.iqm.value == pytest.approx(stats.trim_mean(finals, 0.25))
        assert row.mean.value == pytest.approx(np.mean(finals))
        for name in ("iqm", "mean"):
            low, high = reference_interval(finals, name, 500, 7)
            interval = getattr(row, name)
            assert (interval.low, interval.high) == pytest.approx((low, high))
    # The outlier run moves fedprox's mean far more than its IQM.
    assert (
        by_setup["strategy.name=fedprox"].iqm.value
        < 10
        < by_setup["strategy.name=fedprox"].mean.value
    )
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "strategy.name=fedavg" in table and "30.00" in table
    assert (tmp_path / "out" / "comparison.csv").read_text().count("\n") == 3
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "final_scores.png").stat().st_size > 0


def test_run_summary_threshold_and_auc():
    records = [
        {"env_steps": 100, "wall_seconds": 1.0, "eval_return": 0.0},
        {"env_steps": 200, "wall_seconds": 2.0, "eval_return": None},
        {"env_steps": 300, "wall_seconds": 3.0, "eval_return": 20.0},
        {"env_steps": 500, "wall_seconds": 5.0, "eval_return": 10.0},
    ]
    summary = compare.run_summary(records, threshold=15.0)
    assert summary["final_eval_return"] == 10.0 and summary["best_eval_return"] == 20.0
    assert summary["steps_to_threshold"] == 300 and summary["seconds_to_threshold"] == 3.0
    assert summary["auc"] == pytest.approx((200 * 10 + 200 * 15) / 400)
    assert compare.run_summary(records, threshold=99.0)["steps_to_threshold"] is None


def test_compare_names_a_folder_without_runs(tmp_path):
    with pytest.raises(ValueError, match="holds no run folder"):
        compare.compare([tmp_path], tmp_path / "out")


def make_setup_runs(root, setups, seeds=2):
    """Two seeds per setup (`setups`: name -> config overrides), finals 10 and 20."""
    for name, values in setups.items():
        for seed in range(seeds):
            config = override(tiny_config(), {**values, "seed": seed})
            run_dir = root / f"{name}-{seed}"
            run_dir.mkdir(parents=True)
            save_yaml(config, run_dir / "config.yaml")
            record = {"round": 1, "env_steps": 100, "wall_seconds": 1.0, "eval_return": 10.0}
            record["eval_return"] += 10 * seed
            (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return compare.group_by_setup(compare.find_runs([root]))


def test_setups_are_labelled_only_by_fields_they_read(tmp_path):
    seven = {"federation.num_clients": 7}
    groups = make_setup_runs(
        tmp_path,
        {
            "fedavg": {**seven, "strategy.name": "fedavg"},
            "fedprox": {**seven, "strategy.name": "fedprox", "strategy.fedprox.mu": 0.1},
            "median": {**seven, "strategy.name": "median"},
            "krum": {**seven, "strategy.name": "krum", "strategy.krum.f": 2},
        },
    )
    assert set(groups) == {
        "strategy.name=fedavg",
        "strategy.fedprox.mu=0.1, strategy.name=fedprox",
        "strategy.name=median",
        "strategy.krum.f=2, strategy.name=krum",
    }


def test_algorithm_sections_label_only_their_algorithm(tmp_path):
    groups = make_setup_runs(
        tmp_path,
        {
            "ppo": {"algo.name": "ppo"},
            "dqn": {"algo.name": "dqn", "algo.dqn.learning_rate": 5e-4},
        },
    )
    assert set(groups) == {"algo.name=ppo", "algo.dqn.learning_rate=0.0005, algo.name=dqn"}


def test_setups_equal_in_what_they_read_keep_every_differing_field(tmp_path):
    groups = make_setup_runs(
        tmp_path, {"a": {"strategy.fedprox.mu": 0.1}, "b": {"strategy.fedprox.mu": 0.2}}
    )
    assert set(groups) == {"strategy.fedprox.mu=0.1", "strategy.fedprox.mu=0.2"}


def test_strategy_fields_read_come_from_the_strategy_code():
    reads = compare.strategy_fields_read
    assert reads(tiny_config()) == {"strategy.clip_update_norm"}
    assert reads(tiny_config(strategy__name="fedprox")) == {
        "strategy.fedprox.mu",
        "strategy.clip_update_norm",
    }
    assert reads(tiny_config(strategy__name="fedadam")) == {
        "strategy.fedadam.lr",
        "strategy.fedadam.beta1",
        "strategy.fedadam.beta2",
        "strategy.fedadam.tau",
        "strategy.clip_update_norm",
    }
    assert "strategy.fedavgm.momentum" not in reads(tiny_config(strategy__name="fedadam"))
    # The rule reads its whole section, whichever of its variants runs: pso "reads" DE's fields.
    pso = tiny_config(strategy__name="evolutionary", strategy__evolutionary__algorithm="pso")
    assert "strategy.evolutionary.mutation" in reads(pso)


def direct_probability(x, y):
    """P(X > Y) written out: every pair of runs of each task, ties 1/2, mean over tasks."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    per_task = []
    for task in range(x.shape[1]):
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in x[:, task] for b in y[:, task]]
        per_task.append(np.mean(wins))
    return float(np.mean(per_task))


def test_probability_of_improvement_is_the_normalised_mann_whitney_u():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0]])
    y = np.array([[3.0, 1.0], [0.0, 7.0]])
    assert compare.probability_of_improvement(x, y) == pytest.approx(direct_probability(x, y))
    u = [stats.mannwhitneyu(x[:, t], y[:, t]).statistic / (3 * 2) for t in range(2)]
    assert compare.probability_of_improvement(x, y) == pytest.approx(np.mean(u))
    assert compare.probability_of_improvement(y, x) == pytest.approx(1 - np.mean(u))


def test_improvement_interval_is_an_independent_stratified_bootstrap():
    x = np.array([[10.0], [50.0], [20.0], [40.0], [30.0]])
    y = np.array([[1.0], [2.0], [300.0], [4.0]])
    interval = compare.improvement_interval(x, y, reps=300, seed=3)
    rng = np.random.default_rng(3)
    ix = rng.integers(0, 5, size=(300, 5, 1))
    iy = rng.integers(0, 4, size=(300, 4, 1))
    values = [direct_probability(x[ix[r, :, 0]], y[iy[r, :, 0]]) for r in range(300)]
    low, high = np.percentile(values, [2.5, 97.5])
    assert interval.value == pytest.approx(direct_probability(x, y)) == 0.75
    assert (interval.low, interval.high) == pytest.approx((low, high))


def test_optimality_gap_and_performance_profile_against_numpy():
    scores = np.array([[100.0, 20.0], [500.0, 40.0], [300.0, 60.0]])
    gamma = 250.0
    direct = np.mean([max(gamma - s, 0.0) for s in scores.ravel()])
    assert compare.optimality_gap(scores, gamma) == pytest.approx(direct)
    interval = compare.gap_interval(scores, gamma, reps=200, seed=1)
    resamples = compare.bootstrap_samples(scores, 200, 1)
    gaps = [np.mean([max(gamma - s, 0.0) for s in row]) for row in resamples]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(gaps, [2.5, 97.5])))
    taus = np.array([0.0, 30.0, 200.0, 1000.0])
    profile, low, high = compare.performance_profile(scores, taus, reps=200, seed=1)
    direct = [np.mean([np.mean(scores[:, t] > tau) for t in range(2)]) for tau in taus]
    assert profile == pytest.approx(direct)
    assert profile[0] == 1.0 and profile[-1] == 0.0
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)


def test_probability_of_improvement_agrees_with_rliable():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(0)
    x, y = rng.normal(1, 1, size=(6, 3)), rng.normal(0, 1, size=(5, 3))
    assert compare.probability_of_improvement(x, y) == pytest.approx(
        metrics.probability_of_improvement(x, y)
    )
    assert compare.optimality_gap(x, 1.0) == pytest.approx(metrics.aggregate_optimality_gap(x))
    assert compare.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))


def test_compare_writes_pairs_gap_profiles_and_warns_on_few_seeds(runs_root, tmp_path, caplog):
    few = tmp_path / "few"
    make_run(few / "a-0", "median", 0, 7.0)
    make_run(few / "a-1", "median", 1, 9.0)
    with caplog.at_level("WARNING", logger="jfedrl"):
        rows = compare.compare([runs_root, few], tmp_path / "out", reps=300, seed=2, gamma=45.0)
    by_setup = {row.setup: row for row in rows}
    fedavg = FINALS["fedavg"]
    gap = by_setup["strategy.name=fedavg"].optimality_gap
    assert gap.value == pytest.approx(np.mean([max(45.0 - s, 0) for s in fedavg]))
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "optimality gap, gamma = 45" in table
    p = direct_probability(np.c_[fedavg], np.c_[FINALS["fedprox"]])
    assert f"P(strategy.name=fedavg > strategy.name=fedprox) = {p:.2f}" in table  # CI has 0.5
    assert "strategy.name=fedavg > strategy.name=median with P = 1.00 [1.00, 1.00]" in table
    pairs = (tmp_path / "out" / "comparison_pairs.csv").read_text().splitlines()
    assert len(pairs) == 1 + 3
    assert (tmp_path / "out" / "performance_profiles.png").stat().st_size > 0
    warned = [r.getMessage() for r in caplog.records if "add seeds" in r.getMessage()]
    assert len(warned) == 1 and "strategy.name=median" in warned[0] and "2 run(s)" in warned[0]
    assert "warning: setup 'strategy.name=median' has 2 run(s)" in table
    assert compare.compare([runs_root], tmp_path / "out2", plots=False)[0].optimality_gap.value == (
        pytest.approx(np.mean([max(300.0 - s, 0) for s in FINALS["fedavg"]]))
    )


def test_cli_compare_prints_the_pairs_and_takes_gamma(runs_root, tmp_path, capsys):
    from jfedrl import cli

    out = tmp_path / "cli"
    assert cli.main(["compare", str(runs_root), "--out", str(out), "--reps", "50"]) == 0
    assert (
        cli.main(["compare", str(runs_root), "--out", str(out), "--no-plots", "--gamma", "45"]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("| A | B | P(A > B) [95% CI] | verdict |") == 2
    assert "optimality gap, gamma = 300 " in printed and "optimality gap, gamma = 45 " in printed
    assert cli.main(["compare", str(runs_root), "--out", str(out), "--metric", "nope"]) == 2
    assert "no 'nope'" in capsys.readouterr().err


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jfedrl: error: "), lines
    return lines[0]


@pytest.mark.parametrize("reps", ["0", "-5"])
def test_compare_refuses_reps_below_one_naming_the_flag(reps, runs_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["compare", str(runs_root), "--out", str(out), "--reps", reps]) == 2
    assert f"--reps: must be a whole number >= 1 (bootstrap resamples), got {reps}" in (
        _one_error_line(capsys)
    )
    assert not out.exists()


def test_compare_out_an_existing_file_is_one_line(runs_root, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    assert cli_main(["compare", str(runs_root), "--out", str(out), "--no-plots"]) == 2
    assert "--out: " in _one_error_line(capsys) and out.read_text() == "mine"


def test_compare_skips_unreadable_and_metricless_runs_with_a_warning(
    runs_root, tmp_path, jfedrl_warnings
):
    root = tmp_path / "runs"
    shutil.copytree(runs_root, root)
    (root / "fedavg-0" / "config.yaml").write_text("federation: {num_clients: [3\n")
    (root / "fedavg-1" / "metrics.jsonl").unlink()  # killed before its first block
    (root / "fedavg-2" / "metrics.jsonl").write_text("")  # no eval_return
    rows = compare.compare([root], tmp_path / "out", reps=50, plots=False)
    assert {r.setup: r.runs for r in rows} == {
        "strategy.name=fedavg": 2,
        "strategy.name=fedprox": 5,
    }
    skipped = [m for m in jfedrl_warnings if m.startswith("compare: skipping")]
    assert len(skipped) == 3
    assert all(any(f"fedavg-{i}" in m for m in skipped) for i in range(3))
    assert any("not valid YAML" in m for m in skipped)


def test_compare_with_no_run_left_is_one_line(runs_root, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "fedavg-0", root / "only")
    (root / "only" / "metrics.jsonl").write_text("")
    assert cli_main(["compare", str(root), "--out", str(tmp_path / "out")]) == 2
    assert "has eval returns to compare" in _one_error_line(capsys)


def test_a_strategy_config_it_rejects_still_reads_only_its_own_section():
    config = tiny_config(strategy__name="krum")  # 3 clients: too few for strategy.krum.f=1
    reads = compare.strategy_fields_read(config)
    assert reads == {"strategy.krum.f", "strategy.clip_update_norm"}
