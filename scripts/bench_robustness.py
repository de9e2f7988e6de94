"""Attacks x robust rules: final eval return of the global policy, IQM over seeds.

Issue 22's table. Rows are attacks (`none`, the update attacks and the
environment attacks of `jfedrl.attacks`; ALIE also at a fixed z of 1 and 2,
`ROW_SETUPS`), columns are aggregation rules, and a
cell is the IQM of the final global eval return over the seeds with its 95 %
stratified-bootstrap CI (`jfedrl.experiments.compare.estimate`, rliable's
definitions), in two settings:

- `fedpgbr`: FedPG-BR's (Fan et al. 2021): CartPole-v1, 10 clients, 3 Byzantine
  (`attack.fraction: 0.3`), Krum's f = 3, trimmed mean beta = 0.3;
- `large`: Acrobot-v1, 64 clients, floor(0.2 x 64) = 12 Byzantine, f = 12,
  beta = 0.2.

Each setting is one `jfedrl sweep` (`jfedrl.experiments.sweep.run_sweep`) whose
setups are the (attack, rule) cells. The sweep compiles one program per group:
per rule, one for `none` and one for every attack (the run's attack is a traced
index, `jfedrl.attacks.round.AttackChoice`), each with its runs (attacks x
seeds) vmapped; a rule's name is static, so each rule is its own group. The
sweep runs as its part 1/1, which leaves out the pairwise comparison of every
cell with every other; the table's statistics are computed here from the runs'
metrics. Every group's wall time (training + compilation, from its runs'
records) and each sweep's total are recorded.

Each setting's sweep runs in a child process: should it die (a signal, an
out-of-memory kill), the sweep is resumed from its finished groups, up to
`--retries` times, and the report names each crash.

Writes `<out>.md` and `<out>.json` (default bench/robustness), the sweeps under
`<work>/` (default a temporary folder; `--work DIR` keeps them). `--report DIR`
writes the table from the finished runs of a `--work` folder without training
(cells without finished runs are shown as `–`), so an interrupted bench still
reports exactly what it measured.

    python -m scripts.bench_robustness                        # everything (long on a CPU)
    python -m scripts.bench_robustness --settings fedpgbr --rounds 8 --seeds 5
    python -m scripts.bench_robustness --quick                 # 2 seeds, tiny budget (tests)
    python -m scripts.bench_robustness --work sweeps/rob --attacks none sign_flip alie
    python -m scripts.bench_robustness --report sweeps/rob
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scripts import benchlib

ATTACKS = (
    "none",
    "sign_flip",
    "scale",
    "gaussian",
    "zero",
    "free_rider",
    "random_noise",
    "alie",
    "alie_z1",
    "alie_z2",
    "ipm",
    "reward_flip",
    "random_action",
    "obs_noise",
)
"""The table's rows: no attack, the update attacks (ALIE also at a fixed z,
`ROW_SETUPS`), then the environment attacks."""

#: Rows that are an attack with parameters other than its defaults: ALIE at the
#: paper's z (`alie`, from n and f) is mild at these client counts, so the table
#: also runs it at fixed, larger z (a traced parameter: same program).
ROW_SETUPS = {
    "alie_z1": {"attack.name": "alie", "attack.alie.z": 1.0},
    "alie_z2": {"attack.name": "alie", "attack.alie.z": 2.0},
}


def row_setup(row: str) -> dict[str, Any]:
    """The config fields (dotted) of one row of the table."""
    return dict(ROW_SETUPS.get(row, {"attack.name": row}))


def row_of(values: dict[str, Any]) -> str:
    """The row a setup's values belong to (the inverse of `row_setup`)."""
    attack = {k: v for k, v in values.items() if k.startswith("attack.")}
    return next(
        (row for row, fields in ROW_SETUPS.items() if fields == attack), attack["attack.name"]
    )


RULES = (
    "fedavg",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clip",
    "norm_bound",
    "frl_filter",
)
"""The table's columns."""

ROBUST = tuple(rule for rule in RULES if rule != "fedavg")


@dataclass(frozen=True)
class Setting:
    """One federation the table is measured in."""

    name: str
    env: str
    clients: int
    fraction: float
    rounds: int
    description: str
    budget: tuple[tuple[str, Any], ...] = ()
    """Config fields (dotted) that size its local training and evaluation, so the
    whole table fits its time budget on 2 CPU cores; the rest is the default config."""

    @property
    def byzantine(self) -> int:
        """Byzantine clients: floor(fraction x clients), as `attack.fraction` draws them."""
        return math.floor(self.fraction * self.clients + 1e-9)


SETTINGS = {
    "fedpgbr": Setting(
        "fedpgbr", "CartPole-v1", 10, 0.3, 8, "FedPG-BR's: CartPole-v1, 10 clients, 3 Byzantine"
    ),
    # 64 clients x 13 attack rows x 5 seeds in one program per rule: 2 local updates a
    # round and 2 eval episodes per client keep 8 rounds within the hour's budget
    # (at 4 rounds, some seeds had not yet learned Acrobot at all: bimodal cells).
    "large": Setting(
        "large",
        "Acrobot-v1",
        64,
        0.2,
        8,
        "large: Acrobot-v1, 64 clients, 12 Byzantine",
        (("federation.local_updates", 2), ("log.eval_episodes", 2)),
    ),
}

#: The tiny local budget of `--quick` (the tests' tiny config: compiles fast on 2 cores).
QUICK_BASE = {
    "federation.local_updates": 1,
    "algo.ppo.num_envs": 2,
    "algo.ppo.num_steps": 16,
    "algo.ppo.num_minibatches": 2,
    "algo.ppo.update_epochs": 1,
    "algo.ppo.hidden_sizes": [8],
    "log.eval_episodes": 1,
}


def base_config(setting: Setting, rounds: int, quick: bool = False) -> dict[str, Any]:
    """The config every cell of `setting` shares (dotted keys): the env, the federation,
    the Byzantine fraction and each rule's tolerance matched to the Byzantine count."""
    f = setting.byzantine
    base: dict[str, Any] = {
        "env.name": setting.env,
        "federation.num_clients": setting.clients,
        "federation.rounds": rounds,
        "attack.fraction": setting.fraction,
        "strategy.krum.f": f,
        "strategy.multi_krum.f": f,
        "strategy.trimmed_mean.beta": round(f / setting.clients, 6),
        "log.rounds_per_block": rounds,  # one block: one compiled program, one final eval
        "log.tensorboard": False,
        "log.plot": False,
        "log.keep_checkpoints": 1,
        **dict(setting.budget),
    }
    if quick:
        base.update(QUICK_BASE)
    return base


def setups(attacks: Sequence[str], rules: Sequence[str]) -> list[dict[str, str]]:
    """The sweep's setups, one per cell, row by row (attacks outer, rules inner)."""
    return [{**row_setup(a), "strategy.name": r} for a in attacks for r in rules]


def sweep_data(
    setting: Setting,
    attacks: Sequence[str],
    rules: Sequence[str],
    seeds: int,
    rounds: int,
    quick: bool = False,
) -> dict[str, Any]:
    """The sweep file of one setting."""
    return {
        "name": f"robustness-{setting.name}",
        "base": base_config(setting, rounds, quick),
        "setups": setups(attacks, rules),
        "seeds": seeds,
    }


def cell_estimate(scores: Sequence[float], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """IQM of a cell's final returns with its 95 % bootstrap CI (`compare.estimate`)."""
    from jfedrl.experiments.compare import estimate

    values = np.asarray([s for s in scores if s is not None], float)
    if values.size == 0:
        return {"iqm": None, "low": None, "high": None, "runs": 0}
    interval = estimate(values[:, None], "iqm", reps=reps, seed=seed)
    return {
        "iqm": interval.value,
        "low": interval.low,
        "high": interval.high,
        "runs": int(values.size),
    }


def format_cell(cell: dict[str, Any] | None) -> str:
    """`IQM [low, high]` (one decimal), `–` without runs."""
    if not cell or cell.get("iqm") is None:
        return "–"
    return f"{cell['iqm']:.1f} [{cell['low']:.1f}, {cell['high']:.1f}]"


def markdown_table(cells: dict[str, dict[str, Any]], attacks, rules) -> list[str]:
    """Rows = attacks, columns = rules; `cells[f"{attack}/{rule}"]`."""
    rows = [[f"`{a}`"] + [format_cell(cells.get(f"{a}/{r}")) for r in rules] for a in attacks]
    return benchlib.table(["attack \\ rule"] + [f"`{r}`" for r in rules], rows)


def seconds_table(cells: dict[str, dict[str, Any]], attacks, rules) -> list[str]:
    """Each group's wall seconds (training + compilation): per rule, `none`'s program
    and the program of every attack (its runs share one time)."""

    def cell(row, rule):
        seconds = [cells.get(f"{a}/{rule}", {}).get("group_seconds") for a in row]
        seconds = [x for x in seconds if x is not None]
        return "–" if not seconds else f"{max(seconds):.0f}"

    attacked = [a for a in attacks if a != "none"]
    rows = []
    if "none" in attacks:
        rows.append(["`none`"] + [cell(["none"], r) for r in rules])
    if attacked:
        rows.append([f"the {len(attacked)} attacks"] + [cell(attacked, r) for r in rules])
    return benchlib.table(["program \\ rule"] + [f"`{r}`" for r in rules], rows)


def program_seconds(cells: dict[str, dict[str, Any]], attacks, rules) -> list[float]:
    """The wall seconds of each compiled program (per rule: `none`'s, every attack's;
    the cells of one program share its time, so each program counts once)."""
    out = []
    for rule in rules:
        for row in (["none"], [a for a in attacks if a != "none"]):
            seconds = [cells.get(f"{a}/{rule}", {}).get("group_seconds") for a in row]
            seconds = [x for x in seconds if x is not None]
            if seconds:
                out.append(max(seconds))
    return out


SELECTING = ("krum", "multi_krum", "frl_filter")
"""The rules that report `selected`: their detection rates are tabled."""


def detection_table(cells: dict[str, dict[str, Any]], attacks, rules) -> list[str]:
    """The selecting rules' mean per-round detection rate (malicious updates dropped /
    malicious updates seen), averaged over the cell's seeds; `–` without attackers."""
    chosen = [r for r in rules if r in SELECTING]

    def cell(key):
        rate = cells.get(key, {}).get("detection_rate")
        return "–" if rate is None else f"{rate:.2f}"

    rows = [[f"`{a}`"] + [cell(f"{a}/{r}") for r in chosen] for a in attacks if a != "none"]
    return benchlib.table(["attack \\ rule"] + [f"`{r}`" for r in chosen], rows)


def _iqm(cells, key):
    cell = cells.get(key)
    return None if not cell or cell.get("iqm") is None else cell["iqm"]


def _below(measured: float, reference: float, fraction: float) -> bool:
    """Whether `measured` is more than `fraction` of |reference| below `reference`.

    Sign-aware, so it reads the same for CartPole's positive returns and
    Acrobot's negative ones (-500 is the worst there; 0.9 x -92 would be better).
    """
    return measured < reference - fraction * abs(reference)


def known_facts(cells: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's known facts, each checked on the measured cells: shown, not shown,
    or not measured (a cell it needs has no finished run)."""
    lines = []
    clean = _iqm(cells, "none/fedavg")
    flipped = _iqm(cells, "sign_flip/fedavg")
    if clean is None or flipped is None:
        lines.append("- FedAvg under sign flipping: not measured (a cell has no finished run).")
    else:
        collapsed = _below(flipped, clean, 0.5)
        lines.append(
            f"- FedAvg under sign flipping: IQM {flipped:.1f} against {clean:.1f} without "
            f"attack: {'shown' if collapsed else 'NOT shown'} (collapse = more than half of "
            "|no-attack return| below it)."
        )
    for attack in ATTACKS[1:]:
        measured = {r: _iqm(cells, f"{attack}/{r}") for r in ROBUST}
        measured = {r: v for r, v in measured.items() if v is not None}
        if clean is None or not measured:
            continue
        best = max(measured, key=measured.get)
        within = not _below(measured[best], clean, 0.1)
        lines.append(
            f"- `{attack}`: best robust rule `{best}` at {measured[best]:.1f}, "
            + ("within" if within else "NOT within")
            + f" 10 % of FedAvg without attack ({clean:.1f})."
        )
    alie_rows = [
        "alie",
        *(row for row, fields in ROW_SETUPS.items() if fields["attack.name"] == "alie"),
    ]
    for rule in ("krum", "median"):
        for row in alie_rows:
            alie, rule_clean = _iqm(cells, f"{row}/{rule}"), _iqm(cells, f"none/{rule}")
            label = "ALIE" if row == "alie" else f"ALIE (`{row}`)"
            if alie is None or rule_clean is None:
                if row == "alie":
                    lines.append(f"- {label} against `{rule}`: not measured.")
                continue
            defeated = _below(alie, rule_clean, 0.1)
            diagnostics = cells.get(f"{row}/{rule}", {}).get("attack_diagnostics") or {}
            z = diagnostics.get("attack/alie_z")
            lines.append(
                f"- {label} against `{rule}`: {alie:.1f} against {rule_clean:.1f} without attack: "
                + ("degraded by more than 10 % (shown)" if defeated else "NOT degraded by 10 %")
                + (f" (z = {z:.2f})" if z is not None else "")
                + "."
            )
    return lines


def read_cells(sweep_dir: Path, rounds: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every cell's finished runs in a sweep folder: final returns, seeds, group seconds."""
    from jfedrl.experiments.sweep import RUNS_DIR, load, run_dir_name
    from jfedrl.run.outputs import read_metrics

    sweep = load(sweep_dir / "sweep.yaml")
    cells: dict[str, dict[str, Any]] = {}
    for index, setup in enumerate(sweep.setups):
        key = f"{row_of(setup.values)}/{setup.values['strategy.name']}"
        scores, seconds, byzantine, detection, diagnostics = [], [], [], [], {}
        for seed in sweep.seeds:
            records = read_metrics(sweep_dir / RUNS_DIR / run_dir_name(index, setup, seed))
            if not records or records[-1]["round"] < rounds:
                continue
            evaluated = [r["eval_return"] for r in records if r.get("eval_return") is not None]
            scores.append(evaluated[-1] if evaluated else None)
            compiled = sum(r.get("compile_seconds") or 0.0 for r in records)
            seconds.append(records[-1]["wall_seconds"] + compiled)
            byzantine.append(records[-1].get("byzantine/count"))
            rate = [r.get("byzantine/detection_rate") for r in records]
            rate = [x for x in rate if x is not None]
            if rate:
                detection.append(float(np.mean(rate)))
            for record in records:
                for name, value in record.items():
                    if name.startswith("attack/") and name != "attack/active" and value is not None:
                        diagnostics.setdefault(name, []).append(float(value))
        cell = cell_estimate(scores)
        cell.update(
            scores=scores,
            # The runs of a group run in lockstep: each records the group's time.
            group_seconds=max(seconds) if seconds else None,
            byzantine_participants=byzantine[0] if byzantine else None,
            detection_rate=float(np.mean(detection)) if detection else None,
            # The attack's own diagnostics (e.g. ALIE's z), averaged over rounds and seeds.
            attack_diagnostics={k: float(np.nanmean(v)) for k, v in diagnostics.items()},
        )
        cells[key] = cell
    return cells, {"seeds": list(sweep.seeds)}


def run_setting(
    setting: Setting, attacks, rules, seeds: int, rounds: int, work: Path, quick: bool
) -> float:
    """Runs (or resumes) the setting's sweep under `work`; returns its wall seconds."""
    from jfedrl.experiments.sweep import run_sweep

    sweep_dir = work / setting.name
    start = time.perf_counter()
    if (sweep_dir / "sweep.yaml").is_file():
        run_sweep(None, resume=sweep_dir, progress=False, quiet=True, part=(1, 1))
    else:
        sweep_file = work / f"{setting.name}.yaml"
        work.mkdir(parents=True, exist_ok=True)
        data = sweep_data(setting, attacks, rules, seeds, rounds, quick)
        sweep_file.write_text(yaml.safe_dump(data, sort_keys=False))
        # Part 1/1: every group, without the all-pairs comparison (computed here instead).
        run_sweep(sweep_file, sweep_dir, progress=False, quiet=True, part=(1, 1))
    return time.perf_counter() - start


def run_in_child(name: str, args: argparse.Namespace, work: Path) -> tuple[float, list[str]]:
    """Runs setting `name`'s sweep in a child process, resuming it after a crash.

    Returns:
        The wall seconds of every attempt together, and one line per crash (its exit
        status or signal). Raises SystemExit when the last of `args.retries` resumes
        crashed too.
    """
    command = [sys.executable, "-m", "scripts.bench_robustness", "--child", name]
    command += ["--attacks", *args.attacks, "--rules", *args.rules]
    command += ["--seeds", str(args.seeds), "--rounds", str(args.rounds), "--work", str(work)]
    command += ["--quick"] if args.quick else []
    crashes: list[str] = []
    total = 0.0
    for _ in range(args.retries + 1):
        start = time.perf_counter()
        code = subprocess.run(command, cwd=benchlib.ROOT, check=False).returncode
        total += time.perf_counter() - start
        if code == 0:
            return total, crashes
        how = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit {code}"
        crashes.append(f"{time.strftime('%H:%M:%S')} UTC after {total:.0f} s: {how}")
        print(f"{name}: the sweep died ({how}); resuming from its finished groups", flush=True)
    raise SystemExit(f"{name}: the sweep died {len(crashes)} times: " + "; ".join(crashes))


def report(
    work: Path,
    names: Sequence[str],
    wall: dict[str, float],
    facts: dict[str, Any] | str,
    command: str,
    quick: bool = False,
    revision: str = "",
    stopped: Sequence[str] = (),
    note: str = "",
    crashes: dict[str, list[str]] | None = None,
) -> tuple[dict[str, Any], str]:
    """The json report and the markdown of every setting measured under `work`."""
    out: dict[str, Any] = {
        "machine": facts,
        "command": command,
        "revision": revision,
        "quick": quick,
        "settings": {},
    }
    lines = [
        "# Robustness: attacks x aggregation rules",
        "",
        f"{str(facts['date'])[:10] if isinstance(facts, dict) else ''} "
        f"{benchlib.describe(facts)}. `{command}`"
        + (f" at revision {revision}" if revision else "")
        + ".",
        "",
        "A cell is the IQM of the final global eval return (deterministic policy, every "
        "client's environment) over the seeds, with its 95 % stratified-bootstrap CI "
        "(rliable's definitions, `jfedrl.experiments.compare`); `–`: not measured. "
        "Rows: attacks (`none` = every client honest), columns: rules. Default PPO and "
        "default attack parameters; each rule's tolerance set to the Byzantine count "
        "(Krum f, trimmed-mean beta). docs/robustness.md says how to read it.",
        "",
    ]
    if note:
        lines += [note, ""]
    if quick:
        lines += [
            "**`--quick` budget** (a tiny network, a few rounds, 2 seeds): it tests the script; "
            "its numbers say nothing about the rules.",
            "",
        ]
    for name in names:
        setting = SETTINGS[name]
        sweep_dir = work / name
        if not (sweep_dir / "sweep.yaml").is_file():
            continue
        data = yaml.safe_load((work / name / "sweep.yaml").read_text())
        rounds = data["base"]["federation.rounds"]
        cells, meta = read_cells(sweep_dir, rounds)
        attacks = [a for a in ATTACKS if any(k.startswith(f"{a}/") for k in cells)]
        rules = [r for r in RULES if any(k.endswith(f"/{r}") for k in cells)]
        measured = program_seconds(cells, attacks, rules)
        done = sum(1 for c in cells.values() if c["runs"] > 0)
        out["settings"][name] = {
            "setting": setting.__dict__
            | {"byzantine": setting.byzantine, "budget": dict(setting.budget)},
            "rounds": rounds,
            "seeds": meta["seeds"],
            "sweep_wall_seconds": wall.get(name),
            "sweep_stopped_early": name in stopped,
            "crashes": (crashes or {}).get(name, []),
            "cells": cells,
        }
        total = wall.get(name)
        lines += [
            f"## {setting.description} ({rounds} rounds, {len(meta['seeds'])} seeds)",
            "",
            f"{done} of {len(cells)} cells measured; "
            f"{setting.byzantine} of {setting.clients} clients Byzantine under every attack. "
            + (
                "Budget: "
                + ", ".join(f"`{k}: {v}`" for k, v in setting.budget)
                + " (the rest is the default config). "
                if setting.budget
                else ""
            )
            + (f"Sweep wall time {total:.0f} s" if total else "")
            + (
                " (from its files' times: the sweep did not record its own, it was stopped)"
                if total and name in stopped
                else ""
            )
            + ("; " if total else "")
            + f"sum of the programs' training + compilation {sum(measured):.0f} s."
            + (
                f" The sweep's process died {len(died)} time(s) and was resumed from its "
                f"finished groups ({'; '.join(died)})."
                if (died := (crashes or {}).get(name))
                else ""
            ),
            "",
            *markdown_table(cells, attacks, rules),
            "",
            "Known facts, checked on these cells:",
            "",
            *known_facts(cells),
            "",
            "Detection rate of the selecting rules (malicious updates dropped / malicious "
            "updates seen, per round, averaged over rounds and seeds; `byzantine/*` metrics):",
            "",
            *detection_table(cells, attacks, rules),
            "",
            "Wall seconds per compiled program (per rule: `none` x the seeds, and every "
            "attack x the seeds, vmapped; training + compilation):",
            "",
            *seconds_table(cells, attacks, rules),
            "",
        ]
    missing = [SETTINGS[n].description for n in SETTINGS if n not in out["settings"]]
    if missing:
        lines += ["Not measured in this file: " + "; ".join(missing) + ".", ""]
    load = benchlib.load_averages(facts)
    if load:
        lines += [benchlib.load_note(load), ""]
    return out, "\n".join(lines)


META_FILE = "bench_meta.json"
"""In the `--work` folder: the measuring command, revision, machine and sweep wall times."""


def read_meta(work: Path) -> dict[str, Any]:
    path = work / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_meta(work: Path, meta: dict[str, Any]) -> None:
    (work / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def file_time_span(sweep_dir: Path) -> float:
    """Seconds from the sweep file's writing to the last run's last metrics record: the
    wall time of a sweep that was stopped before it could record its own."""
    ends = [p.stat().st_mtime for p in sweep_dir.glob("runs/*/metrics.jsonl")]
    start = (sweep_dir / "sweep.yaml").stat().st_mtime
    return max(ends) - start if ends else 0.0


def git_revision() -> str:
    """The checkout's short commit (with `+dirty` for uncommitted changes), or ""."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=benchlib.ROOT,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=benchlib.ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=0, help="0: the setting's own")
    parser.add_argument("--quick", action="store_true", help="2 seeds, tiny budget (tests)")
    parser.add_argument("--work", default="", help="keep the sweeps here (resumable)")
    parser.add_argument("--report", default="", help="only write the table from this --work")
    parser.add_argument("--out", default=str(benchlib.BENCH / "robustness"))
    parser.add_argument("--note", default="", help="a paragraph for the report (e.g. why a subset)")
    parser.add_argument("--retries", type=int, default=3, help="resumes after a crashed sweep")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # one setting's sweep
    args = parser.parse_args(argv)
    if args.child:
        from jfedrl.run.startup import prepare_process

        prepare_process()
        setting = SETTINGS[args.child]
        rounds = args.rounds or setting.rounds
        work = Path(args.work)
        run_setting(setting, args.attacks, args.rules, args.seeds, rounds, work, args.quick)
        return
    if args.quick:
        args.seeds = 2
        args.rounds = args.rounds or 2
        if args.settings == list(SETTINGS):
            args.settings = ["fedpgbr"]
    words = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m scripts.bench_robustness", *words])
    if args.report:
        work = Path(args.report)
        meta = read_meta(work)
        facts = meta.get("machine") or benchlib.machine(with_jax=False)
        if "loadavg_at_end" not in facts:  # a run that stopped before its end was recorded
            facts = benchlib.finish(facts)
        wall = {n: w for n, w in meta.get("wall", {}).items() if w is not None}
        stopped = [n for n in args.settings if n not in wall and (work / n).is_dir()]
        for name in stopped:
            wall[name] = file_time_span(work / name)
        names = [n for n in args.settings if (work / n).is_dir()]
        report_data, markdown = report(
            work,
            names,
            wall,
            facts,
            meta.get("command", command),
            args.quick or bool(meta.get("quick")),
            meta.get("revision", ""),
            stopped,
            args.note,
            meta.get("crashes"),
        )
        benchlib.write_report(Path(args.out), report_data, markdown)
        return
    from jfedrl.run.startup import prepare_process

    prepare_process()  # the machine facts see the devices the children's sweeps see
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        meta = read_meta(work) or {
            "command": command,
            "revision": git_revision(),
            "quick": args.quick,
            "machine": benchlib.machine(),
            "wall": {},
            "crashes": {},
        }
        write_meta(work, meta)  # a later --report of this folder states what was run
        for name in args.settings:
            wall, crashes = run_in_child(name, args, work)
            print(f"{name}: {wall:.0f} s", flush=True)
            meta["wall"][name] = meta["wall"].get(name, 0.0) + wall  # resumed: both parts
            meta.setdefault("crashes", {}).setdefault(name, []).extend(crashes)
            write_meta(work, meta)
        facts = meta["machine"] = benchlib.finish(meta["machine"])
        write_meta(work, meta)  # a later --report states the load of the run, not its own
        report_data, markdown = report(
            work,
            args.settings,
            meta["wall"],
            facts,
            meta["command"],
            meta["quick"],
            meta["revision"],
            note=args.note,
            crashes=meta.get("crashes"),
        )
    benchlib.write_report(Path(args.out), report_data, markdown)


if __name__ == "__main__":
    main()
