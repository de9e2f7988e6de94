"""The executor interface and the `local` executor (worker processes here).

An executor runs job attempts and reports each one as soon as it ends; the
requestor validates the result folder, tells the executor its verdict (so a
Golem provider that returned a bad result is dropped at once) and resubmits
failures straight away, without waiting for the other shards of the round.
Two implementations: `LocalExecutor` (this module: long-lived
`python -m offload.worker --serve` processes) and `GolemExecutor`
(`offload.golem`: yapapi providers). Jobs of one shard always go to the same
worker (process or provider activity) while it lives, so a worker can keep
its clients' state between rounds (sticky clients, docs/offload.md).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from offload.slots import Slot, SlotPool

log = logging.getLogger("jfedrl.offload")
#: XLA's own log lines (e.g. compilation-cache notices) in a worker's stderr.
_XLA_LOG = re.compile(r"^[EWIF]\d{4} ")


@dataclass(frozen=True)
class Job:
    """One attempt of one task."""

    shard: int
    attempt: int
    task_dir: Path
    output_dir: Path
    max_result_bytes: int
    avoid: frozenset[str] = frozenset()
    """Workers this attempt must not run on (a verification run: those that ran it already);
    only the `golem` executor, whose workers are untrusted providers, uses it."""


@dataclass
class Outcome:
    """What happened to a job (the result folder is validated by the requestor)."""

    job: Job
    ok: bool
    error: str = ""
    worker: str = ""
    """Who ran it: a local worker's pid or a Golem provider id."""
    seconds: float = 0.0
    compile_seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0


class Executor(Protocol):
    """Runs job attempts concurrently; never raises for a failed job."""

    def submit(self, job: Job) -> None:
        """Starts (or queues) one attempt; jobs of one shard go to that shard's worker."""

    def wait(self, timeout: float) -> list[Outcome]:
        """The attempts that ended since the last call (waits up to `timeout` for one)."""

    def verdict(self, outcome: Outcome, error: str | None) -> None:
        """The requestor's check of a result: None if valid, else why it was rejected."""

    def close(self) -> None: ...


# ---------------------------------------------------------------- local


@dataclass
class _Process(Slot):
    """One `--serve` worker process and what it is doing."""

    popen: subprocess.Popen
    log_path: Path


class LocalExecutor(SlotPool[_Process]):
    """Worker processes on this machine, alive for the whole run.

    Each process imports JAX once and keeps its compiled local-training step
    (and, with sticky clients, its shard's client states), so a warm round
    costs the training itself plus moving the params. Shard `s` always runs on
    process `s % num_workers`. A process that crashes or hangs is killed and
    restarted; its job counts as failed.

    Timeouts, by phase: starting (importing JAX) and a first compilation get
    `compile_timeout`; restoring a task on a warm worker, and training and
    writing the result, get `task_timeout`. A timeout names the phase.
    """

    _timeout_log = "offload: local worker %d %s; restarting it"

    def __init__(
        self,
        num_workers: int,
        work_dir: Path,
        task_timeout: float,
        compile_timeout: float,
        env: dict[str, str] | None = None,
    ):
        super().__init__(num_workers, task_timeout, compile_timeout)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self._events: queue.Queue = queue.Queue()
        self._slots = [self._spawn(index) for index in range(num_workers)]

    # -- processes

    def _spawn(self, index: int) -> _Process:
        log_path = self.work_dir / f"worker-{index}.log"
        stderr = open(log_path, "ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", "offload.worker", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=self.env,
            cwd=str(self.work_dir),
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C in the terminal stops the requestor, not the workers
        )
        stderr.close()
        deadline = time.monotonic() + self.compile_timeout
        process = _Process(index, popen, log_path, phase="starting", deadline=deadline)
        threading.Thread(
            target=self._read, args=(process,), name=f"offload-worker-{index}", daemon=True
        ).start()
        return process

    def _read(self, process: _Process) -> None:
        for line in process.popen.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._events.put((process, message))
        self._events.put((process, None))

    def _kill(self, process: _Process) -> None:
        if process.popen.poll() is None:
            try:
                os.killpg(process.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.popen.kill()
        try:
            process.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (process.popen.stdin, process.popen.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _stderr_tail(self, process: _Process, lines: int = 3) -> str:
        try:
            text = process.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        useful = [line for line in text if not _XLA_LOG.match(line)][-lines:]
        return " | ".join(useful)

    def _limit(self, process: _Process) -> tuple[str, float]:
        """The timeout of the process's phase (config field name, seconds)."""
        phase = process.phase
        slow = phase == "compiling" or (phase in ("starting", "restoring") and not process.warm)
        if slow:
            return "compile_timeout", self.compile_timeout
        return "task_timeout", self.task_timeout

    def _enter(self, process: _Process, phase: str) -> None:
        process.phase = phase
        process.deadline = time.monotonic() + self._limit(process)[1]

    def _send(self, process: _Process, job: Job) -> None:
        process.job = job
        process.sent_at = time.monotonic()
        process.compile_seconds = 0.0
        self._enter(process, "restoring")
        request = {
            "input": str(job.task_dir.absolute()),
            "output": str(job.output_dir.absolute()),
            # Fault injection follows the requestor's environment (tests), see offload.faults.
            "fault": os.environ.get("JFEDRL_FAULT", ""),
        }
        try:
            process.popen.stdin.write(json.dumps(request) + "\n")
            process.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader thread reports the exit

    def _worker_name(self, process: _Process) -> str:
        return f"local-{process.index}/pid-{process.popen.pid}"

    def _poll(self, busy: list[_Process], seconds: float) -> None:
        try:
            process, message = self._events.get(timeout=max(0.01, min(seconds, 1.0)))
        except queue.Empty:
            return
        if process is self._slots[process.index]:
            self._handle(process, message)

    def _handle(self, process: _Process, message: dict | None) -> None:
        if message is None:  # the worker exited
            code = process.popen.wait()
            reason = f"worker exited with code {code} while {process.phase}"
            tail = self._stderr_tail(process)
            if process.job is not None:
                self._finish(process, False, reason + (f" ({tail})" if tail else ""))
            log.warning("offload: local %s; restarting it", reason)
            self._restart(process)
            return
        event = message.get("event")
        if event == "ready":
            process.ready = True
            process.phase = "idle"
        elif process.job is None:
            return
        elif event == "compiling":
            self._enter(process, "compiling")
        elif event == "compiled":
            process.warm = True
            process.compile_seconds = float(message.get("seconds", 0.0))
            self._enter(process, "training")
        elif event == "done":
            self._finish(process, bool(message.get("ok")), str(message.get("error", "")))

    def wait_ready(self, timeout: float) -> float:
        """Blocks until every worker has imported JAX (for benchmarks); returns the seconds."""
        start = time.monotonic()
        while not all(p.ready for p in self._slots):
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                raise TimeoutError(f"local workers not ready after {timeout:g}s")
            try:
                process, message = self._events.get(timeout=remaining)
            except queue.Empty:
                continue
            if process is self._slots[process.index]:
                self._handle(process, message)
        return time.monotonic() - start

    def close(self) -> None:
        """Lets every worker exit on EOF, then kills what is left."""
        for process in self._slots:
            if process is None:
                continue
            try:
                process.popen.stdin.close()  # EOF: the worker exits by itself
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for process in self._slots:
            if process is None:
                continue
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._kill(process)
        self._slots = [None] * self.num_workers
