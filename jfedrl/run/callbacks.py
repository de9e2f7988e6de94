"""Host work between jitted blocks, as callbacks (in the spirit of Brax's `progress_fn`).

`runner.train` runs blocks of rounds and hands each finished `Block` through its
callbacks, in order: check participation, the privacy ledger, metrics.jsonl /
TensorBoard, the drifting env params, Ctrl-C, `stop_after_round`, the checkpoint,
the progress bar and log line. A new per-block behaviour is one new `Callback`,
not an edit of the loop. A callback may annotate the block's records (they are
written by the callbacks after it) or return a changed block: a stop request,
an error to raise once the block is saved, or the state to continue from.

In a multi-process run (`jfedrl.run.distributed`) every process runs every
callback, so the collectives among them (gathering arrays, agreeing to stop,
orbax's save) happen everywhere; only process 0 writes files and shows progress.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
from flax import serialization

from jfedrl import __version__
from jfedrl.config import Config
from jfedrl.round.simulator import Simulator
from jfedrl.round.state import FedState
from jfedrl.run import distributed, signals
from jfedrl.run.checkpoint import Checkpointer
from jfedrl.run.outputs import MetricsWriter, plot_learning_curve, to_jsonable
from jfedrl.strategies import privacy

log = logging.getLogger("jfedrl")


class BlockRunner(Protocol):
    """Runs `num_rounds` rounds from `state`; returns the new state and stacked metrics."""

    compile_seconds: float

    def run_block(self, state: FedState, num_rounds: int) -> tuple[FedState, dict]: ...

    def state_for_checkpoint(self, state: FedState) -> FedState:
        """The complete state to save (an executor may keep client states elsewhere)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Run:
    """The parts of a run that stay fixed while it trains."""

    config: Config
    simulator: Simulator
    run_dir: Path
    executor: BlockRunner


@dataclass(frozen=True)
class Block:
    """One finished block of rounds, as the callbacks see it.

    Attributes:
        state: the state after the block (a callback may replace it: the checkpointer
            continues from the executor's complete `state_for_checkpoint`).
        records: one metrics record per round; callbacks may add fields.
        compile_seconds: spent compiling in this block (0 once compiled).
        finished: the run has reached `federation.rounds`.
        stop: why the run stops before `federation.rounds` (Ctrl-C, `stop_after_round`);
            it is checkpointed, then ends as interrupted.
        error: stops the run like `stop`, then `train` raises it.
    """

    state: FedState
    records: list[dict[str, Any]]
    compile_seconds: float
    finished: bool
    stop: str | None = None
    error: Exception | None = None

    @property
    def round(self) -> int:
        return int(self.state.round)

    @property
    def stopping(self) -> bool:
        return self.stop is not None or self.error is not None


class Callback:
    """Host work around the blocks; a subclass overrides what it needs.

    `on_start` runs before the first block, `on_end` after the last one, also
    when the run fails, for every callback whose `on_start` returned.
    """

    def on_start(self, run: Run, state: FedState) -> None:
        """Called once, with the state the run starts (or resumes) from."""

    def limit_rounds(self, first_round: int, num_rounds: int) -> int:
        """How many of the next `num_rounds` rounds may run (all, unless overridden)."""
        return num_rounds

    def on_block(self, run: Run, block: Block) -> Block:
        """Called after each block; returns `block` or a changed copy."""
        return block

    def on_end(self, run: Run) -> None:
        """Releases what `on_start` acquired."""


class ParticipationError(RuntimeError):
    """Too few clients returned valid updates in a round."""


def check_participation(records: list[dict[str, Any]], min_participation: float) -> None:
    """Warns about rounds without any valid update; fails below `min_participation`.

    Raised before the block is written or checkpointed, so the last checkpoint
    and metrics stay those of the last good block.
    """
    for record in records:
        participating = record.get("clients_participating") or 0
        valid = participating - (record.get("clients_excluded") or 0)
        if participating and valid == 0:
            log.warning(
                "round %d: every client update was excluded; the global params are unchanged",
                record["round"],
            )
        if participating and valid / participating < min_participation:
            raise ParticipationError(
                f"round {record['round']}: only {valid} of {participating} clients returned "
                f"valid updates, below federation.min_participation={min_participation}; "
                "the last checkpoint is intact"
            )


class AggregateRejected(ParticipationError):
    """A round's aggregate was not finite under `federation.on_rejected_aggregate: stop`."""


def check_aggregates(records: list[dict[str, Any]], action: str) -> None:
    """Warns about rounds whose non-finite aggregate was rejected; fails under `stop`.

    Like `check_participation`, raised before the block is written or checkpointed.
    """
    for record in records:
        if not record.get("aggregate_rejected"):
            continue
        if action == "stop":
            raise AggregateRejected(
                f"round {record['round']}: the aggregate of the clients' updates is not finite "
                "(federation.on_rejected_aggregate=stop); the last checkpoint is intact"
            )
        log.warning(
            "round %d: the aggregate of the clients' updates is not finite and was rejected; "
            "the global params are unchanged",
            record["round"],
        )


class CheckParticipation(Callback):
    """Fails the run when too few clients returned valid updates (`check_participation`),
    or a non-finite aggregate was rejected under `on_rejected_aggregate: stop`.
    """

    def on_block(self, run: Run, block: Block) -> Block:
        check_participation(block.records, run.config.federation.min_participation)
        check_aggregates(block.records, run.config.federation.on_rejected_aggregate)
        return block


class PrivacyLedger(Callback):
    """ε and δ in every record; stops at `strategy.dp_fedavg.epsilon_budget` (`budget_action`).

    A block is shortened to the rounds that fit the budget; once not even one more
    round fits, the run is checkpointed and `train` raises `PrivacyBudgetExhausted`.
    """

    def __init__(self, accountant: privacy.Accountant):
        self.accountant = accountant

    def limit_rounds(self, first_round: int, num_rounds: int) -> int:
        return self.accountant.rounds_allowed(first_round, num_rounds)  # raises if none fits

    def on_block(self, run: Run, block: Block) -> Block:
        self.accountant.annotate(block.records)
        if block.finished:
            return block
        try:
            self.accountant.rounds_allowed(block.round, 1)
        except privacy.PrivacyBudgetExhausted as error:
            return dataclasses.replace(block, error=error)
        return block


class WriteMetrics(Callback):
    """Appends the block's records to metrics.jsonl (and TensorBoard); process 0 only."""

    def on_start(self, run: Run, state: FedState) -> None:
        self.writer = None
        if distributed.is_primary():
            self.writer = MetricsWriter(run.run_dir, run.config.log.tensorboard)

    def on_block(self, run: Run, block: Block) -> Block:
        if self.writer is not None:
            self.writer.write(block.records)
        return block

    def on_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()


def params_record(params: Any) -> Any:
    """Env params (a struct pytree) as nested JSON-friendly data."""
    return jax.tree.map(to_jsonable, serialization.to_state_dict(params))


class LogDrift(Callback):
    """Appends the env params in force at the block's last round to env_params.jsonl."""

    def on_block(self, run: Run, block: Block) -> Block:
        env_now = run.simulator.current_env_params(block.state, block.state.round - 1)
        env_now = distributed.host_value(env_now)  # every process takes part
        if not distributed.is_primary():
            return block
        line = json.dumps({"round": block.records[-1]["round"], "params": params_record(env_now)})
        with (run.run_dir / "env_params.jsonl").open("a") as f:
            f.write(line)
            f.write("\n")
        return block


class StopOnCtrlC(Callback):
    """Turns the first Ctrl-C or SIGTERM into a stop after the current block (a second
    one aborts).

    SIGTERM is what SLURM and Kubernetes send before they kill a job: it stops the
    run like Ctrl-C, checkpointed (`stop` is then "SIGTERM"). Across processes, a
    signal in any of them stops them all after the same block.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def on_start(self, run: Run, state: FedState) -> None:
        self.requested = False
        self.reason: str | None = None

        def handler(signum, frame):
            if self.requested:
                signals.interrupt(signum, frame)  # aborts (once raising is safe)
                return
            self.requested = True
            self.reason = signals.name(signum)
            log.warning(
                "%s: finishing this block, then checkpointing (%s again aborts)",
                self.reason,
                self.reason,
            )

        try:
            self._previous = {signum: signal.signal(signum, handler) for signum in self.SIGNALS}
        except ValueError:  # not in the main thread
            self._previous = None

    def on_block(self, run: Run, block: Block) -> Block:
        stop = distributed.any_process(self.requested)
        return dataclasses.replace(block, stop=self.reason or "Ctrl-C") if stop else block

    def on_end(self, run: Run) -> None:
        if self._previous is not None:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)


class StopAfterRound(Callback):
    """Stops at the first block boundary at or after `last_round`, as if interrupted."""

    def __init__(self, last_round: int):
        self.last_round = last_round

    def on_block(self, run: Run, block: Block) -> Block:
        if block.round >= self.last_round:
            return dataclasses.replace(block, stop=f"stop_after_round={self.last_round}")
        return block


class SaveCheckpoint(Callback):
    """Saves every `log.checkpoint_every` blocks, and at the run's end or stop.

    The save is synchronous and holds the executor's complete state
    (`state_for_checkpoint`), which the run then continues from. Across processes
    every process saves its own shards (orbax); process 0 writes the metadata.
    """

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer
        self.blocks_done = 0

    def on_block(self, run: Run, block: Block) -> Block:
        self.blocks_done += 1
        every = run.config.log.checkpoint_every
        if not (block.finished or block.stopping or self.blocks_done % every == 0):
            return block
        state = run.executor.state_for_checkpoint(block.state)
        last = block.records[-1]
        meta = {
            "wall_seconds": last["wall_seconds"],
            "env_steps": last["env_steps"],
            "jfedrl": __version__,
            "jax": jax.__version__,
        }
        self.checkpointer.save(int(state.round), state, meta)
        return dataclasses.replace(block, state=state)

    def on_end(self, run: Run) -> None:
        self.checkpointer.close()


def number(value: float | None) -> str:
    """A return for the progress line (None: every client update was excluded)."""
    return "n/a" if value is None else f"{value:.1f}"


class ShowProgress(Callback):
    """The progress bar (tqdm; process 0's) and one log line per block.

    The bar is drawn only when `show` and stderr is a terminal: written to a file
    (nohup, SLURM) its frames would fill it, and the log line per block says the
    same. While it is drawn, the log's stderr lines go through `tqdm.write`, so
    they print above the bar instead of onto it. Its rate and ETA start after the
    first block, which holds the compile.
    """

    def __init__(self, show: bool):
        self.show = show and distributed.is_primary()

    def on_start(self, run: Run, state: FedState) -> None:
        import sys

        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        drawn = self.show and sys.stderr.isatty()
        self.bar = tqdm(
            total=run.config.federation.rounds,
            initial=int(state.round),
            unit="round",
            disable=not drawn,
            dynamic_ncols=True,
            smoothing=0,  # the mean rate since the first block, not a spiky recent one
        )
        self.first_block = True
        self._redirect = None
        consoles = [h for h in log.handlers if type(h) is logging.StreamHandler]
        if drawn and any(h.stream is sys.stderr for h in consoles):
            self._redirect = logging_redirect_tqdm([log])
            self._redirect.__enter__()

    def on_block(self, run: Run, block: Block) -> Block:
        last = block.records[-1]
        self.bar.update(len(block.records))
        if self.first_block and not self.bar.disable:
            # The first block's time is mostly the compile: the rate counts from here.
            self.first_block = False
            self.bar.initial, self.bar.start_t = self.bar.n, time.time()  # tqdm's clock
            self.bar.refresh()
        self.bar.set_postfix(
            steps_s=f"{last['steps_per_second']:.3g}",
            ret=number(last["train_return_mean"]),
            eval=number(last["eval_return"]),
        )
        log.info(
            "round %d/%d  env steps %d  %.0f steps/s  train return %s  eval %s%s",
            last["round"],
            run.config.federation.rounds,
            last["env_steps"],
            last["steps_per_second"],
            number(last["train_return_mean"]),
            number(last["eval_return"]),
            f"  (compiled in {block.compile_seconds:.1f}s)" if block.compile_seconds else "",
        )
        return block

    def on_end(self, run: Run) -> None:
        self.bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)


def curve_title(config: Config) -> str:
    """The learning curve's title: env, algorithm, strategy, clients, variant, drift."""
    fed, env = config.federation, config.env
    title = (
        f"{env.name} · {config.algo.name} · {config.strategy.name} · "
        f"{fed.num_clients} clients · variant {env.variant}"
    )
    if env.drift != "none":
        title += f" · drift {env.drift} (period {env.drift_period}, x{env.drift_magnitude:g})"
    return title


def drifting_params(config: Config) -> tuple[str, ...]:
    """The env params that drift in this run (none without drift)."""
    if config.env.drift == "none":
        return ()
    import envs

    return tuple(config.env.drift_params) or tuple(envs.spec(config.env.name).drift_params)


class PlotCurve(Callback):
    """Draws learning_curve.png when the run ends (process 0), if it can.

    It never hides the run's error. `path` is the written file (None if none was).
    """

    path: Path | None = None

    def on_end(self, run: Run) -> None:
        if not distributed.is_primary():
            return
        try:
            self.path = plot_learning_curve(
                run.run_dir, curve_title(run.config), drifting_params(run.config)
            )
        except Exception as error:  # a full disk, a broken matplotlib backend, ...
            log.warning("learning curve not written: %s: %s", type(error).__name__, error)
