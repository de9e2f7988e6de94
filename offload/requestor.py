"""The requestor loop: one federated round with the local training offloaded.

Each round: `Simulator.begin_round` (jitted) samples and broadcasts; the K
participants are split into contiguous shards; each shard becomes a task
folder; an executor runs the tasks; every result is validated; the shards are
concatenated and `Simulator.aggregate` (jitted: the very same code as the
in-process round) validates, aggregates and scatters the clients back.
`OffloadRunner.run_round` reads as those steps: `_broadcast`, `_plan`,
`_execute` (`offload.dispatch`: write, submit, check, retry),
`offload.assemble.assemble`, `_aggregate`, `_remember` (sticky clients) and
`_round_metrics`. The module stays one class over ~400 lines because the
steps share the runner's sticky-client bookkeeping (`_kept`, `_synced`,
`_revert`), which reads best in one place.

Faults: a task whose attempt fails (crash, timeout, missing / truncated /
altered output, wrong structure, shape or dtype, non-finite values, a report
for another round or other clients) is retried up to `offload.max_retries`
times. Then its clients are left out of the round: they are handed to
`aggregate` as their pre-round states with NaN params, which its validation
masks (they keep their old state and do not enter the average), and the
metrics count them (`offload/tasks_failed`, `offload/clients_lost`). If fewer
than `federation.min_participation` of the participants (and always if none)
return a valid update, the round fails with an `OffloadError`; nothing of the
failed block is kept, so the last checkpoint is intact.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jfedrl import __version__
from jfedrl.config import Config
from jfedrl.round.simulator import Simulator
from jfedrl.round.state import FedState
from jfedrl.schema.convert import to_dict
from offload import quantize
from offload.archive import OffloadError, digest_tree, save_arrays
from offload.assemble import assemble, rows_of, set_rows
from offload.dispatch import Dispatch, Execution
from offload.executors import Executor
from offload.shapes import decode_group, encode_group, shard_shapes, strip_params, with_params_jit
from offload.source import source_hash
from offload.task import INPUTS_DIR, TASK_FILE, TaskHeader

log = logging.getLogger("jfedrl.offload")

ExecutorFactory = Callable[[Simulator, Path, int], Executor]


def shard_slices(num_participants: int, shards: int) -> list[slice]:
    """Contiguous, nearly equal shards of the participants (no empty shard)."""
    count = max(1, min(shards, num_participants))
    bounds = np.linspace(0, num_participants, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def task_config(config: Config) -> dict[str, Any]:
    """The config a worker needs: everything but logging and offload settings."""
    data = to_dict(config)
    data.pop("log", None)
    data.pop("offload", None)
    return data


def _plain(group: str, tree: Any) -> dict[str, np.ndarray]:
    return encode_group(group, tree, "none", False, False)[0]


def _signature(args: tuple) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(
        (tuple(np.shape(x)), np.result_type(x), getattr(x, "weak_type", False)) for x in leaves
    )


@dataclass(frozen=True)
class _Broadcast:
    """One round's inputs on the host: what every task of the round is cut from."""

    inputs: Any
    """`begin_round`'s output, on the device (for `aggregate`)."""
    host: Any
    """The same, on the host."""
    stripped: Any
    """The participants' pre-round states, params stripped."""
    ids: list[int]
    shared: dict[str, np.ndarray]
    """Arrays every task carries: the broadcast params (unless per client) and the peers'."""
    sent_error: quantize.QuantError
    starts: Any
    """Each client's own starting params (aggregation periods, staleness), or None."""


@dataclass(frozen=True)
class _Request:
    """What the tasks of one round (or one state fetch) ask of their workers."""

    round_dir: Path
    round_index: int
    client_ids: list[int]
    op: str
    return_state: bool
    arrays: Callable[[int, str], dict[str, np.ndarray]] | None = None
    """`(shard, state source) -> input arrays`; None for a fetch (no inputs)."""


class OffloadRunner:
    """A `BlockRunner` (see `jfedrl.run.runner`) that ships local training to an executor.

    Sticky clients (`offload.state_sync_rounds` > 0, full participation): a
    shard's worker keeps its clients' states, so a round moves only the
    broadcast params up and the new params and metrics back; the states come
    home every `state_sync_rounds` rounds and before each checkpoint.
    """

    def __init__(self, simulator: Simulator, run_dir: Path, make_executor: ExecutorFactory):
        self.simulator = simulator
        self.config = simulator.config
        self.run_dir = Path(run_dir)
        self.work_dir = self.run_dir / "offload"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self.run_dir.absolute().name
        self.compile_seconds = 0.0
        self._compiled: dict[tuple, Any] = {}
        self._task_config = task_config(self.config)
        self.slices = shard_slices(simulator.num_participants, self.config.offload.shards)
        sync_every = self.config.offload.state_sync_rounds
        self.sticky = sync_every > 0 and simulator.num_participants == simulator.num_clients
        if sync_every > 0 and not self.sticky:
            log.info(
                "offload: clients change shards with partial participation, so their states "
                "travel every round (offload.state_sync_rounds applies at participation 1)"
            )
        self._kept: dict[int, int] = {}
        """Shard -> the last round whose end states its worker keeps (sticky clients)."""
        self._synced: dict[int, int] = {}
        """Shard -> the round count when its clients' states last came home."""
        self._revert: dict[int, list[int]] = {}
        """Shard -> its clients rejected last round (the worker restores their old state)."""
        self._since_record = {"offload/fetch_failed": 0, "offload/clients_rolled_back": 0}
        """Losses since the last round's metrics (a fetch runs after its block's record)."""
        self.executor = make_executor(simulator, self.work_dir, len(self.slices))
        self._threads = ThreadPoolExecutor(len(self.slices), thread_name_prefix="offload-io")
        self._cleaner: threading.Thread | None = None

    def _call(self, name: str, fn: Callable, *args):
        """`jax.jit(fn)(*args)`, compiled ahead of time so compilation is timed apart."""
        key = (name, _signature(args))
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = jax.jit(fn).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key](*args)

    # -- the block runner interface

    def run_block(self, state: FedState, num_rounds: int) -> tuple[FedState, dict]:
        records = []
        for _ in range(num_rounds):
            try:
                state, metrics = self.run_round(state)
            except OffloadError as error:
                log.error("%s", error)  # the run's train.log keeps the reason too
                raise
            records.append(metrics)
        stacked = {name: np.stack([np.asarray(r[name]) for r in records]) for name in records[0]}
        return state, stacked

    def state_for_checkpoint(self, state: FedState) -> FedState:
        """`state` with every client's state brought home from the workers that keep it.

        A shard whose worker is gone keeps the states of its last sync (logged).
        """
        round_index = int(state.round)
        stale = [
            shard
            for shard in range(len(self.slices))
            if self._kept.get(shard) == round_index - 1 and self._synced.get(shard, 0) < round_index
        ]
        if not self.sticky or not stale:
            return state
        everyone = list(range(self.simulator.num_clients))
        request = _Request(
            self.work_dir / f"fetch-{round_index:06d}", round_index, everyone, "fetch", False
        )
        done = self._execute(request, {s: "cache" for s in stale}, fetch=True)
        clients = jax.device_get(state.clients)
        algorithm = self.simulator.algorithm
        for shard, (arrays, _) in done.results.items():
            rows = self.slices[shard]
            shapes = shard_shapes(self.simulator, self._size(shard))
            kept = decode_group("clients", arrays, shapes.new_clients, rows=False)
            params = jax.device_get(jax.vmap(algorithm.get_params)(rows_of(clients, rows)))
            merged = with_params_jit(algorithm, kept, params, True)
            clients = set_rows(clients, rows, jax.device_get(merged))
            self._synced[shard] = round_index
        for shard in done.lost:
            self._kept.pop(shard, None)
            self._log_stale(shard, done.failures.get(shard, "?"))
        self._since_record["offload/fetch_failed"] += len(done.lost)
        if not self.config.offload.keep_tasks:  # a copy of every kept state: used, so gone
            shutil.rmtree(request.round_dir, ignore_errors=True)
        return state.replace(clients=jax.device_put(clients))

    def close(self) -> None:
        self.executor.close()
        self._threads.shutdown()
        if self._cleaner is not None:
            self._cleaner.join()

    # -- one round, step by step

    def run_round(self, state: FedState) -> tuple[FedState, dict]:
        round_index = int(state.round)
        start = time.perf_counter()
        broadcast = self._broadcast(state)
        sync = not self.sticky or (round_index + 1) % self.config.offload.state_sync_rounds == 0
        round_dir = self.work_dir / f"round-{round_index:06d}"
        self._clean_old_rounds(round_dir)
        arrays = functools.partial(self._shard_arrays, broadcast)
        request = _Request(round_dir, round_index, broadcast.ids, "train", sync, arrays)
        written = time.perf_counter()
        done = self._execute(request, self._plan(round_index))
        self.compile_seconds += done.worker_compile
        gathered = time.perf_counter()
        clients, metrics, received_error, bad = assemble(
            self.simulator, self.slices, broadcast.host, broadcast.stripped, done.results
        )
        new_state, round_metrics = self._aggregate(state, broadcast, done, clients, metrics)
        self._remember(round_index, broadcast.ids, done, bad, sync)
        round_metrics.update(self._round_metrics(done, bad, sync))
        if done.verify_runs:
            log.info(
                "offload: round %d verification: %d extra run(s), %.1f worker-seconds, "
                "%d disagreement(s), %d unverified",
                round_index + 1,
                done.verify_runs,
                done.verify_seconds,
                done.disagreements,
                done.unverified,
            )
        round_metrics.update(
            {
                "offload/quantize_error_sent": np.float32(broadcast.sent_error.relative_error),
                "offload/quantize_error_received": np.float32(received_error),
                "offload/seconds_write": np.float32(written - start),
                "offload/seconds_wait": np.float32(done.wait_seconds),
                "offload/seconds_read": np.float32(gathered - written - done.wait_seconds),
            }
        )
        extra = getattr(self.executor, "metrics", None)
        if extra is not None:
            round_metrics.update(extra())
        spent = round_metrics.get("golem/spent")
        log.info(
            "offload: round %d in %.1f s (waiting %.1f s for %d attempt(s), %d retried)%s",
            round_index + 1,
            time.perf_counter() - start,
            done.wait_seconds,
            done.attempts,
            done.attempts - len(self.slices),
            "" if spent is None else f"; {float(spent):.6g} GLM spent so far",
        )
        return new_state, round_metrics

    def _broadcast(self, state: FedState) -> _Broadcast:
        """`begin_round` (sample, broadcast) and the arrays every task of the round shares."""
        sim, mode = self.simulator, self.config.offload.quantize
        inputs = self._call("begin_round", sim.begin_round, state)
        stripped = self._call(
            "strip", functools.partial(strip_params, sim.algorithm), inputs.clients
        )
        host = jax.device_get(inputs)
        shapes = shard_shapes(sim, self._size(0))
        reference = host.reference
        shared, sent_error = {}, quantize.NO_ERROR
        if not shapes.stacked_reference:  # else each client has its own stale reference
            shared, sent_error = encode_group("global", reference.global_params, mode, True, False)
        peers, peer_error = encode_group("peers", reference.peer_params, mode, True, True)
        shared.update(peers)
        shared.update(_plain("peer_weights", reference.peer_weights))
        starts = None
        if shapes.start_params is not None:
            starts = jax.device_get(jax.vmap(sim.algorithm.get_params)(inputs.clients))
        return _Broadcast(
            inputs=inputs,
            host=host,
            stripped=jax.device_get(stripped),
            ids=[int(i) for i in np.asarray(host.ids)[: sim.num_participants]],
            shared=shared,
            sent_error=sent_error + peer_error,
            starts=starts,
        )

    def _shard_arrays(self, broadcast: _Broadcast, shard: int, source: str) -> dict:
        """One task's inputs: the shared arrays, the shard's states (unless kept).

        Also its env params and keys; per client where clients differ: their own
        starting params, stale reference params, and their number of local updates.
        """
        rows, mode, host = self.slices[shard], self.config.offload.quantize, broadcast.host
        shapes = shard_shapes(self.simulator, self._size(0))
        data = dict(broadcast.shared)
        if source == "task":
            data.update(_plain("clients", rows_of(broadcast.stripped, rows)))
        data.update(_plain("env", rows_of(host.env_params, rows)))
        data.update(_plain("keys", rows_of(host.client_keys, rows)))
        if shapes.stacked_reference:
            stale = rows_of(host.reference.global_params, rows)
            data.update(encode_group("global", stale, mode, True, True)[0])
        if broadcast.starts is not None:
            data.update(encode_group("start", rows_of(broadcast.starts, rows), mode, True, True)[0])
        if shapes.num_updates is not None:
            data.update(_plain("updates", rows_of(host.num_updates, rows)))
        return data

    def _plan(self, round_index: int) -> dict[int, str]:
        """Shard -> where its states come from: the worker's copy if it kept last round's."""
        return {
            shard: "cache" if self.sticky and self._kept.get(shard) == round_index - 1 else "task"
            for shard in range(len(self.slices))
        }

    def _aggregate(self, state, broadcast: _Broadcast, done: Execution, clients, metrics):
        """`Simulator.aggregate`, unless too few participants returned a valid update."""
        lost_clients = sum(self._size(s) for s in done.lost)
        if lost_clients == self.simulator.num_participants:
            raise OffloadError(self._failure_message(state, done, 0))
        new_state, round_metrics = self._call(
            "aggregate", self.simulator.aggregate, state, broadcast.inputs, clients, metrics
        )
        participating = int(round_metrics["clients_participating"])
        valid = participating - int(round_metrics["clients_excluded"])
        if valid / participating < self.config.federation.min_participation:
            raise OffloadError(self._failure_message(state, done, valid))
        return new_state, dict(round_metrics)

    def _remember(self, round_index: int, ids: list[int], done, bad, sync: bool) -> None:
        """Which workers now keep which round's states, and whom they must revert."""
        for shard, rows in enumerate(self.slices):
            if shard in done.results and self.sticky:
                self._kept[shard] = round_index
                self._revert[shard] = [ids[rows][i] for i in np.flatnonzero(bad[rows])]
                if sync:
                    self._synced[shard] = round_index + 1
            else:
                if shard in done.lost and self._kept.pop(shard, None) is not None:
                    self._log_stale(shard, done.failures.get(shard, "?"))
                self._revert.pop(shard, None)

    def _round_metrics(self, done: Execution, bad: np.ndarray, sync: bool) -> dict:
        tasks = len(self.slices)
        since = {name: np.int32(count) for name, count in self._since_record.items()}
        self._since_record = dict.fromkeys(self._since_record, 0)
        if self._verify_fraction() > 0:
            since |= {
                "offload/verify_runs": np.int32(done.verify_runs),
                "offload/verify_seconds": np.float32(done.verify_seconds),
                "offload/verify_disagreements": np.int32(done.disagreements),
                "offload/verify_unverified": np.int32(done.unverified),
            }
        return since | {
            "offload/tasks": np.int32(tasks),
            "offload/attempts": np.int32(done.attempts),
            "offload/retries": np.int32(done.attempts - tasks),
            "offload/tasks_failed": np.int32(len(done.lost)),
            "offload/clients_lost": np.int32(sum(self._size(s) for s in done.lost)),
            "offload/clients_rejected": np.int32(bad.sum()),
            "offload/state_synced": np.int32(sync),
            "offload/state_resends": np.int32(done.state_resends),
            "offload/bytes_sent": np.int64(done.bytes_sent),
            "offload/bytes_received": np.int64(done.bytes_received),
            "offload/bytes_saved": np.int64(done.bytes_saved),
        }

    # -- tasks, attempts and retries

    def _write_task(self, request: _Request, shard: int, source: str) -> tuple[TaskHeader, Path]:
        """Writes one shard's task folder (inputs + digests); returns its header and folder."""
        task_dir = request.round_dir / f"shard-{shard:03d}" / f"{request.op}-{source}"
        shutil.rmtree(task_dir, ignore_errors=True)
        task_dir.mkdir(parents=True)
        if request.arrays is not None:
            save_arrays(task_dir / INPUTS_DIR, request.arrays(shard, source))
        header = TaskHeader(
            run_id=self.run_id,
            round=request.round_index,
            shard=shard,
            num_shards=len(self.slices),
            client_ids=tuple(request.client_ids[self.slices[shard]]),
            seed=self.config.seed,
            quantize=self.config.offload.quantize,
            op=request.op,
            state=source,
            revert=tuple(self._revert.get(shard, [])) if source == "cache" else (),
            return_state=request.return_state,
            config=self._task_config,
            versions={"jfedrl": __version__, "jax": jax.__version__, "source": source_hash()},
            inputs=digest_tree(task_dir, exclude=(TASK_FILE,)),
        )
        return header, task_dir

    def _execute(self, request: _Request, plan: dict[int, str], fetch: bool = False) -> Execution:
        """Runs the planned shards (shard -> state source) until each has a valid result."""

        def cache_miss(shard: int) -> None:
            self._kept.pop(shard, None)
            if not fetch:
                self._log_stale(shard, "a new worker took its shard")

        fraction = self._verify_fraction() if not fetch else 0.0
        drawn = set()
        if fraction > 0:  # reproducible: the run's seed and the round
            draws = np.random.default_rng([self.config.seed, request.round_index, 25]).random(
                len(self.slices)
            )
            drawn = {int(shard) for shard in np.flatnonzero(draws < fraction)}
        golem = getattr(self.config.offload, "golem", None)
        return Dispatch(
            verify=drawn.__contains__,
            tolerance=getattr(golem, "verify_tolerance", 0.0),
            executor=self.executor,
            write=functools.partial(self._write_task, request),
            shapes=lambda shard: shard_shapes(self.simulator, self._size(shard)),
            on_cache_miss=cache_miss,
            mode=self.config.offload.quantize,
            max_retries=self.config.offload.max_retries,
            round_index=request.round_index,
            fetch=fetch,
        ).run(plan, self._threads)

    # -- helpers

    def _verify_fraction(self) -> float:
        """`offload.golem.verify_fraction` for a golem run, else 0 (trusted workers)."""
        if self.config.offload.executor != "golem":
            return 0.0
        return float(getattr(self.config.offload.golem, "verify_fraction", 0.0))

    def _size(self, shard: int) -> int:
        return self.slices[shard].stop - self.slices[shard].start

    def _log_stale(self, shard: int, reason: str) -> None:
        rows = self.slices[shard]
        self._since_record["offload/clients_rolled_back"] += rows.stop - rows.start
        log.warning(
            "offload: the worker keeping clients %d-%d is lost (%s); their local state goes "
            "back to round %d, the last sync",
            rows.start,
            rows.stop - 1,
            reason,
            self._synced.get(shard, 0),
        )

    def _failure_message(self, state: FedState, done: Execution, valid: int) -> str:
        reasons = "; ".join(f"shard {s}: {done.failures.get(s, '?')}" for s in done.lost[:4])
        return (
            f"offload: round {int(state.round) + 1} failed: {valid} of "
            f"{self.simulator.num_participants} participants returned a valid update "
            f"(federation.min_participation={self.config.federation.min_participation:g}) "
            f"after offload.max_retries={self.config.offload.max_retries} retries "
            f"[{reasons}]. The last checkpoint is intact: resume with "
            f"`jfedrl train --resume {self.run_dir}`"
        )

    def _clean_old_rounds(self, keep: Path) -> None:
        """Deletes earlier rounds' folders in the background (off the round's critical path)."""
        if self.config.offload.keep_tasks:
            return
        if self._cleaner is not None:
            self._cleaner.join()
        trash = []
        for old in [*self.work_dir.glob("round-*"), *self.work_dir.glob("fetch-*")]:
            if old != keep:  # a fetch folder left by a crash is as stale as an old round
                target = old.with_name(".deleting-" + old.name)
                old.rename(target)
                trash.append(target)
        trash.extend(self.work_dir.glob(".deleting-*"))

        def delete(paths=tuple(set(trash))):
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

        self._cleaner = threading.Thread(target=delete, name="offload-cleaner", daemon=True)
        self._cleaner.start()
