"""The requestor loop: one federated round with the local training offloaded.

Each round: `Simulator.begin_round` (jitted) samples and broadcasts; the K
participants are split into contiguous shards; each shard becomes a task
folder; an executor runs the tasks; every result is validated; the shards are
concatenated and `Simulator.aggregate` (jitted: the very same code as the
in-process round) validates, aggregates and scatters the clients back.

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

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jfedrl import __version__
from jfedrl.config import Config, ConfigError, to_dict
from jfedrl.federated import FedState, Simulator
from offload import task as fmt
from offload.executors import Executor, Job

log = logging.getLogger("jfedrl.offload")

ExecutorFactory = Callable[[Simulator, Path, int], Executor]


def validate_offload(config: Config) -> None:
    """Checks the offload section beyond what `jfedrl.config.validate` checks."""
    offload = config.offload
    for name in ("task_timeout", "compile_timeout"):
        if getattr(offload, name) <= 0:
            raise ConfigError(f"offload.{name}: must be > 0, got {getattr(offload, name)}")
    golem = offload.golem
    if config.offload.executor == "golem":
        for name in (
            "budget",
            "task_timeout",
            "offer_timeout",
            "health_interval",
            "min_mem_gib",
            "min_storage_gib",
        ):
            if getattr(golem, name) <= 0:
                raise ConfigError(f"offload.golem.{name}: must be > 0, got {getattr(golem, name)}")
        for name in ("min_cpu_threads", "max_workers"):
            if getattr(golem, name) < 1:
                raise ConfigError(f"offload.golem.{name}: must be >= 1, got {getattr(golem, name)}")
        if not (golem.image_hash or golem.image_tag):
            raise ConfigError(
                "offload.golem.image_hash / offload.golem.image_tag: one is required (build "
                "and push the provider image with scripts/build_golem_image.sh)"
            )
        if golem.image_hash and golem.image_tag:
            raise ConfigError(
                "offload.golem.image_hash / offload.golem.image_tag: give one, not both"
            )
        if golem.image_url and not golem.image_hash:
            raise ConfigError("offload.golem.image_url: needs offload.golem.image_hash too")


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


def _rows(tree: Any, rows: slice) -> Any:
    return jax.tree.map(lambda x: np.asarray(x)[rows], tree)


def _plain(group: str, tree: Any) -> dict[str, np.ndarray]:
    return fmt.encode_group(group, tree, "none", False, False)[0]


def _set_rows(full: np.ndarray, rows: slice, part: np.ndarray) -> np.ndarray:
    full = np.array(full, copy=True)
    full[rows] = part
    return full


def _concat(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *trees)


def _missing(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Metrics of clients that did not train: NaN (aggregate averages them out), or 0."""
    fill = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0
    return np.full(shape, fill, dtype)


def _signature(args: tuple) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(
        (tuple(np.shape(x)), np.result_type(x), getattr(x, "weak_type", False)) for x in leaves
    )


def _folder_bytes(path: Path) -> int:
    try:
        return sum(fmt.list_files(path).values())
    except (fmt.TaskError, OSError):
        return 0


@dataclass
class _Attempt:
    """What was sent for one job, to check its result against."""

    header: dict[str, Any]
    spec: fmt.Spec
    task_dir: Path


@dataclass
class _Execution:
    """The outcome of running a set of shards to valid results (or giving up)."""

    results: dict[int, tuple[dict, dict]] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    attempts: int = 0
    state_resends: int = 0
    """Attempts sent again with their states after a `cache miss` (not failures)."""
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_saved: int = 0
    wait_seconds: float = 0.0
    worker_compile: float = 0.0


class OffloadRunner:
    """A `BlockRunner` (see `jfedrl.runner`) that ships local training to an executor.

    Sticky clients (`offload.state_sync_rounds` > 0, full participation): a
    shard's worker keeps its clients' states, so a round moves only the
    broadcast params up and the new params and metrics back; the states come
    home every `state_sync_rounds` rounds and before each checkpoint.
    """

    def __init__(self, simulator: Simulator, run_dir: Path, make_executor: ExecutorFactory):
        validate_offload(simulator.config)
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
        self.executor = make_executor(simulator, self.work_dir, len(self.slices))
        self._threads = ThreadPoolExecutor(len(self.slices), thread_name_prefix="offload-io")
        self._cleaner: threading.Thread | None = None

    # -- compiled pieces (the simulator's own functions)

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
            except fmt.OffloadError as error:
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
        round_dir = self.work_dir / f"fetch-{round_index:06d}"
        shapes = {s: fmt.shard_shapes(self.simulator, self._size(s)) for s in stale}

        def write(shard: int, source: str) -> tuple[dict, Path]:
            everyone = list(range(self.simulator.num_clients))
            return self._write_task(
                round_dir, shard, round_index, everyone, "fetch", source, None, False
            )

        done = self._execute(round_index, {s: "cache" for s in stale}, write, fetch=True)
        clients = jax.device_get(state.clients)
        for shard, (arrays, _) in done.results.items():
            rows = self.slices[shard]
            kept = fmt.decode_group("clients", arrays, shapes[shard].new_clients, rows=False)
            params = jax.device_get(
                jax.vmap(self.simulator.algorithm.get_params)(_rows(clients, rows))
            )
            merged = fmt.with_params_jit(self.simulator.algorithm, kept, params, True)
            clients = jax.tree.map(
                lambda full, part, rows=rows: _set_rows(full, rows, part),
                clients,
                jax.device_get(merged),
            )
            self._synced[shard] = round_index
        for shard in done.lost:
            self._kept.pop(shard, None)
            self._log_stale(shard, done.failures.get(shard, "?"))
        return state.replace(clients=jax.device_put(clients))

    def close(self) -> None:
        self.executor.close()
        self._threads.shutdown()
        if self._cleaner is not None:
            self._cleaner.join()

    # -- one round

    def _size(self, shard: int) -> int:
        return self.slices[shard].stop - self.slices[shard].start

    def _log_stale(self, shard: int, reason: str) -> None:
        rows = self.slices[shard]
        log.warning(
            "offload: the worker keeping clients %d-%d is lost (%s); their local state goes "
            "back to round %d, the last sync",
            rows.start,
            rows.stop - 1,
            reason,
            self._synced.get(shard, 0),
        )

    def _write_task(
        self,
        round_dir: Path,
        shard: int,
        round_index: int,
        client_ids: list[int],
        op: str,
        source: str,
        arrays: Callable[[int, str], dict[str, np.ndarray]] | None,
        return_state: bool,
    ) -> tuple[dict[str, Any], Path]:
        """Writes one shard's task folder (inputs + digests); returns its header and folder."""
        task_dir = round_dir / f"shard-{shard:03d}" / f"{op}-{source}"
        shutil.rmtree(task_dir, ignore_errors=True)
        task_dir.mkdir(parents=True)
        if arrays is not None:
            fmt.save_arrays(task_dir / fmt.INPUTS_DIR, arrays(shard, source))
        rows = self.slices[shard]
        header = {
            "format": fmt.FORMAT,
            "kind": "jfedrl-offload-task",
            "run_id": self.run_id,
            "round": round_index,
            "shard": shard,
            "num_shards": len(self.slices),
            "attempt": 0,
            "client_ids": client_ids[rows],
            "seed": self.config.seed,
            "quantize": self.config.offload.quantize,
            "op": op,
            "state": source,
            "revert": self._revert.get(shard, []) if source == "cache" else [],
            "return_state": return_state,
            "config": self._task_config,
            "versions": {"jfedrl": __version__, "jax": jax.__version__},
            "inputs": fmt.digest_tree(task_dir, exclude=(fmt.TASK_FILE,)),
        }
        return header, task_dir

    def _execute(
        self,
        round_index: int,
        plan: dict[int, str],
        write: Callable[[int, str], tuple[dict, Path]],
        fetch: bool = False,
    ) -> _Execution:
        """Runs the planned shards (shard -> state source) until each has a valid result.

        A failed attempt is retried as soon as it is known (up to
        `offload.max_retries` times); a worker that no longer keeps a shard's
        states (`cache miss`) is sent them at once, which is not a failure.
        """
        offload = self.config.offload
        done = _Execution()
        written: dict[tuple[int, str], tuple[dict, Path]] = {}
        launches: dict[int, int] = {}
        failed: dict[int, int] = {}
        in_flight: dict[tuple[int, int], _Attempt] = {}
        mode = offload.quantize

        def task_for(shard: int, source: str) -> tuple[dict, Path]:
            if (shard, source) not in written:
                written[(shard, source)] = write(shard, source)
            return written[(shard, source)]

        def launch(shard: int, source: str, again: int | None = None) -> None:
            """Submits the shard's next attempt (or attempt `again`, resent with its states)."""
            if again is None:
                attempt = launches.get(shard, 0)
                launches[shard] = attempt + 1
                done.attempts += 1
            else:
                attempt = again
                done.state_resends += 1
            header, task_dir = task_for(shard, source)
            header = dict(header, attempt=attempt)
            fmt.write_json(task_dir / fmt.TASK_FILE, header)
            output = task_dir.parent / f"result-{attempt}"
            shutil.rmtree(output, ignore_errors=True)
            shapes = fmt.shard_shapes(self.simulator, self._size(shard))
            spec = fmt.result_spec(shapes, mode, header["op"], header["return_state"])
            in_flight[(shard, attempt)] = _Attempt(header, spec, task_dir)
            done.bytes_sent += _folder_bytes(task_dir)
            if header["op"] == "train":
                done.bytes_saved += fmt.spec_bytes(
                    fmt.task_spec(shapes, "none", "train", source)
                ) - fmt.spec_bytes(fmt.task_spec(shapes, mode, "train", source))
            self.executor.submit(Job(shard, attempt, task_dir, output, fmt.max_result_bytes(spec)))

        # The first tasks are written in parallel (orbax does its I/O off the GIL).
        list(self._threads.map(lambda item: task_for(*item), plan.items()))
        for shard, source in plan.items():
            launch(shard, source)
        start = time.perf_counter()
        while in_flight:
            for outcome in self.executor.wait(1.0):
                shard, attempt = outcome.job.shard, outcome.job.attempt
                sent = in_flight.pop((shard, attempt))
                done.worker_compile = max(done.worker_compile, outcome.compile_seconds)
                done.bytes_received += _folder_bytes(outcome.job.output_dir)
                error = outcome.error or "failed"
                if outcome.ok:
                    try:
                        arrays, report = fmt.read_result(
                            outcome.job.output_dir, sent.header, sent.spec
                        )
                    except fmt.TaskError as bad:
                        error = f"bad result: {bad}"
                    else:
                        self.executor.verdict(outcome, None)
                        done.results[shard] = (arrays, report)
                        if sent.header["op"] == "train":
                            shapes = fmt.shard_shapes(self.simulator, self._size(shard))
                            done.bytes_saved += fmt.spec_bytes(
                                fmt.result_spec(shapes, "none", "train", True)
                            ) - fmt.spec_bytes(fmt.result_spec(shapes, mode, "train", True))
                        continue
                if error.startswith(fmt.CACHE_MISS):
                    self.executor.verdict(outcome, None)  # not the worker's fault
                    self._kept.pop(shard, None)
                    if fetch:
                        done.failures[shard] = error
                        done.lost.append(shard)
                    else:
                        self._log_stale(shard, "a new worker took its shard")
                        launch(shard, "task", again=attempt)
                    continue
                self.executor.verdict(outcome, error)
                failed[shard] = failed.get(shard, 0) + 1
                done.failures[shard] = error
                retry = failed[shard] <= offload.max_retries
                log.warning(
                    "offload: round %d shard %d attempt %d on %s failed: %s%s",
                    round_index + 1,
                    shard,
                    attempt,
                    outcome.worker or "?",
                    error,
                    "; retrying" if retry else "; giving up on its clients this round",
                )
                if retry:
                    launch(shard, sent.header["state"])
                else:
                    done.lost.append(shard)
        done.wait_seconds = time.perf_counter() - start
        done.lost.sort()
        return done

    def run_round(self, state: FedState) -> tuple[FedState, dict]:
        sim, offload = self.simulator, self.config.offload
        algorithm, mode = sim.algorithm, offload.quantize
        round_index = int(state.round)
        tick = time.perf_counter()
        inputs = self._call("begin_round", sim.begin_round, state)
        stripped = self._call("strip", lambda c: fmt.strip_params(algorithm, c), inputs.clients)
        host = jax.device_get(inputs)
        stripped = jax.device_get(stripped)
        ids = [int(i) for i in np.asarray(host.ids)[: sim.num_participants]]

        # The broadcast once per task, the shard's states (unless kept), env params and keys;
        # per client where clients differ: their own starting params (aggregation periods,
        # staleness), stale reference params, and their number of local updates.
        shapes = fmt.shard_shapes(sim, self._size(0))
        reference = host.reference
        stacked = shapes.stacked_reference
        shared, sent_error = {}, fmt.quantize.NO_ERROR
        if not stacked:
            shared, sent_error = fmt.encode_group(
                "global", reference.global_params, mode, True, False
            )
        peers, peer_error = fmt.encode_group("peers", reference.peer_params, mode, True, True)
        shared.update(peers)
        shared.update(_plain("peer_weights", reference.peer_weights))
        sent_error = sent_error + peer_error
        starts = None
        if shapes.start_params is not None:
            starts = jax.device_get(jax.vmap(algorithm.get_params)(inputs.clients))
        round_dir = self.work_dir / f"round-{round_index:06d}"
        self._clean_old_rounds(round_dir)

        def arrays(shard: int, source: str) -> dict[str, np.ndarray]:
            rows = self.slices[shard]
            data = dict(shared)
            if source == "task":
                data.update(_plain("clients", _rows(stripped, rows)))
            data.update(_plain("env", _rows(host.env_params, rows)))
            data.update(_plain("keys", _rows(host.client_keys, rows)))
            if stacked:
                stale = _rows(reference.global_params, rows)
                data.update(fmt.encode_group("global", stale, mode, True, True)[0])
            if starts is not None:
                data.update(fmt.encode_group("start", _rows(starts, rows), mode, True, True)[0])
            if shapes.num_updates is not None:
                data.update(_plain("updates", _rows(host.num_updates, rows)))
            return data

        sync = not self.sticky or (round_index + 1) % offload.state_sync_rounds == 0

        def write(shard: int, source: str) -> tuple[dict, Path]:
            return self._write_task(
                round_dir, shard, round_index, ids, "train", source, arrays, sync
            )

        plan = {
            shard: "cache" if self.sticky and self._kept.get(shard) == round_index - 1 else "task"
            for shard in range(len(self.slices))
        }
        written = time.perf_counter()
        done = self._execute(round_index, plan, write)
        self.compile_seconds += done.worker_compile
        gathered = time.perf_counter()

        clients, metrics, received_error, bad = self._assemble(host, stripped, done.results)
        lost_clients = sum(self._size(s) for s in done.lost)
        if lost_clients == sim.num_participants:
            raise fmt.OffloadError(self._failure_message(round_index, done.lost, done.failures, 0))
        new_state, round_metrics = self._call(
            "aggregate", sim.aggregate, state, inputs, clients, metrics
        )
        participating = int(round_metrics["clients_participating"])
        valid = participating - int(round_metrics["clients_excluded"])
        if valid / participating < self.config.federation.min_participation:
            raise fmt.OffloadError(
                self._failure_message(round_index, done.lost, done.failures, valid)
            )
        for shard in range(len(self.slices)):
            if shard in done.results and self.sticky:
                self._kept[shard] = round_index
                self._revert[shard] = [
                    ids[self.slices[shard]][i] for i in np.flatnonzero(bad[self.slices[shard]])
                ]
                if sync:
                    self._synced[shard] = round_index + 1
            else:
                if shard in done.lost and self._kept.pop(shard, None) is not None:
                    self._log_stale(shard, done.failures.get(shard, "?"))
                self._revert.pop(shard, None)
        round_metrics = dict(round_metrics)
        round_metrics.update(
            {
                "offload/tasks": np.int32(len(self.slices)),
                "offload/attempts": np.int32(done.attempts),
                "offload/retries": np.int32(done.attempts - len(self.slices)),
                "offload/tasks_failed": np.int32(len(done.lost)),
                "offload/clients_lost": np.int32(lost_clients),
                "offload/clients_rejected": np.int32(bad.sum()),
                "offload/state_synced": np.int32(sync),
                "offload/state_resends": np.int32(done.state_resends),
                "offload/bytes_sent": np.int64(done.bytes_sent),
                "offload/bytes_received": np.int64(done.bytes_received),
                "offload/bytes_saved": np.int64(done.bytes_saved),
                "offload/quantize_error_sent": np.float32(sent_error.relative_error),
                "offload/quantize_error_received": np.float32(received_error),
                "offload/seconds_write": np.float32(written - tick),
                "offload/seconds_wait": np.float32(done.wait_seconds),
                "offload/seconds_read": np.float32(gathered - written - done.wait_seconds),
            }
        )
        extra = getattr(self.executor, "metrics", None)
        if extra is not None:
            round_metrics.update(extra())
        return new_state, round_metrics

    def _assemble(self, host, stripped, results):
        """The participants' new states and metrics, padded to the simulator's client axis.

        A lost shard's clients, and any client whose returned values are not
        finite, get NaN params, which `Simulator.aggregate` masks (they keep
        their old state and stay out of the average). Clients whose worker kept
        their states (sticky clients) get this side's last synced copy with
        their new params.

        Returns:
            The clients, the metrics, the largest quantisation error the
            workers reported, and `[K]` True for each rejected client.
        """
        sim = self.simulator
        algorithm = sim.algorithm
        trees, metric_parts = [], []
        received_error = 0.0
        bad = np.zeros(sim.num_participants, bool)
        for shard, rows in enumerate(self.slices):
            shapes = fmt.shard_shapes(sim, self._size(shard))
            states = _rows(stripped, rows)
            if shard in results:
                arrays, report = results[shard]
                params = fmt.decode_group("params", arrays, shapes.new_params, rows=True)
                if any(name.startswith("clients/") for name in arrays):
                    states = fmt.decode_group("clients", arrays, shapes.new_clients, rows=False)
                part = {name: arrays[f"metrics/{name}"] for name in shapes.metrics}
                bad[rows] = fmt.nonfinite_rows(arrays, self._size(shard))
                try:  # the worker's own account (it alone saw the unquantised params)
                    reported = float(report["quantize_error"]["relative"])
                except (KeyError, TypeError, ValueError):
                    reported = 0.0
                if math.isfinite(reported):
                    received_error = max(received_error, reported)
                if bad[rows].any():
                    rejected = np.flatnonzero(bad[rows]) + rows.start
                    log.warning(
                        "offload: shard %d returned non-finite values for client(s) %s; "
                        "they are left out of this round",
                        shard,
                        ", ".join(str(i) for i in np.asarray(host.ids)[rejected]),
                    )
                    params = jax.tree.map(
                        lambda p, b=bad[rows]: np.where(
                            b.reshape((-1,) + (1,) * (p.ndim - 1)), np.nan, p
                        ).astype(p.dtype),
                        params,
                    )
            else:
                params = jax.tree.map(
                    lambda s: np.full(s.shape, np.nan, s.dtype), shapes.new_params
                )
                part = {name: _missing(s.shape, s.dtype) for name, s in shapes.metrics.items()}
            trees.append(jax.device_get(fmt.with_params_jit(algorithm, states, params, True)))
            metric_parts.append(part)
        padded = np.asarray(host.ids).shape[0] - sim.num_participants
        if padded:
            # Padding slots are masked by `aggregate`; give them their broadcast state.
            trees.append(_rows(host.clients, slice(sim.num_participants, None)))
            first = metric_parts[0]
            metric_parts.append(
                {
                    name: _missing(v.shape[:1] + (padded,) + v.shape[2:], v.dtype)
                    for name, v in first.items()
                }
            )
        clients = _concat(trees)
        clients = jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), clients, host.clients)
        metrics = {
            name: np.concatenate([part[name] for part in metric_parts], axis=1)
            for name in metric_parts[0]
        }
        return clients, metrics, received_error, bad

    def _failure_message(self, round_index, lost, failures, valid) -> str:
        reasons = "; ".join(f"shard {s}: {failures.get(s, '?')}" for s in lost[:4])
        return (
            f"offload: round {round_index + 1} failed: {valid} of "
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
        for old in self.work_dir.glob("round-*"):
            if old != keep:
                target = old.with_name(".deleting-" + old.name)
                old.rename(target)
                trash.append(target)
        trash.extend(self.work_dir.glob(".deleting-*"))

        def delete(paths=tuple(set(trash))):
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

        self._cleaner = threading.Thread(target=delete, name="offload-cleaner", daemon=True)
        self._cleaner.start()
