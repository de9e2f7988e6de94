"""`jfedrl compare` on hand-made run folders: IQM and bootstrap CIs against NumPy/SciPy."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from scipy import stats

from jfedrl import compare
from jfedrl.cli import main as cli_main
from jfedrl.config import save_yaml
from jfedrl.schema import override
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


@pytest.fixture
def jfedrl_warnings():
    """The messages the `jfedrl` logger warns while the test runs (whatever its handlers)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, logger = Collect(logging.WARNING), logging.getLogger("jfedrl")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


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
