"""`jfedrl sweep SWEEP.yaml`: many runs; setups differing only in traced values share a program.

A sweep file holds a base config, either a `grid` (config fields -> lists of
values, every combination is a setup) or an explicit list of `setups` (each a
mapping of config fields), and `seeds` (a count, or a list of seeds):

    name: lr-study
    base: {federation: {rounds: 20}}          # any part of the config tree
    grid: {algo.ppo.learning_rate: [3e-4, 1e-3], strategy.name: [fedavg, fedprox]}
    seeds: 4
    threshold: 400                            # optional: steps/seconds to this eval return

Setups that differ only in traceable fields (`jfedrl.config.traceable()`: learning
rates, loss coefficients, server step sizes... values that change no shape and
steer no Python code) form one group, and a group runs as ONE program:
`Simulator.run_block` vmapped over a leading run axis (setups x seeds) of states
and of the traced values, the simulator rebuilt inside the trace from each run's
values (PureJaxRL's way, with the hyperparameters as data). Setups that differ in
anything else (shapes, algorithm or strategy names, `if mu > 0` switches) are
grouped apart, and the groups run one after another; the sweep logs the groups
and the fields that split them.

The sweep folder (`--out`, default `sweeps/<name>`) holds `sweep.yaml` (the file
as given), `runs/<setup>-seed<k>/` (each exactly what `jfedrl train` writes,
minus train.log: the sweep logs to its own `train.log`, each line about a run
prefixed with the run's folder name), `summary.csv` (one row per
setup and seed: final and best eval return, env steps and seconds to the
threshold, AUC) and the `jfedrl compare` table and plots of all its runs.
Ctrl-C stops every run after the current block with a checkpoint;
`jfedrl sweep --resume SWEEP_DIR` continues. `--part i/N` runs every N-th group
from group i - 1 (`part_groups`; one SLURM array task each): parts share the
folder, each writes its own summary, and `jfedrl compare` merges them.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from jfedrl import config as jconfig
from jfedrl.config import Config, from_dict
from jfedrl.experiments import traced
from jfedrl.experiments.compare import compare, run_summary
from jfedrl.round.simulator import Simulator, make_simulator
from jfedrl.round.state import FedState
from jfedrl.run.callbacks import Callback, Run, StopOnCtrlC
from jfedrl.run.checkpoint import Checkpointer, CheckpointError
from jfedrl.run.outputs import RunLock, read_metrics, setup_logging
from jfedrl.run.runner import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    InProcessRunner,
    _start,
    block_rounds,
    default_callbacks,
    enable_compilation_cache,
    finish_block,
    timed_block,
)
from jfedrl.run.startup import prepare_process
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override, save_yaml, to_dict
from jfedrl.validation import validate

log = logging.getLogger("jfedrl")

SWEEP_FILE = "sweep.yaml"
RUNS_DIR = "runs"
SUMMARY_FILE = "summary.csv"
KEYS = ("name", "base", "grid", "setups", "seeds", "threshold")


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
            if field in jconfig.reserved():
                raise _error(field, "is set by the sweep itself (use `seeds` for the seed)")
            renamed = jconfig.renamed_error(field)
            if renamed is not None:
                raise _error(field, str(renamed).split(": ", 1)[1])
        config = override(base, values)
        for seed in seeds:
            validate(dataclasses.replace(config, seed=seed))
        if config.offload.executor != "inprocess":
            raise _error("offload.executor", "a sweep runs in process; must be 'inprocess'")
        if config.distributed.enabled:
            raise _error("distributed.enabled", "a sweep runs in one process; must be false")
        setups.append(Setup(_label(values), dict(values), config))
    labels = [s.label for s in setups]
    if len(set(labels)) != len(labels):
        raise _error("setups", "two setups set the same values")
    return Sweep(_name(data.get("name", "sweep")), tuple(setups), seeds, threshold)


def _name(value: Any) -> str:
    """The sweep's `name`: one folder name under `sweeps/`, never a path out of it."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _error("name", f"must be a folder name, got {value!r}")
    name = str(value)
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise _error(
            "name",
            f"must be one folder name (no '/', '\\', '..' or empty), got {name!r}; "
            "give --out for a folder elsewhere",
        )
    return name


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


@dataclass(frozen=True)
class Group:
    """Setups compiled as one program: equal but for traceable fields (`traced`).

    Attributes:
        indices: the setups' indices in the sweep.
        traced: the traceable fields whose values differ between the setups: they
            are traced scalars of the program, one value per run.
    """

    indices: tuple[int, ...]
    traced: tuple[str, ...]


def plan_groups(sweep: Sweep) -> list[Group]:
    """Groups the setups whose configs differ only in traceable fields (see `traced`)."""
    keys: list[dict[str, Any]] = []
    members: list[list[int]] = []
    for index, setup in enumerate(sweep.setups):
        key = to_dict(traced.static_part(setup.config))
        if key in keys:
            members[keys.index(key)].append(index)
        else:
            keys.append(key)
            members.append([index])
    return [
        Group(tuple(m), tuple(traced.varying([sweep.setups[i].config for i in m]))) for m in members
    ]


def split_reasons(sweep: Sweep, groups: list[Group]) -> list[str]:
    """The set fields that split setups into groups, each with why (`traced.why_static`)."""
    if len(groups) < 2:
        return []
    fields = []
    for group in groups:
        for field in sweep.setups[group.indices[0]].values:
            static = field not in jconfig.traceable() or field in jconfig.switches()
            if field not in fields and static:
                fields.append(field)
    reasons = []
    for field in fields:
        values = {
            repr(traced.static_value(field, sweep.setups[g.indices[0]].values.get(field)))
            for g in groups
        }
        if len(values) > 1:
            reasons.append(f"{field} {traced.why_static(field)}")
    return reasons or ["the setups' untraceable fields differ"]


def part_groups(num_groups: int, part: tuple[int, int] | None) -> list[int]:
    """The indices of the groups that part `i/N` runs: every N-th, starting at i - 1.

    Groups are the compiled programs (`plan_groups`, in a fixed order), so the
    parts of a SLURM array split the work without compiling a program twice.
    """
    if part is None:
        return list(range(num_groups))
    index, count = part
    if not 1 <= index <= count:
        raise ConfigError(f"--part: must be i/N with 1 <= i <= N, got {index}/{count}")
    return list(range(index - 1, num_groups, count))


def summary_name(part: tuple[int, int] | None) -> str:
    """summary.csv, or summary-part<i>of<N>.csv for a part (parts share the folder)."""
    return SUMMARY_FILE if part is None else f"summary-part{part[0]}of{part[1]}.csv"


def describe_groups(sweep: Sweep) -> list[str]:
    """What runs in one compiled program: the group count and why, then one line per group."""
    groups = plan_groups(sweep)
    reasons = split_reasons(sweep, groups)
    head = f"groups: {len(groups)}" + (f" ({'; '.join(reasons)})" if reasons else "")
    lines = [head]
    for number, group in enumerate(groups, 1):
        labels = "; ".join(sweep.setups[i].label for i in group.indices)
        runs = len(group.indices) * len(sweep.seeds)
        what = f"{len(group.indices)} setup(s) x {len(sweep.seeds)} seed(s)"
        traced_note = f", traced: {', '.join(group.traced)}" if group.traced else ""
        lines.append(
            f"group {number}/{len(groups)}: {labels}: {what} = {runs} run(s) vmapped in one "
            f"compiled program{traced_note}"
        )
    return lines


def _traced_simulator(simulator: Simulator, values: dict[str, jax.Array]) -> Simulator:
    return traced.simulator_with(simulator, values)


@partial(jax.jit, static_argnums=(0,))
def _init_vmapped(simulator: Simulator, keys: jax.Array, values: dict[str, jax.Array]):
    """`Simulator.init` of each run (a leading run axis of keys and traced values)."""

    def one(key, run_values):
        return _INIT(_traced_simulator(simulator, run_values), key)

    return jax.vmap(one)(keys, values)


@partial(jax.jit, static_argnums=(0, 3), donate_argnums=(1,))
def _run_block_vmapped(
    simulator: Simulator, states: FedState, values: dict[str, jax.Array], num_rounds: int
):
    """`Simulator.run_block` over a leading run axis of `states` and traced `values`.

    Each run's simulator is rebuilt inside the trace with its own traced values
    (`jfedrl.experiments.traced`), so one program serves every setup of the group.
    """

    def one(state, run_values):
        return _RUN_BLOCK(_traced_simulator(simulator, run_values), state, num_rounds)

    return jax.vmap(one)(states, values)


#: The plain functions under `Simulator`'s jitted methods: the vmapped programs trace
#: them with a per-run simulator (a jitted method would cache each traced simulator).
_INIT = Simulator.init.__wrapped__
_RUN_BLOCK = Simulator.run_block.__wrapped__


class VmappedRunner(InProcessRunner):
    """Runs the blocks of R runs of one group as one program, vmapped over runs.

    States and metrics lead with the run axis; `values` holds each traced field's
    `[R]` values; `compiles` counts the programs.
    """

    def __init__(self, simulator: Simulator, values: dict[str, np.ndarray]):
        super().__init__(simulator)
        self.values = {
            path: jax.numpy.asarray(
                v, jax.numpy.int32 if path == traced.ATTACK else jax.numpy.float32
            )
            for path, v in values.items()
        }

    def init(self, keys: jax.Array) -> FedState:
        """The initial states of the runs, `[R, ...]`."""
        return _init_vmapped(self.simulator, keys, self.values)

    def run_block(self, state: FedState, num_rounds: int) -> tuple[FedState, dict]:
        if num_rounds not in self._compiled:
            start = time.perf_counter()
            lowered = _run_block_vmapped.lower(self.simulator, state, self.values, num_rounds)
            self._compiled[num_rounds] = lowered.compile()
            self.compiles += 1
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[num_rounds](state, self.values)


@dataclass(frozen=True)
class _Initialised:
    """Stands in for the simulator in `runner._start`: `init` returns a state made here."""

    state: FedState

    def init(self, key: jax.Array) -> FedState:
        return self.state

    def abstract_state(self, key: jax.Array) -> FedState:
        """The state's shapes, dtypes and placement: a checkpoint's restore target."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state
        )


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
    """One group's runs (setups x seeds), run together as one program."""

    label: str
    configs: list[Config]
    """Each run's config, its seed and run folder set."""
    runner: VmappedRunner
    stop: StopOnCtrlC
    stop_after_round: int | None


class _RunLabel(logging.Filter):
    """Prefixes the sweep's log lines with the run they are about (its folder's name).

    The runs of a group log the same lines (`round 4/20 ...`) one after another;
    without the prefix a reader of train.log cannot tell them apart.
    """

    def __init__(self) -> None:
        super().__init__()
        self.label = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.label:
            record.msg, record.args = f"{self.label}: {record.getMessage()}", ()
        return True

    @contextlib.contextmanager
    def of(self, run_dir: str | Path):
        """Labels what is logged inside the block by the run in `run_dir`."""
        previous, self.label = self.label, Path(run_dir).name
        try:
            yield
        finally:
            self.label = previous


_RUN_LABEL = _RunLabel()


def _labelled(run_dir: str | Path, function: Any) -> Any:
    """`function`, logging under the label of the run in `run_dir`."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with _RUN_LABEL.of(run_dir):
            return function(*args, **kwargs)

    return call


def _open_members(
    group: _Group, stack: contextlib.ExitStack
) -> tuple[list[_Member], list[FedState]]:
    """Locks, starts (or resumes from its newest checkpoint) and opens each run of a group."""
    runner, stop = group.runner, group.stop
    keys = jax.numpy.stack([jax.random.PRNGKey(c.seed) for c in group.configs])
    fresh = runner.init(keys)  # every run's initial state, in one program
    members, states = [], []
    for i, config in enumerate(group.configs):
        run_dir = Path(config.log.run_dir)
        stack.enter_context(RunLock(run_dir))
        checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.log.keep_checkpoints)
        resume = checkpointer.latest_round() is not None
        start_from = _Initialised(jax.tree.map(lambda x, i=i: x[i], fresh))
        with _RUN_LABEL.of(run_dir):
            state, records, wall = _start(config, start_from, run_dir, checkpointer, resume)
        save_yaml(config, run_dir / CONFIG_FILE)
        # One shared Ctrl-C watcher, so every run of the group stops after the same block.
        callbacks = [
            stop if isinstance(c, StopOnCtrlC) else c
            for c in default_callbacks(config, checkpointer, False, group.stop_after_round)
        ]
        # Evaluation reads no traceable field, so the group's simulator evaluates every run.
        run = Run(config, runner.simulator, run_dir, runner)
        for callback in callbacks:
            _labelled(run_dir, callback.on_start)(run, state)
            stack.callback(_labelled(run_dir, callback.on_end), run)
        members.append(_Member(run, callbacks, records, wall))
        states.append(state)
    return members, states


def _run_group(group: _Group, bar: Any) -> bool:
    """Runs one group's runs in lockstep, as one program; True if it was stopped early."""
    config = group.configs[0]
    total = config.federation.rounds
    with contextlib.ExitStack() as stack:
        members, states = _open_members(group, stack)
        rounds = {int(s.round) for s in states}
        if len(rounds) > 1:
            raise CheckpointError(
                f"--resume: the runs of {group.label!r} stopped at different rounds "
                f"{sorted(rounds)}; a group resumes together"
            )
        first_round = rounds.pop()
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *states)
        while first_round < total:
            num_rounds = block_rounds(config, first_round)
            for member in members:
                for callback in member.callbacks:
                    num_rounds = callback.limit_rounds(first_round, num_rounds)
            stacked, metrics, tick, compile_seconds = timed_block(group.runner, stacked, num_rounds)
            choice = group.runner.simulator.attack_choice
            for i, member in enumerate(members):
                # A run's metrics: without the diagnostics of its group's other attacks.
                foreign = (
                    set() if choice is None else choice.foreign_keys(member.run.config.attack.name)
                )
                member.block, member.wall_seconds = _labelled(member.run.run_dir, finish_block)(
                    member.run,
                    member.callbacks,
                    jax.tree.map(lambda x, i=i: x[i], stacked),
                    {name: values[i] for name, values in metrics.items() if name not in foreign},
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
    """What `run_sweep` returns: the folder, every run folder, compiles per group, and
    what stopped it early (`stop`: "Ctrl-C" or "SIGTERM", so the CLI exits 130 or 143).
    """

    sweep_dir: Path
    run_dirs: list[Path]
    compiles: list[int]
    interrupted: bool
    stop: str | None = None


def _finished(run_dir: Path, rounds: int) -> bool:
    records = read_metrics(run_dir)
    return bool(records) and records[-1]["round"] >= rounds and (run_dir / CHECKPOINT_DIR).is_dir()


def _run_config(sweep: Sweep, sweep_dir: Path, index: int, seed: int) -> Config:
    """The config of setup `index` with `seed`, writing to its run folder."""
    setup = sweep.setups[index]
    run_dir = sweep_dir / RUNS_DIR / run_dir_name(index, setup, seed)
    log_config = dataclasses.replace(setup.config.log, run_dir=str(run_dir), progress=False)
    return dataclasses.replace(setup.config, seed=seed, log=log_config)


def write_summary(sweep: Sweep, sweep_dir: Path, part: tuple[int, int] | None = None) -> Path:
    """summary.csv (a part: `summary_name(part)`, its own setups only): one row per setup
    and seed, from each run's metrics.jsonl.
    """
    fields = sorted({field for setup in sweep.setups for field in setup.values})
    groups = plan_groups(sweep)
    mine = {i for g in part_groups(len(groups), part) for i in groups[g].indices}
    path = sweep_dir / summary_name(part)
    with path.open("w", newline="") as f:
        writer = None
        for index, setup in enumerate(sweep.setups):
            if index not in mine:
                continue
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
    part: tuple[int, int] | None = None,
) -> SweepResult:
    """Runs (or resumes) a sweep, or its part `i/N`, and writes its folder.

    Args:
        sweep_file: the sweep YAML (None with `resume`: the folder's own sweep.yaml).
        out: the sweep folder (default `sweeps/<name>`).
        resume: a sweep folder to continue; finished runs are skipped.
        progress: one progress bar over every round of every run.
        quiet: log only to the sweep folder's train.log.
        stop_after_round: stop every run at the first block boundary at or after this
            round, as if interrupted (for tests and time-boxed jobs).
        part: `(i, N)`: run only the groups of part i of N (`part_groups`, e.g. one
            SLURM array task each). Parts may share the folder: a part joins a
            folder holding the same sweep file, writes its own summary
            (`summary_name`) and leaves the comparison to `jfedrl compare` once
            every part has finished.

    Raises:
        ConfigError: a bad sweep file (before anything compiles), or a new sweep
            into a folder that already holds one.
    """
    prepare_process()  # the fast CPU lowering, before anything is lowered
    from tqdm import tqdm

    if resume is not None:
        sweep_dir = Path(resume)
        sweep_file = sweep_dir / SWEEP_FILE
        if not sweep_file.is_file():
            raise ConfigError(f"--resume: {str(sweep_dir)!r} has no {SWEEP_FILE}; not a sweep")
    sweep = load(sweep_file)
    part_groups(0, part)  # a bad --part fails before anything is written
    if resume is None:
        sweep_dir = Path(out) if out else Path("sweeps") / sweep.name
        text = Path(sweep_file).read_text()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            with (sweep_dir / SWEEP_FILE).open("x") as f:  # parts may start at once
                f.write(text)
        except FileExistsError:
            joined = part is not None and (sweep_dir / SWEEP_FILE).read_text() == text
            if not joined:
                raise ConfigError(
                    f"--out: {str(sweep_dir)!r} already holds a sweep; use --resume {sweep_dir}"
                    + ("" if part is None else " (a part joins only the same sweep file)")
                ) from None
    enable_compilation_cache()
    setup_logging(sweep_dir, quiet=quiet)
    logger = logging.getLogger("jfedrl")
    if _RUN_LABEL not in logger.filters:
        logger.addFilter(_RUN_LABEL)
    for line in describe_groups(sweep):
        log.info("%s", line)
    groups = plan_groups(sweep)
    chosen = part_groups(len(groups), part)
    if part is not None:
        numbers = ", ".join(str(g + 1) for g in chosen) or "none"
        log.info("part %d/%d: group(s) %s of %d", part[0], part[1], numbers, len(groups))
    plan = [[(i, seed) for i in g.indices for seed in sweep.seeds] for g in groups]
    total = sum(
        sweep.setups[i].config.federation.rounds * len(sweep.seeds)
        for g in chosen
        for i in groups[g].indices
    )
    drawn = progress and sys.stderr.isatty()  # no carriage-return frames in a log file
    bar = tqdm(total=total, unit="round", disable=not drawn, dynamic_ncols=True)
    stop, compiles, interrupted = StopOnCtrlC(), [], False
    previous = signal.getsignal(signal.SIGINT)
    previous_term = signal.getsignal(signal.SIGTERM)  # StopOnCtrlC handles SIGTERM as well
    try:
        for number, (group, runs) in enumerate(zip(groups, plan, strict=True)):
            if number not in chosen:
                continue
            configs = [_run_config(sweep, sweep_dir, i, seed) for i, seed in runs]
            rounds = configs[0].federation.rounds
            if all(_finished(Path(c.log.run_dir), rounds) for c in configs):
                bar.update(rounds * len(configs))
                continue
            label = "; ".join(sweep.setups[i].label for i in group.indices)
            bar.set_description(f"group {number + 1}/{len(groups)}: {label}")
            values = {p: [traced.get_path(c, p) for c in configs] for p in group.traced}
            names: tuple[str, ...] = ()
            if traced.ATTACK in values:  # the runs' attacks: one program, a traced index
                names = tuple(dict.fromkeys(values[traced.ATTACK]))
                values[traced.ATTACK] = [names.index(name) for name in values[traced.ATTACK]]
            simulator = make_simulator(dataclasses.replace(configs[0], seed=0), names)
            runner = VmappedRunner(simulator, values)
            try:
                interrupted = _run_group(
                    _Group(label, configs, runner, stop, stop_after_round), bar
                )
            finally:
                runner.close()
            compiles.append(runner.compiles)
            if interrupted:
                log.warning("stopped; continue with: jfedrl sweep --resume %s", sweep_dir)
                break
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        bar.close()
    write_summary(sweep, sweep_dir, part)
    if not interrupted and part is None:
        compare([sweep_dir / RUNS_DIR], sweep_dir)
    mine = sorted(i for g in chosen for i in groups[g].indices)
    run_dirs = [
        sweep_dir / RUNS_DIR / run_dir_name(i, sweep.setups[i], seed)
        for i in mine
        for seed in sweep.seeds
    ]
    reason = getattr(stop, "reason", None) if interrupted else None  # set by its on_start
    return SweepResult(sweep_dir, run_dirs, compiles, interrupted, reason)
