"""The pool of long-lived workers behind the `local` and `ray` executors.

Shard `s` queues on slot `s % num_workers` (a sticky worker keeps its clients); a worker
that dies or misses its deadline fails its attempt and is replaced. Only the transport differs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from offload.executors import Job, Outcome

log = logging.getLogger("jfedrl.offload")


@dataclass
class Slot:
    """One worker of a pool and its jobs (`ready`: it can take one; a subclass adds handles)."""

    index: int
    _: KW_ONLY
    ready: bool = False
    warm: bool = False
    """It has compiled a step already, so `task_timeout` holds it, not `compile_timeout`."""
    phase: str = ""
    """What it is doing, named in a timeout's error (empty where the transport cannot tell)."""
    job: Job | None = None
    sent_at: float = 0.0
    deadline: float = 0.0
    compile_seconds: float = 0.0
    bytes_sent: int = 0
    generation: int = 0
    """How many workers held this index before (a fresh one replaces a dead one)."""
    pending: list[Job] = field(default_factory=list)


S = TypeVar("S", bound=Slot)


class SlotPool(Generic[S]):
    """Submit, dispatch, deadlines, restarts and `wait` for an executor's slots.

    A subclass fills `_slots` and implements the transport: `_spawn(index)` (a fresh slot),
    `_kill(slot)`, `_send(slot, job)` (sets `job`, `sent_at`, `deadline`), `_poll(busy,
    seconds)` (waits about that long for news and handles it, ending attempts with `_finish`),
    `_limit(slot)` (its timeout: `offload.` field name, seconds) and `_worker_name(slot)`.
    `_timeout_log` words a timeout's warning; with `_poll_when_idle` False, `wait` returns
    once no slot is busy (nothing could arrive).
    """

    _timeout_log = "offload: worker %d %s; restarting it"
    _poll_when_idle = True

    def __init__(self, num_workers: int, task_timeout: float, compile_timeout: float):
        self.num_workers = num_workers
        self.task_timeout = task_timeout
        self.compile_timeout = compile_timeout
        self.restarts = 0
        self._done: list[Outcome] = []
        self._slots: list[S] = []

    def _busy(self, slot: S) -> bool:
        return slot.job is not None or not slot.ready

    def _finish(self, slot: S, ok: bool, error: str = "", **measures: Any) -> None:
        """Reports the end of the slot's job (`measures`: more `Outcome` fields)."""
        from offload.executors import Outcome  # that module imports this one

        job, slot.job = slot.job, None
        assert job is not None
        seconds, worker = time.monotonic() - slot.sent_at, self._worker_name(slot)
        measures.update(compile_seconds=slot.compile_seconds, bytes_sent=slot.bytes_sent)
        self._done.append(Outcome(job, ok, error, worker=worker, seconds=seconds, **measures))

    def _restart(self, slot: S) -> None:
        """Replaces the slot's worker by a fresh one, which inherits its queued jobs."""
        self._kill(slot)
        self.restarts += 1
        fresh = self._spawn(slot.index)
        fresh.generation, fresh.pending = slot.generation + 1, slot.pending
        self._slots[slot.index] = fresh

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if self._busy(slot) and now > slot.deadline:
                limit, seconds = self._limit(slot)
                where = f" while {slot.phase}" if slot.phase else ""
                reason = f"timed out{where} (offload.{limit}={seconds:g}s)"
                if slot.job is not None:
                    self._finish(slot, False, reason)
                log.warning(self._timeout_log, slot.index, reason)
                self._restart(slot)

    def _dispatch(self) -> None:
        for slot in self._slots:
            if slot.ready and slot.job is None and slot.pending:
                self._send(slot, slot.pending.pop(0))

    def submit(self, job: Job) -> None:
        """Queues `job` on its shard's slot and starts it if that worker is idle."""
        self._slots[job.shard % self.num_workers].pending.append(job)
        self._dispatch()

    def wait(self, timeout: float) -> list[Outcome]:
        """The attempts that ended since the last call (waits up to `timeout` for one)."""
        end = time.monotonic() + timeout
        while not self._done:
            now = time.monotonic()
            busy = [slot for slot in self._slots if self._busy(slot)]
            if now >= end or not (busy or self._poll_when_idle):
                break
            self._poll(busy, min([slot.deadline for slot in busy] + [end]) - now)
            self._check_deadlines()
            self._dispatch()
        done, self._done = self._done, []
        return done

    def verdict(self, outcome: Outcome, error: str | None) -> None:
        """A pool's worker is this machine's or the cluster's: a bad result excludes nobody."""
