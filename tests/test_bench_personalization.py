"""`scripts/bench_personalization.py`: its report from runs' records, and `--quick` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jfedrl.experiments.compare import RunInfo
from scripts import bench_personalization as bench
from tests.helpers import tiny_config


def fake_runs(finals: list[float]) -> list[RunInfo]:
    """Runs whose last record holds every protocol metric at `final` (+1 for personal)."""
    runs = []
    for final in finals:
        record = {"round": 1, "env_steps": 10, "wall_seconds": 1.0, "eval_return": final}
        for metric, _ in bench.COLUMNS:
            record[metric] = final + (1.0 if "personal" in metric else 0.0)
        record["eval/gap"] = 1.0
        runs.append(RunInfo(Path("."), tiny_config(), {}, [record]))
    return runs


def test_summary_and_markdown_from_records():
    runs = {"fedavg": fake_runs([10.0, 20.0, 30.0, 40.0, 50.0]), "local_only": fake_runs([1.0])}
    summary = bench.summarise(runs, reps=200)
    cell = summary["fedavg"]["eval/holdout/mean"]
    assert cell["finals"] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert cell["iqm"] == pytest.approx(30.0) and cell["low"] <= 30.0 <= cell["high"]
    assert summary["local_only"]["eval/personal/mean"]["iqm"] == pytest.approx(2.0)
    report = {
        "tasks": {
            "t": {
                "fields": "env.variant=clustered",
                "budget": "federation.rounds=1",
                "seeds": 5,
                "command": "python -m scripts.bench_personalization",  # a per-task record
                "machine": {"date": "2026-01-01T00:00:00", "cpu": "x", "cores": 2},
                "methods": {
                    "fedavg": {"wall_seconds": 12.0, "metrics": summary["fedavg"]},
                    "local_only": {"wall_seconds": 3.0, "metrics": summary["local_only"]},
                    "ditto": {"skipped": "no config field personal.name in this jfedrl"},
                },
            }
        }
    }
    text = bench.markdown(report)
    assert "| fedavg | 30.0 [" in text and "| local_only | 1.0 [1.0, 1.0]" in text
    assert "not measured: **ditto**: no config field personal.name" in text
    assert (
        "- fedavg, local_only: measured from 2026-01-01T00:00 UTC on x, 2 cores by `python" in text
    )


def test_a_method_this_jfedrl_lacks_is_reported_not_run():
    assert bench.unavailable({"personal.name": "no-such-method"})  # no section, or unknown
    assert bench.unavailable(bench.METHODS["fedavg"]) == ""
    assert bench.unavailable(bench.METHODS["local_only"]) == ""


@pytest.mark.slow
def test_quick_bench_writes_every_protocol(tmp_path):
    out = tmp_path / "personalization"
    argv = ["--quick", "--tasks", "cartpole-clustered", "--methods", "fedavg", "local_only"]
    report = bench.main([*argv, "--out", str(out), "--work", str(tmp_path / "work")])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["tasks"] == json.loads(json.dumps(report["tasks"]))
    task = saved["tasks"]["cartpole-clustered"]["methods"]
    for method in ("fedavg", "local_only"):
        cells = task[method]["metrics"]
        for metric, _ in bench.COLUMNS:
            assert len(cells[metric]["finals"]) == 2, (method, metric)  # the quick seeds
            assert cells[metric]["low"] <= cells[metric]["iqm"] <= cells[metric]["high"]
        assert task[method]["wall_seconds"] > 0
    local = task["local_only"]["metrics"]
    gaps = [
        p - g
        for p, g in zip(
            local["eval/personal/mean"]["finals"], local["eval/global/mean"]["finals"], strict=True
        )
    ]
    assert local["eval/gap"]["finals"] == pytest.approx(gaps, abs=1e-3)
    text = out.with_suffix(".md").read_text()
    assert "## cartpole-clustered" in text and "| local_only |" in text


def test_from_work_recomputes_the_cells_of_kept_runs(tmp_path):
    from jfedrl.schema.convert import save_yaml

    for seed, final in enumerate([1.0, 2.0, 3.0]):
        run_dir = tmp_path / "work" / "t" / "fedavg" / "runs" / f"00-seed{seed}"
        run_dir.mkdir(parents=True)
        save_yaml(tiny_config(seed=seed), run_dir / "config.yaml")
        record = {"round": 1, "env_steps": 10, "wall_seconds": 1.0, "eval_return": final}
        record.update({metric: final for metric, _ in bench.COLUMNS})
        (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    machine = {"date": "2026-01-01T00:00:00", "cpu": "x", "cores": 2}
    method = {"wall_seconds": 1.0, "command": "c", "machine": machine, "metrics": {}}
    report = {"tasks": {"t": {"fields": "f", "budget": "b", "seeds": 3, "methods": {}}}}
    report["tasks"]["t"]["methods"] = {"fedavg": method, "ditto": {"skipped": "why"}}
    (tmp_path / "p.json").write_text(json.dumps(report))
    rebuilt = bench.from_work(tmp_path / "p", tmp_path / "work", reps=100)
    cell = rebuilt["tasks"]["t"]["methods"]["fedavg"]["metrics"]["eval/holdout/personal/mean"]
    assert cell["finals"] == [1.0, 2.0, 3.0] and cell["iqm"] == pytest.approx(2.0)
    assert rebuilt["tasks"]["t"]["methods"]["fedavg"]["command"] == "c"
    assert "| fedavg | 2.0 [" in (tmp_path / "p.md").read_text()
