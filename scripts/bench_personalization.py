"""Personalization and generalization: methods x tasks x evaluation protocols, multi-seed.

For every task (a clustered variant: client groups of clearly different dynamics,
docs/environments.md) and every method, one `jfedrl sweep` of N seeds (vmapped in
one program) trains with held-out clients and the personalized evaluation on, and
the final values of the protocols (docs/personalization.md) are summarised per
method by the IQM over seeds with a stratified-bootstrap 95 % CI
(`jfedrl.experiments.compare`):

- (a) `eval/global/*`: the global policy on each training client's env;
- (b) `eval/personal/*`: each client's personalized policy on its own env;
- (c) `eval/holdout/*`: the held-out clients under the global policy;
- (d) `eval/gap`: (b) - (a); worst-client and 10th-percentile columns of each.

Methods: fedavg, fedprox, local_only (no federation: the `local_only` strategy) and
the personalization methods selected by `personal.name` (fedper, ditto, finetune =
"fedavg + FT", ifca). A method the installed jfedrl does not offer (no `personal`
section, or a name it refuses) is skipped, and the report says so. Wall time is
recorded per sweep (compilation included).

Writes bench/personalization.md and .json (`--out`):

    python -m scripts.bench_personalization                      # the full table
    python -m scripts.bench_personalization --methods fedavg local_only --tasks cartpole
    python -m scripts.bench_personalization --quick --out /tmp/p   # a minute: the plumbing
    python -m scripts.bench_personalization --from-work DIR        # the tables again, no runs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from scripts import benchlib

#: Method -> the config fields that select it (over the task's base).
METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy.name": "fedavg"},
    "fedprox": {"strategy.name": "fedprox"},
    "fedper": {"strategy.name": "fedavg", "personal.name": "fedper"},
    "ditto": {"strategy.name": "fedavg", "personal.name": "ditto"},
    # Fine-tuned for one round's local work, from a fresh client state: the clients' own
    # annealed learning rates are near 0 at the end of a run (personal.finetune.fresh_state).
    "fedavg+ft": {
        "strategy.name": "fedavg",
        "personal.name": "finetune",
        "personal.finetune.updates": 4,
        "personal.finetune.fresh_state": True,
    },
    "ifca": {"strategy.name": "fedavg", "personal.name": "ifca"},
    "local_only": {"strategy.name": "local_only"},
}

#: Task -> its env fields. Both are clustered variants (`envs.variants.CLUSTERED`).
TASKS: dict[str, dict[str, Any]] = {
    "cartpole-clustered": {"env.name": "CartPole-v1", "env.variant": "clustered"},
    "acrobot-clustered": {"env.name": "Acrobot-v1", "env.variant": "clustered"},
}

#: The budget of a full run (per seed), and of `--quick`.
FULL = {
    "federation.num_clients": 20,
    "federation.holdout": 4,
    "federation.rounds": 24,
    "federation.local_updates": 4,
    "log.rounds_per_block": 4,
    "log.eval_episodes": 2,
}
QUICK = {
    "federation.num_clients": 4,
    "federation.holdout": 1,
    "federation.rounds": 1,
    "federation.local_updates": 1,
    "algo.ppo.num_envs": 2,
    "algo.ppo.num_steps": 8,
    "algo.ppo.num_minibatches": 1,
    "algo.ppo.update_epochs": 1,
    "algo.ppo.hidden_sizes": [8],
    "env.max_episode_steps": 20,
    "log.rounds_per_block": 1,
    "log.eval_episodes": 1,
}
COMMON = {
    "log.eval_personal": "on",
    "log.tensorboard": False,
    "log.plot": False,
    "log.progress": False,
}

#: The report's columns: (metric key, header).
COLUMNS = (
    ("eval/global/mean", "(a) global"),
    ("eval/global/worst", "(a) worst"),
    ("eval/global/p10", "(a) p10"),
    ("eval/personal/mean", "(b) personal"),
    ("eval/personal/worst", "(b) worst"),
    ("eval/personal/p10", "(b) p10"),
    ("eval/holdout/mean", "(c) held-out"),
    ("eval/holdout/worst", "(c) worst"),
    ("eval/holdout/p10", "(c) p10"),
    ("eval/holdout/personal/mean", "(c) held-out, fine-tuned"),
    ("eval/gap", "(d) gap b-a"),
)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}` (a sweep file's `base`)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def unavailable(fields: dict[str, Any]) -> str:
    """Why this jfedrl cannot run a method's `fields` ("" if it can): checked, not guessed."""
    from jfedrl.config import FACTS, Config
    from jfedrl.schema.checks import ConfigError
    from jfedrl.schema.convert import override
    from jfedrl.validation import validate

    missing = [path for path in fields if path not in FACTS]
    if missing:
        return f"no config field {', '.join(missing)} in this jfedrl"
    try:
        validate(override(Config(), fields))
    except ConfigError as error:
        return str(error)
    return ""


def run_method(
    task: str, method: str, base: dict[str, Any], seeds: int, out: Path
) -> dict[str, Any]:
    """One sweep (N seeds of one setup, one vmapped program); its runs and wall time."""
    from jfedrl.experiments.compare import find_runs
    from jfedrl.experiments.sweep import run_sweep

    sweep_dir = out / task / method
    sweep_file = out / task / f"{method}.yaml"
    sweep_file.parent.mkdir(parents=True, exist_ok=True)
    data = {"name": f"{task}-{method}", "base": nested(base), "setups": [{}], "seeds": seeds}
    sweep_file.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    result = run_sweep(sweep_file, sweep_dir, progress=False, quiet=True)
    seconds = time.perf_counter() - start
    return {"runs": find_runs(result.run_dirs), "wall_seconds": seconds}


def summarise(runs: dict[str, list[Any]], reps: int) -> dict[str, dict[str, Any]]:
    """Per method: each column's IQM [95 % CI] over seeds, and the seeds' raw finals."""
    from jfedrl.experiments.compare import eval_curve, protocol_stats

    stats = protocol_stats(runs, reps=reps)
    out: dict[str, dict[str, Any]] = {}
    for method, members in runs.items():
        cells = {}
        for metric, _ in COLUMNS:
            interval = stats.get(method, {}).get(metric)
            if interval is None:
                continue
            finals = [float(eval_curve(r.records, metric)[1][-1]) for r in members]
            cells[metric] = {
                "iqm": interval.value,
                "low": interval.low,
                "high": interval.high,
                "finals": finals,
            }
        out[method] = cells
    return out


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    return f"{cell['iqm']:.1f} [{cell['low']:.1f}, {cell['high']:.1f}]"


def markdown(report: dict[str, Any]) -> str:
    """bench/personalization.md from the report (each task says how it was measured)."""
    lines = [
        "# Personalization and held-out clients: methods x clustered tasks",
        "",
        "Each method is one `jfedrl sweep` per task (the seeds vmapped in one program). Cells: "
        "IQM of the final value over the seeds [95 % stratified-bootstrap CI] "
        "(`jfedrl.experiments.compare`). Columns: (a) the global policy on the training "
        "clients' own envs, (b) each client's personalized policy on its own env (without a "
        "personalization method: the client's last local params), (c) the held-out clients "
        "under the global policy, (d) gap = (b) - (a); `worst` is the worst client, `p10` the "
        "10th percentile over clients (docs/personalization.md). Wall time: each sweep's whole "
        "time, compilation included.",
        "",
    ]
    for task, entry in report["tasks"].items():
        entry = normalized(entry)
        lines += [
            f"## {task}",
            "",
            f"`{entry['fields']}`. Per run: {entry['budget']}; {entry['seeds']} seeds per method.",
            "",
        ]
        rows = []
        for method, result in entry["methods"].items():
            if "skipped" in result:
                continue
            cells = result["metrics"]
            rows.append(
                [method]
                + [_cell(cells.get(metric)) for metric, _ in COLUMNS]
                + [f"{result['wall_seconds']:.0f}"]
            )
        header = ["method"] + [name for _, name in COLUMNS] + ["sweep wall s"]
        lines += [*benchlib.table(header, rows), ""]
        by_command: dict[str, list[str]] = {}
        for method, result in entry["methods"].items():
            if "skipped" not in result:
                by_command.setdefault(result["command"], []).append(method)
        for command, names in by_command.items():
            first = entry["methods"][names[0]]["machine"]
            last = entry["methods"][names[-1]]["machine"]
            load = benchlib.load_averages(first), benchlib.load_averages(last)
            lines.append(
                f"- {', '.join(names)}: measured from {first['date'][:16]} UTC on "
                f"{benchlib.describe(first)} by `{command}`"
                + (
                    f"; 1-minute load average {load[0][0]:.1f} -> {load[1][1]:.1f}"
                    if all(load)
                    else ""
                )
            )
        lines.append("")
        skipped = {m: r["skipped"] for m, r in entry["methods"].items() if "skipped" in r}
        for method, why in skipped.items():
            lines.append(f"- not measured: **{method}**: {why}")
        if skipped:
            lines.append("")
    if report.get("notes"):
        lines += ["## What this shows", "", *report["notes"], ""]
    lines += [
        "The machine is shared with other jobs (see the load averages), so wall times compare "
        "only roughly; the returns do not depend on it.",
        "",
    ]
    return "\n".join(lines)


def normalized(entry: dict[str, Any]) -> dict[str, Any]:
    """A task's entry with each method's own `command` and `machine` (reports that kept
    them once per task hold them at the task's level)."""
    entry = dict(entry)
    methods = {}
    for method, result in entry["methods"].items():
        result = dict(result)
        if "skipped" not in result:
            result.setdefault("command", entry.get("command", ""))
            result.setdefault("machine", entry.get("machine", {}))
        methods[method] = result
    entry["methods"] = methods
    entry.pop("command", None)
    entry.pop("machine", None)
    return entry


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    from jfedrl.run.startup import prepare_process

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=0, help="override the budget's rounds")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--quick", action="store_true", help="a tiny budget: tests the plumbing")
    parser.add_argument("--out", default=str(benchlib.BENCH / "personalization"))
    parser.add_argument("--work", default="", help="keep the sweep folders here (default: temp)")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the tasks of an existing report at --out that this run does not measure",
    )
    parser.add_argument(
        "--from-work",
        default="",
        help="rebuild the report at --out from the sweep folders kept in this --work (no training)",
    )
    args = parser.parse_args(argv)
    if args.from_work:
        return from_work(args.out, args.from_work, args.reps)
    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering
    budget = dict(QUICK if args.quick else FULL)
    if args.rounds:
        budget["federation.rounds"] = args.rounds
    if args.quick:
        args.seeds = min(args.seeds, 2)
        args.reps = min(args.reps, 200)
    command = "python -m scripts.bench_personalization " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report: dict[str, Any] = {"tasks": {}}
    previous = Path(f"{args.out}.json")
    if args.append and previous.is_file():
        report = json.loads(previous.read_text())

    def entry(task: str, methods: dict[str, Any]) -> dict[str, Any]:
        return {
            "fields": ", ".join(f"{k}={v}" for k, v in TASKS[task].items()),
            "budget": ", ".join(f"{k}={v}" for k, v in budget.items()),
            "seeds": args.seeds,
            "methods": methods,
        }

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for task in args.tasks:
            methods: dict[str, Any] = {}
            kept = report["tasks"].get(task)
            if kept is not None:  # --append: the same budget's other methods stay
                kept = normalized(kept)
                if (kept["budget"], kept["seeds"]) == (entry(task, {})["budget"], args.seeds):
                    methods = kept["methods"]
            runs: dict[str, list[Any]] = {}
            for method in args.methods:
                fields = {**TASKS[task], **budget, **COMMON, **METHODS[method]}
                why = unavailable(fields)
                if why:
                    methods[method] = {"skipped": why}
                    print(f"{task} {method}: skipped: {why}", flush=True)
                    continue
                facts = benchlib.machine()
                done = run_method(task, method, fields, args.seeds, work)
                runs[method] = done["runs"]
                methods[method] = {
                    "wall_seconds": done["wall_seconds"],
                    "command": command,
                    "machine": benchlib.finish(facts),
                }
                print(f"{task} {method}: {done['wall_seconds']:.0f} s", flush=True)
                for name, cells in summarise({method: runs[method]}, args.reps).items():
                    methods[name]["metrics"] = cells
                # Written after every method, so a run stopped early keeps what it measured.
                report["tasks"][task] = entry(task, methods)
                benchlib.write_report(Path(args.out), report, markdown(report))
            if task not in report["tasks"]:  # every method skipped
                report["tasks"][task] = entry(task, methods)
    benchlib.write_report(Path(args.out), report, markdown(report))
    return report


def from_work(path: str | Path, work: str | Path, reps: int = 2000) -> dict[str, Any]:
    """Recomputes a written report's cells from its kept sweep folders (`--work`): no training.

    For a report written before a column existed; the measurement facts stay.
    """
    from jfedrl.experiments.compare import find_runs

    path = Path(path)
    report = json.loads(Path(f"{path}.json").read_text())
    for task, entry in report["tasks"].items():
        for method, result in entry["methods"].items():
            runs_dir = Path(work) / task / method / "runs"
            if "skipped" in result or not runs_dir.is_dir():
                continue
            result["metrics"] = summarise({method: find_runs([runs_dir])}, reps)[method]
    benchlib.write_report(path, report, markdown(report))
    return report


def add_notes(path: str | Path, notes: list[str]) -> None:
    """Adds the reader's conclusions (`## What this shows`) to a written report and
    rewrites its markdown: the numbers stay the measured ones."""
    path = Path(path)
    report = json.loads(Path(f"{path}.json").read_text())
    report["notes"] = notes
    benchlib.write_report(path, report, markdown(report))


if __name__ == "__main__":
    main()
