"""`jfedrl sweep SWEEP.yaml`: many runs, the seeds of each setup in one compiled program.

A sweep file holds a base config, either a `grid` (config fields -> lists of
values, every combination is a setup) or an explicit list of `setups` (each a
mapping of config fields), and `seeds` (a count, or a list of seeds):

    name: lr-study
    base: {federation: {rounds: 20}}          # any part of the config tree
    grid: {algo.ppo.learning_rate: [3e-4, 1e-3], strategy.name: [fedavg, fedprox]}
    seeds: 4
    threshold: 400                            # optional: steps/seconds to this eval return

The seeds of one setup run as ONE program: `Simulator.run_block` vmapped over a
leading run axis of states (PureJaxRL's way), compiled once. Setups run one
after another, each as its own group: hyperparameters are closed over as Python
constants when an algorithm is built, so two learning rates are two programs
today (tracing the float hyperparameters, to vmap setups too, is not done).

The sweep folder (`--out`, default `sweeps/<name>`) holds `sweep.yaml` (the file
as given), `runs/<setup>-seed<k>/` (each exactly what `jfedrl train` writes,
minus train.log: the sweep logs to its own `train.log`), `summary.csv` (one row per
setup and seed: final and best eval return, env steps and seconds to the
threshold, AUC) and the `jfedrl compare` table and plots of all its runs.
Ctrl-C stops every run after the current block with a checkpoint;
`jfedrl sweep --resume SWEEP_DIR` continues.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import logging
import re
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from jfedrl.callbacks import Callback, Run, StopOnCtrlC, default_callbacks
from jfedrl.checkpoint import Checkpointer, CheckpointError
from jfedrl.compare import compare, run_summary
from jfedrl.config import Config, ConfigError, from_dict, save_yaml, validate
from jfedrl.federated import FedState, Simulator, make_simulator
from jfedrl.outputs import RunLock, read_metrics, setup_logging
from jfedrl.runner import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    InProcessRunner,
    _start,
    enable_compilation_cache,
    finish_block,
    timed_block,
)
from jfedrl.schema import override

log = logging.getLogger("jfedrl")

SWEEP_FILE = "sweep.yaml"
RUNS_DIR = "runs"
SUMMARY_FILE = "summary.csv"
KEYS = ("name", "base", "grid", "setups", "seeds", "threshold")
#: Set by the sweep itself, per run: a setup may not set them.
RESERVED = ("seed", "log.run_dir")


@dataclass(frozen=True)
class Setup:
    """One setup: its label, the fields it sets over the base, its config (seed unset)."""

    label: str
    values: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Sweep:
    """A parsed, validated sweep file."""

    name: str
    setups: tuple[Setup, ...]
    seeds: tuple[int, ...]
    threshold: float | None


def _error(field: str, message: str) -> ConfigError:
    return ConfigError(f"sweep {field}: {message}")


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _error("seeds", f"must be >= 1, got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) for s in value):
        if len(set(value)) != len(value):
            raise _error("seeds", f"must be distinct, got {value}")
        return tuple(value)
    raise _error("seeds", f"must be a count >= 1 or a list of distinct ints, got {value!r}")


def _setup_values(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The field values of each setup, from `grid` or `setups` (one empty setup if neither)."""
    if "grid" in data and "setups" in data:
        raise _error("grid", "give either grid or setups, not both")
    if "grid" in data:
        grid = data["grid"]
        if not isinstance(grid, dict) or not grid:
            raise _error("grid", "must map config fields to lists of values")
        for field, values in grid.items():
            if not isinstance(values, list) or not values:
                raise _error(f"grid.{field}", f"must be a non-empty list, got {values!r}")
        fields = list(grid)
        return [
            dict(zip(fields, combo, strict=True)) for combo in itertools.product(*grid.values())
        ]
    setups = data.get("setups", [{}])
    if not isinstance(setups, list) or not setups or not all(isinstance(s, dict) for s in setups):
        raise _error("setups", "must be a non-empty list of mappings of config fields")
    return setups


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{field}={value}" for field, value in values.items()) or "base"


def parse(data: Any) -> Sweep:
    """Builds and validates a sweep from the sweep file's mapping.

    Every setup's config is validated for every seed, so a bad file fails here,
    before anything compiles, with one line naming the field.
    """
    if not isinstance(data, dict):
        raise _error("file", "must be a mapping with keys " + ", ".join(KEYS))
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise _error(unknown[0], f"unknown key; allowed: {', '.join(KEYS)}")
    base_data = data.get("base", {})
    if not isinstance(base_data, dict):
        raise _error("base", "must be a mapping (any part of the config tree)")
    base = from_dict(base_data)
    seeds = _seeds(data.get("seeds", 1))
    threshold = data.get("threshold")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise _error("threshold", f"must be a number, got {threshold!r}")
    setups = []
    for values in _setup_values(data):
        for field in values:
            if field in RESERVED:
                raise _error(field, "is set by the sweep itself (use `seeds` for the seed)")
        config = override(base, values)
        for seed in seeds:
            validate(dataclasses.replace(config, seed=seed))
        if config.offload.executor != "inprocess":
            raise _error("offload.executor", "a sweep runs in process; must be 'inprocess'")
        setups.append(Setup(_label(values), dict(values), config))
    labels = [s.label for s in setups]
    if len(set(labels)) != len(labels):
        raise _error("setups", "two setups set the same values")
    return Sweep(str(data.get("name", "sweep")), tuple(setups), seeds, threshold)


def load(path: str | Path) -> Sweep:
    """Reads and parses a sweep file (see `parse`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"sweep: cannot read {str(path)!r}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"sweep: {str(path)!r} is not YAML: {error}") from None
    return parse(data)


def run_dir_name(index: int, setup: Setup, seed: int) -> str:
    """A folder name: the setup's index and label made path-safe, then the seed."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", setup.label)[:80].strip("_")
    return f"{index:02d}-{slug}-seed{seed}"


def describe_groups(sweep: Sweep) -> list[str]:
    """One line per group of the sweep, saying what runs in one compiled program."""
    lines = []
    for index, setup in enumerate(sweep.setups):
        lines.append(
            f"group {index + 1}/{len(sweep.setups)}: {setup.label}: {len(sweep.seeds)} seed(s) "
            "vmapped in one compiled program"
        )
    if len(sweep.setups) > 1:
        lines.append(
            f"{len(sweep.setups)} setups run one after another (only seeds share a program: "
            "setups differ in values compiled into the program)"
        )
    return lines


@partial(jax.jit, static_argnums=(0, 2), donate_argnums=(1,))
def _run_block_vmapped(simulator: Simulator, states: FedState, num_rounds: int):
    """`Simulator.run_block` over a leading run axis of `states`."""
    return jax.vmap(lambda state: Simulator.run_block(simulator, state, num_rounds))(states)


class VmappedRunner(InProcessRunner):
    """Runs the blocks of S runs of one simulator as one program, vmapped over runs.

    States and metrics lead with the run axis; `compiles` counts the programs.
    """

    program = staticmethod(_run_block_vmapped)


@dataclass
class _Member:
    """One run of a group, as the host loop sees it."""

    run: Run
    callbacks: list[Callback]
    records: list[dict[str, Any]]
    wall_seconds: float
    block: Any = None


@dataclass(frozen=True)
class _Group:
    """One setup's seeds, run together as one program."""

    setup: Setup
    run_dirs: list[Path]
    seeds: tuple[int, ...]
    runner: VmappedRunner
    stop: StopOnCtrlC
    stop_after_round: int | None


def _open_members(
    group: _Group, stack: contextlib.ExitStack
) -> tuple[list[_Member], list[FedState]]:
    """Locks, starts (or resumes from its newest checkpoint) and opens each run of a group."""
    setup, runner, stop = group.setup, group.runner, group.stop
    members, states = [], []
    for run_dir, seed in zip(group.run_dirs, group.seeds, strict=True):
        log_config = dataclasses.replace(setup.config.log, run_dir=str(run_dir), progress=False)
        config = dataclasses.replace(setup.config, seed=seed, log=log_config)
        stack.enter_context(RunLock(run_dir))
        checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.log.keep_checkpoints)
        resume = checkpointer.latest_round() is not None
        state, records, wall = _start(config, runner.simulator, run_dir, checkpointer, resume)
        save_yaml(config, run_dir / CONFIG_FILE)
        # One shared Ctrl-C watcher, so every run of the group stops after the same block.
        callbacks = [
            stop if isinstance(c, StopOnCtrlC) else c
            for c in default_callbacks(config, checkpointer, False, group.stop_after_round)
        ]
        run = Run(config, runner.simulator, run_dir, runner)
        for callback in callbacks:
            callback.on_start(run, state)
            stack.callback(callback.on_end, run)
        members.append(_Member(run, callbacks, records, wall))
        states.append(state)
    return members, states


def _run_group(group: _Group, bar: Any) -> bool:
    """Runs one setup's seeds in lockstep, as one program; True if it was stopped early."""
    setup, runner = group.setup, group.runner
    total = setup.config.federation.rounds
    with contextlib.ExitStack() as stack:
        members, states = _open_members(group, stack)
        rounds = {int(s.round) for s in states}
        if len(rounds) > 1:
            raise CheckpointError(
                f"--resume: the runs of {setup.label!r} stopped at different rounds "
                f"{sorted(rounds)}; a group resumes together"
            )
        first_round = rounds.pop()
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *states)
        while first_round < total:
            num_rounds = min(setup.config.log.rounds_per_block, total - first_round)
            for member in members:
                for callback in member.callbacks:
                    num_rounds = callback.limit_rounds(first_round, num_rounds)
            stacked, metrics, tick, compile_seconds = timed_block(runner, stacked, num_rounds)
            for i, member in enumerate(members):
                member.block, member.wall_seconds = finish_block(
                    member.run,
                    member.callbacks,
                    jax.tree.map(lambda x, i=i: x[i], stacked),
                    {name: values[i] for name, values in metrics.items()},
                    first_round,
                    member.wall_seconds,
                    tick,
                    compile_seconds,
                )
                member.records.extend(member.block.records)
            bar.update(num_rounds * len(members))
            first_round += num_rounds
            errors = [m.block.error for m in members if m.block.error is not None]
            if errors:
                raise errors[0]
            if any(m.block.stopping for m in members) and first_round < total:
                return True
    return False


@dataclass(frozen=True)
class SweepResult:
    """What `run_sweep` returns: the folder, every run folder, compiles per group."""

    sweep_dir: Path
    run_dirs: list[Path]
    compiles: list[int]
    interrupted: bool


def _finished(run_dir: Path, rounds: int) -> bool:
    records = read_metrics(run_dir)
    return bool(records) and records[-1]["round"] >= rounds and (run_dir / CHECKPOINT_DIR).is_dir()


def write_summary(sweep: Sweep, sweep_dir: Path) -> Path:
    """summary.csv: one row per setup and seed, from each run's metrics.jsonl."""
    fields = sorted({field for setup in sweep.setups for field in setup.values})
    path = sweep_dir / SUMMARY_FILE
    with path.open("w", newline="") as f:
        writer = None
        for index, setup in enumerate(sweep.setups):
            for seed in sweep.seeds:
                run_dir = sweep_dir / RUNS_DIR / run_dir_name(index, setup, seed)
                row = {"setup": setup.label, **{k: setup.values.get(k) for k in fields}}
                row.update(seed=seed, run_dir=str(run_dir))
                row.update(run_summary(read_metrics(run_dir), sweep.threshold))
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
    return path


def run_sweep(
    sweep_file: str | Path | None,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    quiet: bool = False,
    stop_after_round: int | None = None,
) -> SweepResult:
    """Runs (or resumes) a sweep and writes its folder.

    Args:
        sweep_file: the sweep YAML (None with `resume`: the folder's own sweep.yaml).
        out: the sweep folder (default `sweeps/<name>`).
        resume: a sweep folder to continue; finished runs are skipped.
        progress: one progress bar over every round of every run.
        quiet: log only to the sweep folder's train.log.
        stop_after_round: stop every run at the first block boundary at or after this
            round, as if interrupted (for tests and time-boxed jobs).

    Raises:
        ConfigError: a bad sweep file (before anything compiles), or a new sweep
            into a folder that already holds one.
    """
    from tqdm import tqdm

    if resume is not None:
        sweep_dir = Path(resume)
        sweep_file = sweep_dir / SWEEP_FILE
        if not sweep_file.is_file():
            raise ConfigError(f"--resume: {str(sweep_dir)!r} has no {SWEEP_FILE}; not a sweep")
    sweep = load(sweep_file)
    if resume is None:
        sweep_dir = Path(out) if out else Path("sweeps") / sweep.name
        if (sweep_dir / SWEEP_FILE).exists():
            raise ConfigError(
                f"--out: {str(sweep_dir)!r} already holds a sweep; use --resume {sweep_dir}"
            )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(Path(sweep_file).read_text())
    enable_compilation_cache()
    setup_logging(sweep_dir, quiet=quiet)
    for line in describe_groups(sweep):
        log.info("%s", line)
    plan = [
        (setup, [sweep_dir / RUNS_DIR / run_dir_name(i, setup, s) for s in sweep.seeds])
        for i, setup in enumerate(sweep.setups)
    ]
    total = sum(setup.config.federation.rounds * len(sweep.seeds) for setup in sweep.setups)
    bar = tqdm(total=total, unit="round", disable=not progress, dynamic_ncols=True)
    stop, compiles, interrupted = StopOnCtrlC(), [], False
    previous = signal.getsignal(signal.SIGINT)
    try:
        for setup, run_dirs in plan:
            rounds = setup.config.federation.rounds
            if all(_finished(d, rounds) for d in run_dirs):
                bar.update(rounds * len(run_dirs))
                continue
            bar.set_description(setup.label[:40])
            runner = VmappedRunner(make_simulator(dataclasses.replace(setup.config, seed=0)))
            try:
                group = _Group(setup, run_dirs, sweep.seeds, runner, stop, stop_after_round)
                interrupted = _run_group(group, bar)
            finally:
                runner.close()
            compiles.append(runner.compiles)
            if interrupted:
                log.warning("stopped; continue with: jfedrl sweep --resume %s", sweep_dir)
                break
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    write_summary(sweep, sweep_dir)
    if not interrupted:
        compare([sweep_dir / RUNS_DIR], sweep_dir)
    run_dirs = [d for _, dirs in plan for d in dirs]
    return SweepResult(sweep_dir, run_dirs, compiles, interrupted)
