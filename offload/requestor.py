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
        for name in ("budget", "task_timeout", "offer_timeout", "min_mem_gib", "min_storage_gib"):
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


class OffloadRunner:
    """A `BlockRunner` (see `jfedrl.runner`) that ships local training to an executor."""

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

    def close(self) -> None:
        self.executor.close()
        self._threads.shutdown()
        if self._cleaner is not None:
            self._cleaner.join()

    # -- one round

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

        # Tasks: the broadcast once per task, the shard's states, env params and keys.
        reference = host.reference
        shared, sent_error = fmt.encode_group("global", reference.global_params, mode, True, False)
        peers, peer_error = fmt.encode_group("peers", reference.peer_params, mode, True, True)
        shared.update(peers)
        shared.update(_plain("peer_weights", reference.peer_weights))
        sent_error = sent_error + peer_error
        round_dir = self.work_dir / f"round-{round_index:06d}"
        self._clean_old_rounds(round_dir)

        def write_task(shard: int) -> dict[str, Any]:
            rows = self.slices[shard]
            task_dir = round_dir / f"shard-{shard:03d}" / "task"
            shutil.rmtree(task_dir, ignore_errors=True)
            task_dir.mkdir(parents=True)
            arrays = dict(shared)
            arrays.update(_plain("clients", _rows(stripped, rows)))
            arrays.update(_plain("env", _rows(host.env_params, rows)))
            arrays.update(_plain("keys", _rows(host.client_keys, rows)))
            fmt.save_arrays(task_dir / fmt.INPUTS_DIR, arrays)
            return {
                "format": fmt.FORMAT,
                "kind": "jfedrl-offload-task",
                "run_id": self.run_id,
                "round": round_index,
                "shard": shard,
                "num_shards": len(self.slices),
                "attempt": 0,
                "client_ids": ids[rows],
                "seed": self.config.seed,
                "quantize": mode,
                "config": self._task_config,
                "versions": {"jfedrl": __version__, "jax": jax.__version__},
                "inputs": fmt.digest_tree(task_dir, exclude=(fmt.TASK_FILE,)),
            }

        # Orbax does its I/O off the GIL: the shards are written (and read) in parallel.
        tasks = list(self._threads.map(write_task, range(len(self.slices))))
        specs = []
        for rows in self.slices:
            shapes = fmt.shard_shapes(sim, rows.stop - rows.start)
            specs.append((shapes, fmt.result_spec(shapes, mode)))
        written = time.perf_counter()

        # Attempts: run, validate, retry the failures.
        results: dict[int, tuple[dict, dict]] = {}
        failures: dict[int, str] = {}
        counters = {"attempts": 0, "bytes_sent": 0, "bytes_received": 0, "bytes_saved": 0}
        task_bytes_saved = fmt.spec_bytes(fmt.task_spec(specs[0][0], "none")) - fmt.spec_bytes(
            fmt.task_spec(specs[0][0], mode)
        )
        wait_seconds = worker_compile = 0.0
        pending = list(range(len(self.slices)))
        for attempt in range(offload.max_retries + 1):
            if not pending:
                break
            jobs = []
            for shard in pending:
                header = dict(tasks[shard], attempt=attempt)
                shard_dir = round_dir / f"shard-{shard:03d}"
                fmt.write_json(shard_dir / "task" / fmt.TASK_FILE, header)
                output = shard_dir / f"result-{attempt}"
                shutil.rmtree(output, ignore_errors=True)
                cap = fmt.max_result_bytes(specs[shard][1])
                jobs.append(Job(shard, attempt, shard_dir / "task", output, cap))
                counters["bytes_sent"] += _folder_bytes(shard_dir / "task")
                counters["bytes_saved"] += task_bytes_saved
            counters["attempts"] += len(jobs)
            start = time.perf_counter()
            outcomes = self.executor.run(jobs)
            wait_seconds += time.perf_counter() - start

            def validate(outcome, attempt=attempt):
                if not outcome.ok:
                    return outcome.error or "failed"
                shard = outcome.job.shard
                header = dict(tasks[shard], attempt=attempt)
                try:
                    return fmt.read_result(outcome.job.output_dir, header, specs[shard][1])
                except fmt.TaskError as bad:
                    return f"bad result: {bad}"

            pending = []
            for outcome, checked in zip(
                outcomes, self._threads.map(validate, outcomes), strict=True
            ):
                shard = outcome.job.shard
                worker_compile = max(worker_compile, outcome.compile_seconds)
                counters["bytes_received"] += _folder_bytes(outcome.job.output_dir)
                if not isinstance(checked, str):
                    results[shard] = checked
                    shapes, spec = specs[shard]
                    counters["bytes_saved"] += fmt.spec_bytes(
                        fmt.result_spec(shapes, "none")
                    ) - fmt.spec_bytes(spec)
                    continue
                error = checked
                if outcome.ok:
                    self.executor.blame(outcome, error)
                failures[shard] = error
                pending.append(shard)
                retry = attempt < offload.max_retries
                log.warning(
                    "offload: round %d shard %d attempt %d on %s failed: %s%s",
                    round_index + 1,
                    shard,
                    attempt,
                    outcome.worker or "?",
                    error,
                    "; retrying" if retry else "; giving up on its clients this round",
                )
        lost = sorted(pending)
        self.compile_seconds += worker_compile
        gathered = time.perf_counter()

        clients, metrics, received_error = self._assemble(host, stripped, specs, results, lost)
        lost_clients = sum(self.slices[s].stop - self.slices[s].start for s in lost)
        if lost_clients == sim.num_participants:
            raise fmt.OffloadError(self._failure_message(round_index, lost, failures, 0))
        new_state, round_metrics = self._call(
            "aggregate", sim.aggregate, state, inputs, clients, metrics
        )
        participating = int(round_metrics["clients_participating"])
        valid = participating - int(round_metrics["clients_excluded"])
        if valid / participating < self.config.federation.min_participation:
            raise fmt.OffloadError(self._failure_message(round_index, lost, failures, valid))
        round_metrics = dict(round_metrics)
        round_metrics.update(
            {
                "offload/tasks": np.int32(len(self.slices)),
                "offload/attempts": np.int32(counters["attempts"]),
                "offload/retries": np.int32(counters["attempts"] - len(self.slices)),
                "offload/tasks_failed": np.int32(len(lost)),
                "offload/clients_lost": np.int32(lost_clients),
                "offload/bytes_sent": np.int64(counters["bytes_sent"]),
                "offload/bytes_received": np.int64(counters["bytes_received"]),
                "offload/bytes_saved": np.int64(counters["bytes_saved"]),
                "offload/quantize_error_sent": np.float32(sent_error.relative_error),
                "offload/quantize_error_received": np.float32(received_error),
                "offload/seconds_write": np.float32(written - tick),
                "offload/seconds_wait": np.float32(wait_seconds),
                "offload/seconds_read": np.float32(gathered - written - wait_seconds),
            }
        )
        return new_state, round_metrics

    def _assemble(self, host, stripped, specs, results, lost):
        """The K participants' new states and metrics (lost shards: NaN params), padded to P."""
        sim = self.simulator
        algorithm = sim.algorithm
        trees, metric_parts = [], []
        received_error = 0.0
        for shard, rows in enumerate(self.slices):
            shapes, _ = specs[shard]
            if shard in results:
                arrays, report = results[shard]
                params = fmt.decode_group("params", arrays, shapes.new_params, rows=True)
                states = fmt.decode_group("clients", arrays, shapes.new_clients, rows=False)
                part = {name: arrays[f"metrics/{name}"] for name in shapes.metrics}
                try:  # the worker's own account (it alone saw the unquantised params)
                    reported = float(report["quantize_error"]["relative"])
                except (KeyError, TypeError, ValueError):
                    reported = 0.0
                if math.isfinite(reported):
                    received_error = max(received_error, reported)
            else:
                params = jax.tree.map(
                    lambda s: np.full(s.shape, np.nan, s.dtype), shapes.new_params
                )
                states = jax.device_get(fmt.strip_params_jit(algorithm, _rows(host.before, rows)))
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
        return clients, metrics, received_error

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
