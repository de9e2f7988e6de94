"""The slot pool shared by the `local` and `ray` executors, on a fake transport.

The executors' own tests run real processes and actors; these check the
bookkeeping they share where those tests cannot reach cheaply: a shard's
queued jobs survive a restart, a timeout's error names the field (with and
without a phase), and `wait` does not block on an idle pool that has nothing
to wait for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from offload.executors import Job
from offload.slots import Slot, SlotPool


@dataclass
class _FakeSlot(Slot):
    sent: list[Job] | None = None


class _FakePool(SlotPool[_FakeSlot]):
    """Workers that answer only when told (`answer`): a job ends then or at its deadline."""

    _timeout_log = "offload: fake worker %d %s; restarting it"

    def __init__(self, num_workers: int, phase: str = "", idle_polls: bool = True):
        super().__init__(num_workers, task_timeout=0.5, compile_timeout=7.0)
        self.phase = phase
        self.deadline_in = 60.0
        self.killed: list[int] = []
        self.polls = 0
        self.answer = False
        self._poll_when_idle = idle_polls
        self._slots = [self._spawn(index) for index in range(num_workers)]

    def _spawn(self, index: int) -> _FakeSlot:
        return _FakeSlot(index, ready=True, phase=self.phase, sent=[])

    def _kill(self, slot: _FakeSlot) -> None:
        self.killed.append(slot.index)

    def _send(self, slot: _FakeSlot, job: Job) -> None:
        slot.job, slot.sent_at = job, time.monotonic()
        slot.deadline = slot.sent_at + self.deadline_in
        slot.sent.append(job)

    def _poll(self, busy: list[_FakeSlot], seconds: float) -> None:
        self.polls += 1
        for slot in busy if self.answer else []:
            if slot.job is not None:
                self._finish(slot, True, bytes_received=3)
        self.answer = False

    def _limit(self, slot: _FakeSlot) -> tuple[str, float]:
        return ("task_timeout", 0.5) if slot.warm else ("compile_timeout", 7.0)

    def _worker_name(self, slot: _FakeSlot) -> str:
        return f"fake-{slot.index}/{slot.generation}"


def _job(shard: int, attempt: int = 0) -> Job:
    return Job(shard, attempt, Path("task"), Path("out"), max_result_bytes=1)


def test_jobs_of_a_shard_queue_on_its_slot_in_order():
    pool = _FakePool(2)
    for job in (_job(0), _job(1), _job(2), _job(3, attempt=1)):
        pool.submit(job)
    assert [j.shard for j in pool._slots[0].sent] == [0]
    assert [j.shard for j in pool._slots[0].pending] == [2]
    pool.answer = True
    done = pool.wait(5.0)
    assert sorted((o.job.shard, o.ok, o.worker, o.bytes_received) for o in done) == [
        (0, True, "fake-0/0", 3),
        (1, True, "fake-1/0", 3),
    ]
    assert [j.shard for j in pool._slots[0].sent] == [0, 2]  # the queue moved on
    assert [(j.shard, j.attempt) for j in pool._slots[1].sent] == [(1, 0), (3, 1)]


def test_a_timeout_fails_the_job_restarts_the_worker_and_keeps_its_queue():
    pool = _FakePool(2, phase="training")
    pool.submit(_job(0))
    pool.submit(_job(2))  # queued behind shard 0 on slot 0
    pool._slots[0].deadline = time.monotonic() - 1.0  # past it, no waiting
    (outcome,) = pool.wait(5.0)
    assert (outcome.job.shard, outcome.ok, outcome.worker) == (0, False, "fake-0/0")
    assert outcome.error == "timed out while training (offload.compile_timeout=7s)"
    assert pool.restarts == 1 and pool.killed == [0]
    fresh = pool._slots[0]
    assert fresh.generation == 1
    assert [j.shard for j in fresh.sent] == [2] and fresh.pending == []  # carried over, sent


def test_a_timeout_without_a_phase_names_only_the_field():
    pool = _FakePool(1)
    pool.submit(_job(0))
    pool._slots[0].warm = True
    pool._slots[0].deadline = time.monotonic() - 1.0
    (outcome,) = pool.wait(5.0)
    assert outcome.error == "timed out (offload.task_timeout=0.5s)"


def test_a_slot_not_ready_times_out_with_no_job_to_fail():
    pool = _FakePool(1, phase="starting")
    pool._slots[0].ready = False
    pool._slots[0].deadline = time.monotonic() - 1.0
    pool.submit(_job(0))  # waits for the slot to be ready
    assert pool._slots[0].sent == []
    assert pool.wait(0.05) == []  # nothing ended: the slot had no job
    assert pool.restarts == 1 and pool.killed == [0]
    assert [j.shard for j in pool._slots[0].sent] == [0]  # the fresh (ready) slot took it


def test_wait_on_an_idle_pool_returns_at_once_unless_it_polls_when_idle():
    pool = _FakePool(2, idle_polls=False)
    assert pool.wait(600.0) == [] and pool.polls == 0  # nothing could arrive
    listening = _FakePool(1)
    assert listening.wait(0.05) == [] and listening.polls > 0  # e.g. a worker exiting
