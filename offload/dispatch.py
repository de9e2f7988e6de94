"""One set of shard tasks run to valid results: write, submit, check, retry.

A failed attempt is retried as soon as it is known (up to `offload.max_retries`
times), without waiting for the other shards; a worker that no longer keeps a
shard's states (`cache miss`) is sent them at once, which is not a failure.
Every result is checked by `offload.task.read_result` before it counts.

Verification by replication (`offload.golem.verify_fraction`): a valid result
of a shard drawn for it is held while the same task runs on a second worker
(`Job.avoid` names the ones that ran it). Two results that agree (`agree`:
bit-identical, or within `offload.golem.verify_tolerance`) settle the shard;
two that differ bring a third run, and the majority's result counts while
each worker outvoted is rejected (the `golem` executor excludes it). With no
majority (three different results, or no third worker), every result of the
attempt is discarded, nobody is excluded, and the attempt counts as failed
(retried as any failure). Where no second worker exists, the result counts
unverified (`Execution.unverified`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from offload.archive import Spec, TaskError, list_files, write_json
from offload.executors import Executor, Job, Outcome
from offload.shapes import ShardShapes, max_result_bytes, result_spec, spec_bytes, task_spec
from offload.task import CACHE_MISS, TASK_FILE, Report, TaskHeader, read_result

log = logging.getLogger("jfedrl.offload")


def folder_bytes(path: Path) -> int:
    """Bytes under `path` (0 if it is missing or unreadable)."""
    try:
        return sum(list_files(path).values())
    except (TaskError, OSError):
        return 0


@dataclass
class Execution:
    """The outcome of running a set of shards to valid results (or giving up)."""

    results: dict[int, tuple[dict, Report]] = field(default_factory=dict)
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
    verify_runs: int = 0
    """Extra runs of tasks for verification (the cost of `verify_fraction`)."""
    verify_seconds: float = 0.0
    """Worker seconds those runs took."""
    disagreements: int = 0
    unverified: int = 0


@dataclass(frozen=True)
class _Attempt:
    """What was sent for one job, to check its result against."""

    header: TaskHeader
    spec: Spec
    task_dir: Path
    replica: bool = False


@dataclass
class Dispatch:
    """The bookkeeping of one set of shards: tasks written, attempts in flight.

    Attributes:
        write: `(shard, state source) -> (header, task folder)`, writing the inputs.
        shapes: `shard -> ShardShapes`.
        on_cache_miss: told of a shard whose worker no longer keeps its states.
        fetch: the tasks only bring states home (a cache miss loses the shard).
    """

    executor: Executor
    write: Callable[[int, str], tuple[TaskHeader, Path]]
    shapes: Callable[[int], ShardShapes]
    on_cache_miss: Callable[[int], None]
    mode: str
    max_retries: int
    round_index: int
    fetch: bool = False
    verify: Callable[[int], bool] = lambda shard: False
    """Whether this round's result of `shard` is verified on a second worker."""
    tolerance: float = 0.0
    done: Execution = field(default_factory=Execution)
    written: dict[tuple[int, str], tuple[TaskHeader, Path]] = field(default_factory=dict)
    launches: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    in_flight: dict[tuple[int, int], _Attempt] = field(default_factory=dict)
    checks: dict[int, list[tuple[Outcome, dict, Report]]] = field(default_factory=dict)
    """Shard -> the valid results of its attempt under verification."""
    replica_failures: dict[int, int] = field(default_factory=dict)

    def run(self, plan: dict[int, str], threads: ThreadPoolExecutor) -> Execution:
        """Runs the planned shards (shard -> state source) until each has a valid result."""
        # The first tasks are written in parallel (orbax does its I/O off the GIL).
        list(threads.map(lambda item: self._task_for(*item), plan.items()))
        for shard, source in plan.items():
            self._launch(shard, source)
        start = time.perf_counter()
        while self.in_flight:
            for outcome in self.executor.wait(1.0):
                self._receive(outcome)
        self.done.wait_seconds = time.perf_counter() - start
        self.done.lost.sort()
        return self.done

    def _task_for(self, shard: int, source: str) -> tuple[TaskHeader, Path]:
        if (shard, source) not in self.written:
            self.written[(shard, source)] = self.write(shard, source)
        return self.written[(shard, source)]

    def _launch(
        self, shard: int, source: str, again: int | None = None, avoid: frozenset[str] = frozenset()
    ) -> None:
        """Submits the shard's next attempt (or attempt `again`, resent with its states);
        with `avoid`, a verification run on a worker outside it.
        """
        done = self.done
        if avoid:
            attempt = self.launches.get(shard, 0)
            self.launches[shard] = attempt + 1
            done.verify_runs += 1
        elif again is None:
            attempt = self.launches.get(shard, 0)
            self.launches[shard] = attempt + 1
            done.attempts += 1
        else:
            attempt = again
            done.state_resends += 1
        header, task_dir = self._task_for(shard, source)
        header = dataclasses.replace(header, attempt=attempt)
        write_json(task_dir / TASK_FILE, header.to_json())
        output = task_dir.parent / f"result-{attempt}"
        shutil.rmtree(output, ignore_errors=True)
        shapes = self.shapes(shard)
        spec = result_spec(shapes, self.mode, header.op, header.return_state)
        self.in_flight[(shard, attempt)] = _Attempt(header, spec, task_dir, bool(avoid))
        done.bytes_sent += folder_bytes(task_dir)
        if header.op == "train":
            done.bytes_saved += spec_bytes(task_spec(shapes, "none", "train", source)) - spec_bytes(
                task_spec(shapes, self.mode, "train", source)
            )
        self.executor.submit(
            Job(shard, attempt, task_dir, output, max_result_bytes(spec), avoid=avoid)
        )

    def _receive(self, outcome: Outcome) -> None:
        """Checks one finished attempt: keeps a valid result, else resends or retries."""
        done = self.done
        shard, attempt = outcome.job.shard, outcome.job.attempt
        sent = self.in_flight.pop((shard, attempt))
        done.worker_compile = max(done.worker_compile, outcome.compile_seconds)
        done.bytes_received += folder_bytes(outcome.job.output_dir)
        if sent.replica:
            done.verify_seconds += outcome.seconds
        error = outcome.error or "failed"
        if outcome.ok:
            try:
                result = read_result(outcome.job.output_dir, sent.header, sent.spec)
            except TaskError as bad:
                error = f"bad result: {bad}"
            else:
                self.executor.verdict(outcome, None)
                if sent.header.op == "train" and (sent.replica or self.verify(shard)):
                    self._check(shard, sent, (outcome, *result))
                    return
                done.results[shard] = result
                if sent.header.op == "train":
                    shapes = self.shapes(shard)
                    done.bytes_saved += spec_bytes(
                        result_spec(shapes, "none", "train", True)
                    ) - spec_bytes(result_spec(shapes, self.mode, "train", True))
                return
        if error.startswith(CACHE_MISS):
            self.executor.verdict(outcome, None)  # not the worker's fault
            self.on_cache_miss(shard)
            if self.fetch:
                done.failures[shard] = error
                done.lost.append(shard)
            else:
                self._launch(shard, "task", again=attempt)
            return
        self.executor.verdict(outcome, error)
        if sent.replica:
            self._replica_failed(shard, sent, outcome, error)
            return
        self.failed[shard] = self.failed.get(shard, 0) + 1
        done.failures[shard] = error
        retry = self.failed[shard] <= self.max_retries
        log.warning(
            "offload: %s shard %d attempt %d on %s failed: %s%s",
            f"state fetch for the checkpoint of round {self.round_index}"
            if self.fetch
            else f"round {self.round_index + 1}",
            shard,
            attempt,
            outcome.worker or "?",
            error,
            "; retrying" if retry else "; giving up on its clients this round",
        )
        if retry:
            self._launch(shard, sent.header.state)
        else:
            done.lost.append(shard)

    # -- verification by replication

    def _check(self, shard: int, sent: _Attempt, result: tuple[Outcome, dict, Report]) -> None:
        """One more valid result of a verified attempt: settle it or run it once more."""
        results = self.checks.setdefault(shard, [])
        results.append(result)
        groups: list[list[tuple[Outcome, dict, Report]]] = []
        for item in results:
            group = next((g for g in groups if agree(g[0][1], item[1], self.tolerance)), None)
            if group is None:
                groups.append([item])
            else:
                group.append(item)
        majority = max(groups, key=len)
        if len(results) >= 2 and len(majority) >= 2:
            self._settle(shard, majority, [i for g in groups if g is not majority for i in g])
        elif len(results) == 1 or len(results) == 2:
            if len(results) == 2:
                self.done.disagreements += 1
                log.warning(
                    "offload: round %d shard %d: the results of %s and %s differ; "
                    "a third worker decides",
                    self.round_index + 1,
                    shard,
                    results[0][0].worker or "?",
                    results[1][0].worker or "?",
                )
            avoid = frozenset(item[0].worker for item in results if item[0].worker)
            self._launch(shard, sent.header.state, avoid=avoid)
        else:
            self._no_majority(shard, sent, "three different results")

    def _settle(self, shard: int, majority: list, outvoted: list) -> None:
        outcome, arrays, report = majority[0]
        self.done.results[shard] = (arrays, report)
        self.checks.pop(shard, None)
        agreed = ", ".join(item[0].worker or "?" for item in majority)
        for item in outvoted:
            reason = f"its result for shard {shard} differs from those of {agreed}"
            log.warning(
                "offload: round %d shard %d: %s outvoted and its result discarded: %s",
                self.round_index + 1,
                shard,
                item[0].worker or "?",
                reason,
            )
            self.executor.verdict(item[0], f"outvoted: {reason}")

    def _replica_failed(self, shard: int, sent: _Attempt, outcome: Outcome, error: str) -> None:
        """A verification run failed: another worker is asked (each failing one is excluded
        by the executor); with none left, a single result counts unverified.
        """
        results = self.checks.get(shard, [])
        self.replica_failures[shard] = self.replica_failures.get(shard, 0) + 1
        if self.replica_failures[shard] > self.max_retries + 1:
            error = f"{NO_OTHER_WORKER}: {self.max_retries + 1} verification runs failed ({error})"
        if error.startswith(NO_OTHER_WORKER) and len(results) == 1:
            outcome, arrays, report = results[0]
            self.done.results[shard] = (arrays, report)
            self.done.unverified += 1
            self.checks.pop(shard, None)
            log.warning(
                "offload: round %d shard %d: its result from %s counts unverified (%s)",
                self.round_index + 1,
                shard,
                outcome.worker or "?",
                error,
            )
        elif error.startswith(NO_OTHER_WORKER):
            self._no_majority(shard, sent, error)
        else:  # the second worker failed as any worker can: ask yet another one
            workers = [item[0].worker for item in results] + [outcome.worker]
            self._launch(shard, sent.header.state, avoid=frozenset(filter(None, workers)))

    def _no_majority(self, shard: int, sent: _Attempt, why: str) -> None:
        """Discards every result of the attempt (nobody outvoted) and fails the attempt."""
        self.checks.pop(shard, None)
        error = f"verification found no majority ({why}); every result discarded"
        self.failed[shard] = self.failed.get(shard, 0) + 1
        self.done.failures[shard] = error
        retry = self.failed[shard] <= self.max_retries
        log.warning(
            "offload: round %d shard %d: %s%s",
            self.round_index + 1,
            shard,
            error,
            "; retrying" if retry else "; giving up on its clients this round",
        )
        if retry:
            self._launch(shard, sent.header.state)
        else:
            self.done.lost.append(shard)


#: How an executor fails a verification run that found no worker outside `Job.avoid`.
NO_OTHER_WORKER = "no second worker"


def agree(a: dict, b: dict, tolerance: float = 0.0) -> bool:
    """Whether two results' arrays match: bit-identical, or within `tolerance` as
    |a - b| <= tolerance * (1 + |b|) elementwise (NaN matches NaN).
    """
    import numpy as np

    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if tolerance == 0 or not np.issubdtype(x.dtype, np.floating):
            if not np.array_equal(x, y, equal_nan=np.issubdtype(x.dtype, np.inexact)):
                return False
        elif not np.allclose(x, y, rtol=tolerance, atol=tolerance, equal_nan=True):
            return False
    return True
