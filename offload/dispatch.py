"""One set of shard tasks run to valid results: write, submit, check, retry.

A failed attempt is retried as soon as it is known (up to `offload.max_retries`
times), without waiting for the other shards; a worker that no longer keeps a
shard's states (`cache miss`) is sent them at once, which is not a failure.
Every result is checked by `offload.task.read_result` before it counts.
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


@dataclass(frozen=True)
class _Attempt:
    """What was sent for one job, to check its result against."""

    header: TaskHeader
    spec: Spec
    task_dir: Path


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
    done: Execution = field(default_factory=Execution)
    written: dict[tuple[int, str], tuple[TaskHeader, Path]] = field(default_factory=dict)
    launches: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    in_flight: dict[tuple[int, int], _Attempt] = field(default_factory=dict)

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

    def _launch(self, shard: int, source: str, again: int | None = None) -> None:
        """Submits the shard's next attempt (or attempt `again`, resent with its states)."""
        done = self.done
        if again is None:
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
        self.in_flight[(shard, attempt)] = _Attempt(header, spec, task_dir)
        done.bytes_sent += folder_bytes(task_dir)
        if header.op == "train":
            done.bytes_saved += spec_bytes(task_spec(shapes, "none", "train", source)) - spec_bytes(
                task_spec(shapes, self.mode, "train", source)
            )
        self.executor.submit(Job(shard, attempt, task_dir, output, max_result_bytes(spec)))

    def _receive(self, outcome: Outcome) -> None:
        """Checks one finished attempt: keeps a valid result, else resends or retries."""
        done = self.done
        shard, attempt = outcome.job.shard, outcome.job.attempt
        sent = self.in_flight.pop((shard, attempt))
        done.worker_compile = max(done.worker_compile, outcome.compile_seconds)
        done.bytes_received += folder_bytes(outcome.job.output_dir)
        error = outcome.error or "failed"
        if outcome.ok:
            try:
                done.results[shard] = read_result(outcome.job.output_dir, sent.header, sent.spec)
            except TaskError as bad:
                error = f"bad result: {bad}"
            else:
                self.executor.verdict(outcome, None)
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
