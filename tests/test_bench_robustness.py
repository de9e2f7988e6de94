"""`scripts/bench_robustness.py`: its sweep files validate, its statistics are rliable's
IQM with a bootstrap CI, its known-fact lines follow the numbers, and `--quick` runs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy import stats

from jfedrl.experiments.sweep import parse, plan_groups
from scripts import bench_robustness as bench


def test_every_cell_of_both_settings_is_a_valid_setup_and_a_rule_compiles_twice():
    for setting in bench.SETTINGS.values():
        data = bench.sweep_data(setting, bench.ATTACKS, bench.RULES, seeds=5, rounds=4)
        sweep = parse(data)  # validates every setup for every seed, compiles nothing
        assert len(sweep.setups) == len(bench.ATTACKS) * len(bench.RULES)
        groups = plan_groups(sweep)
        # Per rule: `none` alone, every attack in one program (the attack traced).
        assert len(groups) == 2 * len(bench.RULES)
        for group in groups:
            rules = {sweep.setups[i].values["strategy.name"] for i in group.indices}
            rows = [bench.row_of(sweep.setups[i].values) for i in group.indices]
            assert len(rules) == 1
            assert rows == ["none"] or rows == list(bench.ATTACKS[1:])  # fixed-z ALIE too
        config = sweep.setups[0].config
        assert config.federation.num_clients == setting.clients
        assert config.env.name == setting.env
        assert config.strategy.krum.f == setting.byzantine
    assert bench.SETTINGS["fedpgbr"].byzantine == 3
    assert bench.SETTINGS["large"].byzantine == 12


def test_the_trimmed_mean_trims_the_byzantine_count():
    from jfedrl.strategies.robust import trim_count

    for setting in bench.SETTINGS.values():
        beta = bench.base_config(setting, 4)["strategy.trimmed_mean.beta"]
        assert int(trim_count(np.asarray(setting.clients), beta)) == setting.byzantine


def test_a_cell_is_the_iqm_with_a_bootstrap_interval():
    scores = [500.0, 480.0, 9.0, 495.0, 470.0, 500.0]
    cell = bench.cell_estimate(scores, reps=500)
    assert cell["iqm"] == pytest.approx(stats.trim_mean(scores, 0.25))
    assert cell["low"] <= cell["iqm"] <= cell["high"]
    assert cell["runs"] == 6
    assert bench.cell_estimate([None, None])["iqm"] is None
    assert bench.format_cell(cell).startswith(f"{cell['iqm']:.1f} [")
    assert bench.format_cell(None) == "–"


def test_the_table_puts_attacks_in_rows_and_rules_in_columns():
    cells = {"none/fedavg": bench.cell_estimate([1.0, 2.0, 3.0], reps=100)}
    lines = bench.markdown_table(cells, ["none", "alie"], ["fedavg", "krum"])
    assert lines[0] == "| attack \\ rule | `fedavg` | `krum` |"
    assert lines[2].startswith("| `none` | 2.0 [") and lines[2].endswith(" | – |")
    assert lines[3] == "| `alie` | – | – |"


def cells_of(values: dict[str, float]) -> dict[str, dict]:
    return {key: {"iqm": value} for key, value in values.items()}


def test_known_facts_follow_the_numbers():
    shown = bench.known_facts(
        cells_of(
            {
                "none/fedavg": 500.0,
                "sign_flip/fedavg": 20.0,
                "sign_flip/median": 470.0,
                "none/krum": 480.0,
                "alie/krum": 100.0,
                "none/median": 490.0,
                "alie/median": 480.0,
            }
        )
    )
    assert "IQM 20.0 against 500.0 without attack: shown" in shown[0]
    assert any("`sign_flip`: best robust rule `median` at 470.0, within" in x for x in shown)
    assert any("against `krum`: 100.0 against 480.0" in x and "(shown)" in x for x in shown)
    assert any("against `median`" in x and "NOT degraded" in x for x in shown)
    not_shown = bench.known_facts(
        cells_of({"none/fedavg": 500.0, "sign_flip/fedavg": 400.0, "sign_flip/krum": 300.0})
    )
    assert "NOT shown" in not_shown[0]
    assert any("`krum` at 300.0, NOT within" in x for x in not_shown)
    assert any("ALIE against `median`: not measured" in x for x in not_shown)


def test_known_facts_read_negative_returns_the_right_way():
    """Acrobot's returns are negative (-500 the worst): 10 % and half are of |return|."""
    facts = bench.known_facts(
        cells_of(
            {
                "none/fedavg": -100.0,
                "sign_flip/fedavg": -160.0,  # 60 % of |-100| below: a collapse
                "sign_flip/median": -108.0,  # 8 % below: within 10 %
                "scale/median": -112.0,  # 12 % below: not within
                "none/krum": -100.0,
                "alie/krum": -115.0,  # 15 % below: degraded
                "none/median": -100.0,
                "alie/median": -95.0,  # better than without attack
            }
        )
    )
    assert "IQM -160.0 against -100.0 without attack: shown" in facts[0]
    assert any("`sign_flip`: best robust rule `median` at -108.0, within" in x for x in facts)
    assert any("`scale`: best robust rule `median` at -112.0, NOT within" in x for x in facts)
    assert any("against `krum`" in x and "(shown)" in x for x in facts)
    assert any("against `median`" in x and "NOT degraded" in x for x in facts)
    mild = bench.known_facts(cells_of({"none/fedavg": -100.0, "sign_flip/fedavg": -140.0}))
    assert "NOT shown" in mild[0]


@pytest.mark.slow
def test_quick_mode_writes_the_table_and_the_json(tmp_path):
    """The whole script at its `--quick` budget: 2 seeds, 2 cells, no attack."""
    out = tmp_path / "robustness"
    work = tmp_path / "work"
    bench.main(
        ["--quick", "--attacks", "none", "--rules", "fedavg", "median"]
        + ["--work", str(work), "--out", str(out)]
    )
    report = json.loads((tmp_path / "robustness.json").read_text())
    cells = report["settings"]["fedpgbr"]["cells"]
    assert set(cells) == {"none/fedavg", "none/median"}
    for cell in cells.values():
        assert cell["runs"] == 2 and len(cell["scores"]) == 2
        assert cell["low"] <= cell["iqm"] <= cell["high"]
        assert cell["group_seconds"] > 0
    markdown = (tmp_path / "robustness.md").read_text()
    assert "| `none` |" in markdown and "`--quick` budget" in markdown
    # --report rewrites the same table from the kept sweeps, without training.
    bench.main(["--report", str(work), "--out", str(out), "--settings", "fedpgbr"])
    again = json.loads((tmp_path / "robustness.json").read_text())
    assert (
        again["settings"]["fedpgbr"]["cells"]["none/fedavg"]["scores"]
        == (cells["none/fedavg"]["scores"])
    )


def test_the_detection_table_has_the_selecting_rules_only():
    cells = {"alie/krum": {"detection_rate": 0.667}, "alie/median": {"detection_rate": None}}
    lines = bench.detection_table(cells, ["none", "alie"], ["fedavg", "median", "krum"])
    assert lines[0] == "| attack \\ rule | `krum` |"
    assert lines[2:] == ["| `alie` | 0.67 |"]


def _child_exits(monkeypatch, codes):
    import subprocess

    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, codes[len(calls) - 1])

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    return calls


def test_a_crashed_sweep_is_resumed_and_the_crash_named(monkeypatch, tmp_path):
    args = argparse.Namespace(
        attacks=["none"], rules=["fedavg"], seeds=2, rounds=2, quick=True, retries=2
    )
    calls = _child_exits(monkeypatch, [-11, 0])
    wall, crashes = bench.run_in_child("fedpgbr", args, tmp_path)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same sweep, resumed
    assert "--child" in calls[0] and str(tmp_path) in calls[0]
    assert len(crashes) == 1 and "signal 11 (SIGSEGV)" in crashes[0] and wall >= 0
    _child_exits(monkeypatch, [-9, 1, -11])
    with pytest.raises(SystemExit, match="died 3 times"):
        bench.run_in_child("fedpgbr", args, tmp_path)


def test_the_seconds_table_has_one_row_per_program():
    cells = {
        "none/fedavg": {"group_seconds": 12.0},
        "alie/fedavg": {"group_seconds": 40.0},
        "ipm/fedavg": {"group_seconds": 41.0},
    }
    lines = bench.seconds_table(cells, ["none", "alie", "ipm"], ["fedavg", "krum"])
    assert lines[2:] == ["| `none` | 12 | – |", "| the 2 attacks | 41 | – |"]


def test_load_note_says_whether_other_jobs_shared_the_machine(monkeypatch):
    from scripts import benchlib

    monkeypatch.setattr(benchlib.os, "cpu_count", lambda: 2)
    assert benchlib.load_note(None) == ""
    idle = benchlib.load_note((0.4, 1.7))
    assert idle.startswith("The machine was otherwise idle at the start (1-minute load average 0.4")
    assert "1.7 at the end, the run's own work included; 2 cores" in idle
    assert benchlib.load_note((2.5, 3.0)).startswith("Other jobs shared the machine")


def test_a_later_report_states_the_load_of_the_run_not_its_own(monkeypatch, tmp_path):
    from scripts import benchlib

    work, out = tmp_path / "work", tmp_path / "robustness"
    monkeypatch.setattr(bench, "run_in_child", lambda name, args, work: (3.0, []))
    monkeypatch.setattr(benchlib, "finish", lambda facts: dict(facts, loadavg_at_end=[7.0]))
    first = ["--quick", "--attacks", "none", "--rules", "fedavg", "--work", str(work)]
    bench.main(first + ["--out", str(tmp_path / "first")])
    assert bench.read_meta(work)["machine"]["loadavg_at_end"] == [7.0]
    monkeypatch.setattr(benchlib, "finish", lambda facts: dict(facts, loadavg_at_end=[9.0]))
    bench.main(["--report", str(work), "--out", str(out)])
    assert json.loads((tmp_path / "robustness.json").read_text())["machine"]["loadavg_at_end"] == [
        7.0
    ]


def test_alie_rows_at_a_fixed_z_are_setups_of_the_alie_attack():
    cells = bench.setups(["alie", "alie_z2"], ["krum"])
    assert cells == [
        {"attack.name": "alie", "strategy.name": "krum"},
        {"attack.name": "alie", "attack.alie.z": 2.0, "strategy.name": "krum"},
    ]
    assert [bench.row_of(c) for c in cells] == ["alie", "alie_z2"]
    assert bench.row_of({"attack.name": "alie", "attack.alie.z": 3.0}) == "alie"  # not a row
    facts = bench.known_facts(
        cells_of({"none/krum": 400.0, "alie/krum": 390.0, "alie_z2/krum": 100.0})
    )
    assert any(x.startswith("- ALIE against `krum`: 390.0") and "NOT" in x for x in facts)
    assert any(x.startswith("- ALIE (`alie_z2`) against `krum`: 100.0") for x in facts)
    assert not any("alie_z1" in x for x in facts)  # not measured: not a line
