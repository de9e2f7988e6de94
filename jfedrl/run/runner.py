"""The host loop: jitted blocks of rounds, and everything between them.

After each block the host evaluates the global policy and turns the block's
metrics into per-round records; the callbacks of `jfedrl.run.callbacks` then write
them (metrics.jsonl, TensorBoard), checkpoint (orbax), update the progress bar
and handle Ctrl-C. A run can be resumed from its newest checkpoint and ends
with exactly the params and metrics of an uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jfedrl import attacks, plugins
from jfedrl.attacks import byzantine
from jfedrl.config import (
    FACTS,
    Config,
    DistributedConfig,
    load_yaml,
    resolve_schedule,
    resumable,
    schedule_end,
    schedule_horizon,
    schedule_restarts,
)
from jfedrl.round import evaluation
from jfedrl.round.simulator import Simulator, make_simulator
from jfedrl.round.state import FedState
from jfedrl.run import callbacks, devices, distributed, trackers
from jfedrl.run.callbacks import Block, BlockRunner, Callback, PlotCurve, Run, params_record
from jfedrl.run.checkpoint import Checkpointer, CheckpointError
from jfedrl.run.outputs import (
    BYZANTINE_FILE,
    FILE_ONLY,
    RunDirError,
    RunLock,
    read_metrics,
    setup_logging,
    to_jsonable,
    truncate_metrics,
)
from jfedrl.run.startup import prepare_process
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override, save_yaml
from jfedrl.strategies import privacy

log = logging.getLogger("jfedrl")

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
#: Fields that may differ between a run and its resumption (the rest fix the maths).


def cpu_key() -> str:
    """`cpu-<12 hex digits>`: this CPU's architecture, model and instruction-set flags.

    Read from /proc/cpuinfo (x86 `model name` / `flags`, Arm `CPU part` / `Features`);
    elsewhere from `platform`. Two machines with the same key run each other's
    XLA:CPU executables; a kernel that names new flags gives a new key (one recompile).
    """
    import hashlib
    import platform

    model, flags = "", ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        name, _, value = (part.strip() for part in line.partition(":"))
        if name in ("model name", "cpu model", "CPU part", "Processor") and not model:
            model = value
        if name in ("flags", "Features") and not flags:
            flags = " ".join(sorted(value.split()))
    identity = f"{platform.machine()}|{model or platform.processor()}|{flags}"
    return "cpu-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


def enable_compilation_cache(directory: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache (on by default in the CLI).

    A repeated run of the same config then skips XLA compilation. The cache root is
    `directory`, else `$JFEDRL_COMPILATION_CACHE`, else `~/.cache/jfedrl/xla`; the
    entries go to its subfolder `cpu_key()`, so on a home folder shared by nodes
    with different CPUs an executable is only loaded where it was compiled for
    (a root that already is such a subfolder, as offload workers get it, is kept).

    Returns:
        The folder the entries go to.
    """
    root = Path(
        directory
        or os.environ.get(
            "JFEDRL_COMPILATION_CACHE", str(Path.home() / ".cache" / "jfedrl" / "xla")
        )
    )
    key = cpu_key()
    directory = str(root if root.name == key else root / key)
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def default_callbacks(
    config: Config,
    checkpointer: Checkpointer,
    show_progress: bool,
    stop_after_round: int | None,
) -> list[Callback]:
    """The callbacks of `jfedrl train`, in the order they see each block."""
    accountant = privacy.accountant(config)
    # The trackers come first, so that they end last, after the curve is drawn.
    chosen: list[Callback] = trackers.trackers(config)
    if config.log.plot:
        chosen.append(callbacks.PlotCurve())
    chosen.append(callbacks.CheckParticipation())
    if accountant is not None:
        chosen.append(callbacks.PrivacyLedger(accountant))
    chosen.append(callbacks.WriteMetrics())
    if config.env.drift != "none":
        chosen.append(callbacks.LogDrift())
    chosen.append(callbacks.StopOnCtrlC())
    if stop_after_round is not None:
        chosen.append(callbacks.StopAfterRound(stop_after_round))
    chosen += [callbacks.SaveCheckpoint(checkpointer), callbacks.ShowProgress(show_progress)]
    return chosen


class InProcessRunner:
    """The default executor: the whole round jitted in this process.

    `compiles` counts the programs compiled (one per distinct block length).
    """

    #: The jitted block, `(simulator, state, num_rounds) -> (state, stacked metrics)`.
    program = staticmethod(Simulator.run_block)

    def __init__(self, simulator: Simulator, run_dir: Path | None = None):
        self.simulator = simulator
        self.compile_seconds = 0.0
        self.compiles = 0
        self._compiled: dict[int, Any] = {}
        self._ahead: dict[int, concurrent.futures.Future] = {}
        self._init_ahead: concurrent.futures.Future | None = None
        self.waited_ahead = 0.0
        """Seconds already waited for a block compiled ahead (the memory check), before its
        first run: counted in that block's `compile_seconds` and time window."""
        self._threads = concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="compile")

    def compile_ahead(self, num_rounds: int, init_seed: int | None = None) -> None:
        """Starts compiling a block of `num_rounds` and the evaluation in background threads.

        They compile from the state's shapes and shardings (`Simulator.abstract_state`)
        while the caller checks the block's memory and builds or restores the state. XLA
        compiles without holding the GIL, so `init`'s compile, the block's and the
        evaluation's overlap on a multi-core host instead of running one after another.
        One process only (the processes of a distributed run align after each compile).

        Args:
            num_rounds: the first block's rounds.
            init_seed: the seed of a new run's state: `Simulator.init` is compiled
                ahead too, for `initial_state`. None: the state is restored, so `init`
                never runs.
        """
        if jax.process_count() > 1 or num_rounds < 1 or num_rounds in self._compiled:
            return
        if num_rounds in self._ahead:
            return
        key = jax.random.PRNGKey(0 if init_seed is None else init_seed)
        simulator = self.simulator
        if init_seed is not None:  # before the block: the state's build waits for it first
            self._init_ahead = self._threads.submit(
                lambda: simulator.init.lower(simulator, key).compile()
            )
        state = simulator.abstract_state(key)
        # `sim_eval`'s key is folded with the state's round, so it lives where the round does.
        key_shape = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=state.round.sharding)
        self._ahead[num_rounds] = self._threads.submit(
            lambda: self.program.lower(simulator, state, num_rounds).compile()
        )
        # Fills jit's cache: the first `sim_eval` then finds its program compiled. The
        # static `local` flag is passed positionally, as `sim_eval` passes it: an omitted
        # default would be another cache entry, and the evaluation would compile twice.
        evaluate = simulator.evaluate
        self._threads.submit(lambda: evaluate.lower(simulator, state, key_shape, False).compile())
        if evaluation.eval_personal(simulator.config):  # the personalized pass, likewise
            personal = evaluation.evaluate_personal
            self._threads.submit(lambda: personal.lower(simulator, state, key_shape).compile())

    def initial_state(self, key: jax.Array) -> FedState:
        """`Simulator.init(key)`, with the program `compile_ahead` compiled if there is one.

        Calling that program skips the trace a call through `jax.jit` would redo.
        """
        future, self._init_ahead = self._init_ahead, None
        if future is None:
            return self.simulator.init(key)
        return future.result()(key)

    def memory_estimate_ahead(self, num_rounds: int) -> devices.MemoryEstimate | None:
        """XLA's memory analysis of the block compiled ahead (waits for it; None if none)."""
        future = self._ahead.get(num_rounds)
        if future is None:
            return None
        start = time.perf_counter()
        compiled = future.result()
        self.waited_ahead += time.perf_counter() - start  # counted in the first block's compile
        return devices.memory_estimate(compiled)

    def run_block(self, state: FedState, num_rounds: int) -> tuple[FedState, dict]:
        if num_rounds in self._ahead:
            start = time.perf_counter()  # compile seconds: what this block waited for
            self._compiled[num_rounds] = self._ahead.pop(num_rounds).result()
            self.compiles += 1
            self.compile_seconds += time.perf_counter() - start + self.waited_ahead
            self.waited_ahead = 0.0
        if num_rounds not in self._compiled:
            start = time.perf_counter()
            lowered = self.program.lower(self.simulator, state, num_rounds)
            self._compiled[num_rounds] = lowered.compile()
            self.compiles += 1
            self.compile_seconds += time.perf_counter() - start
            distributed.barrier("compiled")  # processes compile at different speeds
        return self._compiled[num_rounds](state)

    def state_for_checkpoint(self, state: FedState) -> FedState:
        return state

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()
        self._compiled.clear()


@dataclass
class TrainResult:
    """What `train` returns."""

    run_dir: Path
    state: FedState
    records: list[dict[str, Any]]
    interrupted: bool = False
    stop: str | None = None
    """Why an interrupted run stopped: "Ctrl-C", "SIGTERM", "stop_after_round=R"."""
    curve: Path | None = None
    """The learning curve written at the end (None: `log.plot` off, or it failed)."""

    @property
    def final_eval_return(self) -> float | None:
        evals = [r["eval_return"] for r in self.records if r.get("eval_return") is not None]
        return evals[-1] if evals else None

    @property
    def best_eval(self) -> tuple[float, int] | None:
        """The highest eval return of the run and its round (the first, on a tie)."""
        evals = [
            (r["eval_return"], -r["round"])
            for r in self.records
            if r.get("eval_return") is not None
        ]
        if not evals:
            return None
        value, round_ = max(evals)
        return value, -round_

    def summary(self) -> list[str]:
        """The lines that end a run: where it is, what it reached, where the plot is."""
        lines = []
        if self.records:
            last = self.records[-1]
            compiled = sum(r.get("compile_seconds") or 0.0 for r in self.records)
            state = "stopped" if self.interrupted else "finished"
            lines.append(
                f"{state} at round {last['round']}: {last['env_steps']} env steps, "
                f"{last['wall_seconds']:.1f} s training + {compiled:.1f} s compiling"
            )
        final, best = self.final_eval_return, self.best_eval
        if final is not None and best is not None:
            lines.append(
                f"global policy eval return: final {final:.1f}, best {best[0]:.1f} "
                f"(round {best[1]})"
            )
        if self.curve is not None:
            lines.append(f"learning curve: {self.curve}")
        lines.append(f"run folder: {self.run_dir}")
        return lines


def default_run_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.env.name}-{config.strategy.name}-{stamp}"


#: What `--extend` may say about the rounds added past a run's saved `federation.rounds`.
EXTEND_CHOICES = ("hold", "restart")


def _summary(paths: tuple[str, ...]) -> str:
    """`paths`, each top-level section they cover whole written once as `section.*`."""
    sections = dict.fromkeys(p.split(".")[0] for p in paths)
    whole = {s for s in sections if all(p in paths for p in FACTS if p.split(".")[0] == s)}
    shown = [p for p in paths if p.split(".")[0] not in whole]
    shown += [f"{s}.*" for s in sections if s in whole]
    return ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]


def resume_config(
    run_dir: str | Path, overrides: dict[str, Any] | None = None, extend: str | None = None
) -> Config:
    """The saved config of `run_dir` with `overrides` (`dotted.path -> value`) applied.

    Only the number of rounds, logging, the executor and the process layout
    (`distributed.*`) may change on resume; anything else would silently change
    the experiment.

    Args:
        run_dir: the run folder.
        overrides: the fields to change.
        extend: what the schedules do over rounds added past the saved
            `federation.rounds` (`extend_schedules`); ignored when none are added.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"--resume: {str(run_dir)!r} has no {CONFIG_FILE}; not a run folder")
    overrides = overrides or {}
    allowed = resumable()
    for path in overrides:
        if path.replace("-", "_") not in allowed:
            raise ConfigError(
                f"{path}: cannot be changed when resuming (only {_summary(allowed)} can); "
                "start a new run instead"
            )
    saved = load_yaml(run_dir / CONFIG_FILE)
    config = extend_schedules(saved, override(saved, overrides), extend)
    return dataclasses.replace(config, log=dataclasses.replace(config.log, run_dir=str(run_dir)))


def anneals_to_zero(config: Config) -> str | None:
    """The `algo.<name>.anneal_lr` field that anneals the learning rate to 0, if it is on."""
    section = getattr(config.algo, config.algo.name, None)
    if getattr(section, "anneal_lr", False):
        return f"algo.{config.algo.name}.anneal_lr"
    return None


def extend_schedules(saved: Config, config: Config, extend: str | None) -> Config:
    """`config` (the resumed run's) with its schedules over the rounds added to `saved`'s.

    `hold`: the schedules keep their horizon and hold their end values after it (an
    annealed learning rate stays 0). `restart`: they run again, from their start
    values, over the added rounds (a pair appended to `federation.schedule_restarts`).
    Without a choice, an extension past the horizon of a learning rate annealed to 0
    is refused (it would train at learning rate 0 and learn nothing); any other
    extension holds. The choice is saved in config.yaml with the run.

    Raises:
        ConfigError: `extend` is not a choice, or is needed and missing.
    """
    if extend is not None and extend not in EXTEND_CHOICES:
        raise ConfigError(
            f"--extend: {extend!r} is not a choice; allowed: {', '.join(EXTEND_CHOICES)}"
        )
    old, new = saved.federation.rounds, config.federation.rounds
    if new <= old:
        return config
    fed = saved.federation
    if fed.schedule_rounds == 0:  # a run saved before the horizon was: its rounds
        config = override(config, {"federation.schedule_rounds": old})
        fed = dataclasses.replace(fed, schedule_rounds=old)
    end = schedule_end(fed)
    annealed = anneals_to_zero(config)
    if extend is None and annealed and new > end:
        raise ConfigError(
            f"federation.rounds: {new} extends the run past round {end}, where {annealed} "
            f"has annealed the learning rate to 0; add --extend restart (anneal again over "
            f"rounds {old + 1}-{new}) or --extend hold (rounds {end + 1}-{new} at learning "
            "rate 0, learning nothing)"
        )
    if extend == "restart":
        restarts = (*fed.schedule_restarts, old, new)
        config = override(config, {"federation.schedule_restarts": restarts})
    return config


def describe_extension(saved: Config, config: Config) -> str | None:
    """The log line of a resume that adds rounds to `saved` (None when it adds none)."""
    old, new = saved.federation.rounds, config.federation.rounds
    if new <= old:
        return None
    restarts = schedule_restarts(config.federation)
    if restarts and restarts[-1] == (old, new):
        how = f"--extend restart: the schedules run again over rounds {old + 1}-{new}"
    else:
        end = schedule_end(config.federation)
        how = f"--extend hold: the schedules hold their end values after round {end}"
        if new <= end:
            how = f"the schedules continue to their horizon, round {end}"
    return f"extended from {old} to {new} rounds; {how} (federation in config.yaml)"


def fixed_schedule(config: Config, resume: bool) -> Config:
    """`config` with the schedules' horizon `federation.schedule_rounds` fixed.

    A new run fixes it at its `rounds` (unless set); a resume keeps the horizon of the
    run's saved config.yaml (its `rounds` for runs saved before the field existed),
    so raising `--rounds` continues at the schedules' end values.
    """
    if resume and config.federation.schedule_rounds == 0 and config.log.run_dir:
        saved = Path(config.log.run_dir) / CONFIG_FILE
        if saved.is_file():
            horizon = schedule_horizon(load_yaml(saved).federation)
            return override(config, {"federation.schedule_rounds": horizon})
    return resolve_schedule(config)


def _round_records(
    metrics: dict[str, np.ndarray],
    first_round: int,
    steps_per_round: int,
    wall_start: float,
    wall_end: float,
) -> list[dict[str, Any]]:
    num_rounds = len(next(iter(metrics.values())))
    seconds = max(wall_end - wall_start, 1e-9)
    records = []
    for i in range(num_rounds):
        round_index = first_round + i + 1
        record = {
            "round": round_index,
            "env_steps": round_index * steps_per_round,
            "wall_seconds": wall_start + seconds * (i + 1) / num_rounds,
            "steps_per_second": steps_per_round * num_rounds / seconds,
        }
        for name, values in metrics.items():
            record[name] = to_jsonable(values[i])
        records.append(record)
    return records


def train(
    config: Config,
    *,
    resume: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    stop_after_round: int | None = None,
    check_memory: bool = True,
) -> TrainResult:
    """Runs (or resumes) a federated training run and writes its outputs.

    Under `jfedrl.run.distributed` every process calls this with the same config;
    process 0 locks the run folder and writes its files, all of them compute.

    Args:
        config: the run's config (for a resume, from `resume_config`).
        resume: continue from the newest checkpoint in `config.log.run_dir`.
        progress: show a progress bar (default: `config.log.progress`).
        quiet: log only to the run's train.log, not to stderr.
        stop_after_round: stop at the first block boundary at or after this round,
            as if interrupted (used by tests and for time-boxed jobs).
        check_memory: refuse a run whose compiled block needs more memory than the
            devices have (`devices.check_fits`), before the state is built; False
            (`--force-memory`) runs it anyway.

    Returns:
        The run folder, the final state and every metrics record.

    Raises:
        RunDirError: `log.run_dir` is not a writable folder, or another process
            trains in it (the folder is locked while this runs).
        CheckpointError: a checkpoint cannot be restored or saved (named).
    """
    prepare_process()  # the fast CPU lowering, before anything is lowered
    enable_compilation_cache()
    config = fixed_schedule(config, resume)
    simulator = make_simulator(config)  # validates before anything compiles
    trackers.check(config)  # --log.wandb / --log.mlflow without their package
    distributed.require_initialized(config)
    distributed.check_same_config(config)
    run_dir = Path(config.log.run_dir) if config.log.run_dir else default_run_dir(config)
    run_dir = Path(distributed.broadcast_text(str(run_dir)))  # process 0's timestamp
    with _lock_run_dir(run_dir):  # one run per folder, until this returns or the process dies
        return _train_locked(
            config, simulator, run_dir, resume, progress, quiet, stop_after_round, check_memory
        )


@contextlib.contextmanager
def _lock_run_dir(run_dir: Path):
    """Process 0 locks the run folder; every process fails if it cannot (else they would wait)."""
    lock, error = None, None
    if distributed.is_primary():
        try:
            lock = RunLock(run_dir)
        except RunDirError as failed:
            error = failed
    if distributed.any_process(error is not None):
        raise error or RunDirError(f"log.run_dir: process 0 could not use {str(run_dir)!r}")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _train_locked(
    config: Config,
    simulator: Simulator,
    run_dir: Path,
    resume: bool,
    progress: bool | None,
    quiet: bool,
    stop_after_round: int | None,
    check_memory: bool = True,
) -> TrainResult:
    """`train` once its run folder is locked."""
    setup_logging(run_dir, quiet=quiet, process_index=jax.process_index())
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.log.keep_checkpoints)
    # Executors come from jfedrl.plugins (offload registers its own as entry points). The
    # in-process one starts compiling the first block while `_start` builds the state.
    executor = None
    if config.offload.executor == "inprocess":
        executor = plugins.executor("inprocess").build_runner(simulator, run_dir)
    try:
        if resume:
            check_resume_rounds(config, checkpointer)
        if executor is not None:
            first_round = (checkpointer.latest_round() or 0) if resume else 0
            fresh = not (resume and checkpointer.latest_round() is not None)  # as `_start`
            executor.compile_ahead(
                block_rounds(config, first_round), config.seed if fresh else None
            )
            if check_memory:  # before the state is built: the block's need, as --dry-run's
                estimate = executor.memory_estimate_ahead(block_rounds(config, first_round))
                clients = config.federation.num_clients
                devices.check_fits(estimate, clients, jax.local_devices())
        init = None if executor is None else executor.initial_state
        state, records, wall_seconds = _start(
            config, simulator, run_dir, checkpointer, resume, init
        )
        extension = None
        if resume and (run_dir / CONFIG_FILE).is_file():
            extension = describe_extension(load_yaml(run_dir / CONFIG_FILE), config)
        if distributed.is_primary():
            # The process layout is launch info: a resume gives it again.
            saved = dataclasses.replace(config, distributed=DistributedConfig())
            save_yaml(saved, run_dir / CONFIG_FILE)
        log.info("run folder: %s", run_dir.absolute())
        if extension is not None:
            log.info("%s", extension)
        log.info(
            "%s, %d clients (%d per round), %s, %s; %d env steps per round",
            config.env.name,
            config.federation.num_clients,
            simulator.num_participants,
            config.algo.name,
            config.strategy.name,
            simulator.env_steps_per_round,
        )
        show_progress = config.log.progress if progress is None else progress
        callbacks = default_callbacks(config, checkpointer, show_progress, stop_after_round)
        if executor is None:
            executor = plugins.executor(config.offload.executor).build_runner(simulator, run_dir)
        run = Run(config, simulator, run_dir, executor)
        with contextlib.ExitStack() as stack:
            for callback in callbacks:
                callback.on_start(run, state)
                stack.callback(callback.on_end, run)
            block = _run_blocks(run, callbacks, state, records, wall_seconds)
    finally:
        if executor is not None:
            executor.close()
        checkpointer.close()  # also when the run fails before its callbacks start (a restore)
    if block is not None and block.error is not None:
        raise block.error
    interrupted = block is not None and block.stop is not None and not block.finished
    final = state if block is None else block.state
    stop = block.stop if interrupted else None
    curve = next((c.path for c in callbacks if isinstance(c, PlotCurve)), None)
    result = TrainResult(run_dir, final, records, interrupted, stop, curve)
    for line in result.summary():  # train.log keeps what the run ended with (the CLI prints it)
        log.info("%s", line, extra={FILE_ONLY: True})
    return result


def block_rounds(config: Config, first_round: int) -> int:
    """The length of the block starting at `first_round`, before any callback's limit."""
    return min(config.log.rounds_per_block, config.federation.rounds - first_round)


def _start(
    config: Config,
    simulator: Simulator,
    run_dir: Path,
    checkpointer: Checkpointer,
    resume: bool,
    init: Callable[[jax.Array], FedState] | None = None,
) -> tuple[FedState, list[dict[str, Any]], float]:
    """The state, records and wall seconds a run starts from: new, or its newest checkpoint.

    `init` builds a new state from its key: the executor's program compiled ahead,
    or `simulator.init` when None.
    """
    key = jax.random.PRNGKey(config.seed)
    if resume and checkpointer.latest_round() is not None:
        # The newest intact checkpoint (a damaged newer one is set aside), in this layout.
        state, meta = checkpointer.restore(simulator.abstract_state(key), set_aside_damaged=True)
        records = _kept_records(run_dir, int(state.round))
        _warn_missing_rounds(run_dir, records, int(state.round))
        log.info("resumed %s at round %d", run_dir, int(state.round))
        return state, records, float(meta.get("wall_seconds", 0.0))
    if resume:  # stopped before its first checkpoint: what it wrote is redone, as it was
        log.warning(
            "--resume: no checkpoint in %r yet; starting the run from round 0 with its saved %s",
            str(run_dir / CHECKPOINT_DIR),
            CONFIG_FILE,
        )
    elif checkpointer.latest_round() is not None:
        raise ConfigError(
            f"log.run_dir: {str(run_dir)!r} already holds a run; use --resume {run_dir} "
            "or another --run-dir"
        )
    state = (simulator.init if init is None else init)(key)
    records = _kept_records(run_dir, 0)
    env_params = distributed.host_value(state.env_params)  # every process takes part
    if distributed.is_primary():
        record = params_record(env_params)
        record.update(evaluation.env_params_extras(config, config.federation.num_clients))
        (run_dir / "env_params.json").write_text(json.dumps(record))
        if config.attack.name != attacks.NONE:  # the Byzantine set, drawn from the run key
            record = byzantine.record(config.attack, config.federation.num_clients, state.key)
            (run_dir / BYZANTINE_FILE).write_text(json.dumps(record))
    return state, records, 0.0


def check_resume_rounds(config: Config, checkpointer: Checkpointer) -> None:
    """Refuses a resume whose `federation.rounds` is below the rounds already checkpointed.

    Checked before anything compiles or config.yaml is rewritten: a shorter run
    would silently rewrite the saved `rounds` and end at once.
    """
    done = checkpointer.latest_round()
    if done is not None and config.federation.rounds < done:
        raise ConfigError(
            f"federation.rounds: {config.federation.rounds} is below the {done} rounds this "
            f"run has already run; give --rounds {done} or more (or evaluate an earlier "
            "round with jfedrl eval --round)"
        )


def _warn_missing_rounds(run_dir: Path, records: list[dict[str, Any]], last_round: int) -> None:
    """Warns, naming them, about rounds up to `last_round` that metrics.jsonl no longer holds."""
    if not distributed.is_primary():
        return
    missing = sorted(set(range(1, last_round + 1)) - {r["round"] for r in records})
    if missing:
        log.warning(
            "metrics.jsonl: round(s) %s of the %d already run are missing (deleted or "
            "unreadable); the run continues from round %d without them",
            _spans(missing),
            last_round,
            last_round,
        )


def _spans(numbers: list[int]) -> str:
    """`[1, 2, 3, 7]` as `1-3, 7`."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _kept_records(run_dir: Path, last_round: int) -> list[dict[str, Any]]:
    """The records up to `last_round`; process 0 also cuts metrics.jsonl there."""
    if distributed.is_primary():
        return truncate_metrics(run_dir, last_round)
    return [r for r in read_metrics(run_dir) if r["round"] <= last_round]


def _run_blocks(
    run: Run,
    callbacks: list[Callback],
    state: FedState,
    records: list[dict[str, Any]],
    wall_seconds: float,
) -> Block | None:
    """Runs blocks until `federation.rounds` or a stop; appends to `records`.

    Returns:
        The last block after its callbacks (None if no round was left to run).
    """
    config, executor = run.config, run.executor
    block = None
    while int(state.round) < config.federation.rounds:
        first_round = int(state.round)
        num_rounds = block_rounds(config, first_round)
        for callback in callbacks:
            num_rounds = callback.limit_rounds(first_round, num_rounds)
        state, metrics, tick, compile_seconds = timed_block(executor, state, num_rounds)
        block, wall_seconds = finish_block(
            run, callbacks, state, metrics, first_round, wall_seconds, tick, compile_seconds
        )
        records.extend(block.records)
        state = block.state
        if block.error is not None:
            log.error("%s", block.error)
            break
        if block.stopping and not block.finished:
            log.warning(
                "stopped after round %d; checkpoint saved. Continue with: jfedrl train --resume %s",
                block.round,
                run.run_dir,
            )
            break
    return block


def timed_block(
    executor: BlockRunner, state: FedState, num_rounds: int
) -> tuple[FedState, dict[str, np.ndarray], float, float]:
    """Runs one block: the new state, its metrics on the host, its start tick, compile seconds."""
    compile_before = executor.compile_seconds
    # A wait for this block's compile before it ran (InProcessRunner's memory check) is in
    # its compile_seconds, so the block's window starts where that wait did.
    tick = time.perf_counter() - getattr(executor, "waited_ahead", 0.0)
    state, metrics = executor.run_block(state, num_rounds)
    metrics = distributed.host_value(metrics)
    return state, metrics, tick, executor.compile_seconds - compile_before


def eval_key_of(config: Config) -> jax.Array:
    """The key of a run's periodic evaluation (folded with the round in `sim_eval`)."""
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5EED)


def finish_block(
    run: Run,
    callbacks: list[Callback],
    state: FedState,
    metrics: dict[str, np.ndarray],
    first_round: int,
    wall_seconds: float,
    tick: float,
    compile_seconds: float,
) -> tuple[Block, float]:
    """Evaluates a finished block, makes its records and passes it through the callbacks.

    Shared by `train` and `jfedrl.experiments.sweep` (which runs many runs' blocks as one program).

    Args:
        run: the run the block belongs to.
        callbacks: the run's callbacks, in order.
        state: the state after the block.
        metrics: the block's metrics on the host, stacked over its rounds.
        first_round: the round the block started from.
        wall_seconds: the run's wall time before the block.
        tick: `time.perf_counter()` when the block started.
        compile_seconds: spent compiling in this block.

    Returns:
        The block after the callbacks, and the run's wall time after it.
    """
    block_seconds = time.perf_counter() - tick - compile_seconds
    round_key = jax.random.fold_in(eval_key_of(run.config), state.round)  # as `sim_eval`'s
    views = distributed.host_value(evaluation.eval_metrics(run.simulator, state, round_key))
    block_records = _round_records(
        metrics,
        first_round,
        run.simulator.env_steps_per_round,
        wall_seconds,
        wall_seconds + block_seconds,
    )
    # Compile time is not training time: it is the block's `compile_seconds`, so a return
    # against wall_seconds has no step where the first block compiled.
    wall_seconds += time.perf_counter() - tick - compile_seconds
    last = block_records[-1]
    last["wall_seconds"] = wall_seconds
    last.update({name: float(value) for name, value in views.items()})
    if compile_seconds > 0:
        block_records[0]["compile_seconds"] = compile_seconds
    finished = int(state.round) >= run.config.federation.rounds
    block = Block(state, block_records, compile_seconds, finished)
    for callback in callbacks:
        block = callback.on_block(run, block)
    return block, wall_seconds


def sim_eval(
    simulator: Simulator, state: FedState, eval_key: jax.Array, local: bool = False
) -> jax.Array:
    """Evaluates the global policy (with `local`, each client's own); the key depends only
    on the round.
    """
    return simulator.evaluate(state, jax.random.fold_in(eval_key, state.round), local)
