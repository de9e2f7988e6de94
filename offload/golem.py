"""The `golem` executor: tasks on Golem Network providers through yapapi 0.13.1.

Everything Golem-specific lives here and in `offload.yagna` (the daemon
check, payload, provider-side command and log routing). `GolemExecutor` stays
one class over ~400 lines: its asyncio thread, yapapi's event stream and the
slot / exclusion / payment bookkeeping share one state, which reads best whole.

- The yagna daemon is checked first (`GET $YAGNA_API_URL/me` with the app key
  from `YAGNA_APPKEY`, which is read from the environment only): an
  unreachable daemon or a rejected key fails the run at once with one line.
- The payload is the provider image (`golem.image_hash` + optional
  `golem.image_url`, or `golem.image_tag`) with CPU requirements, or for
  `golem.gpu` the `vm-nvidia` runtime and the `!exp:gpu` capability.
- One `Golem` engine and one `execute_tasks` job live for the whole run. Its
  yapapi tasks are *slots*, one per shard: a provider activity that takes a
  slot serves that shard's jobs round after round, so the provider runs one
  long-lived worker process (`jfedrl offload worker --serve-dir`, started by
  the first task; `remote_command` is the shell client each task runs) that
  compiles once and keeps the shard's client states (sticky clients).
- Fewer providers than shards: a job that no fresh provider takes within
  `golem.spare_wait` (counted from its submission and the latest agreement)
  goes to the working provider serving the fewest shards, which serves that
  shard too from then on (`_hosts`; its worker keeps each shard's states). A
  fresh provider that later takes the shard's own slot gets it back with its
  next task that carries the clients' states. A verification run
  (`Job.avoid`, see `offload.dispatch`) goes to a working provider outside its
  `avoid` set, else to a spare slot for a fresh one.
- Faults: a provider whose command fails, whose result the requestor rejects
  (digest, structure, report), which exceeds `golem.task_timeout`, or whose
  activity stops answering (`golem.health_interval`; three missed checks) is
  excluded from that moment: its buffered offers are dropped, later offers
  are scored as rejected, its activity is destroyed and its agreement
  terminated, and its shard gets a new slot that another provider takes.
  Its job fails at once, so the requestor retries it right away. A job that
  waits within `golem.offer_timeout` for a provider (no working provider to
  host it either) fails, naming how many providers were excluded. A worker
  whose image holds other source ("stale image", `offload.source`) stops the
  run at its first task, in one line.
- Shutdown lets the job finish (no cancellation): slots are released, yapapi
  destroys the activities and terminates the agreements as finished, and
  `Golem.stop` accepts the invoices and debit notes that arrive (a bounded
  wait, within `golem.budget`). One log line says what was paid; `golem/spent`
  is in every round's metrics, and no work is started once the budget is spent.
- Restarts: before the demand, `offload.leftovers` terminates the agreements an
  earlier (killed) run left `Approved` on this yagna and accepts that run's
  unpaid invoices once per agreement, in one log line; `--resume` then redoes
  the round after the last checkpoint on fresh agreements.
- yapapi's and its REST clients' log records go to the run's train.log (their
  level: `JFEDRL_GOLEM_LOG`, default WARNING), and the app key is removed from
  every log record of every logger (a record factory), at any level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from offload import archive
from offload.dispatch import NO_OTHER_WORKER
from offload.executors import Job, Outcome
from offload.golem_config import GolemConfig
from offload.leftovers import clean_up_yagna
from offload.source import STALE_IMAGE
from offload.task import CACHE_MISS, TASK_FILE
from offload.yagna import (
    REMOTE_RESULT,
    REMOTE_TASK,
    api_url,
    app_key,
    check_yagna,
    constraints,
    import_yapapi,
    key_redactor,
    make_payload,
    parse_answer,
    remote_command,
    resolve_image,
    route_golem_logs,
)

log = logging.getLogger("jfedrl.offload")

#: Consecutive failed activity checks after which a working provider counts as gone.
HEALTH_CHECKS = 3


# ---------------------------------------------------------------- slots and jobs


@dataclass
class _Slot:
    """A place on a provider: the activity that takes it serves the jobs queued on it.

    A shard's own slot (`shard` >= 0) is what a fresh provider takes for that
    shard; a spare slot (`shard` -1) is opened for a verification run that must
    go to a provider not yet working. A slot, once taken, can also serve other
    shards' jobs (`GolemExecutor._hosts`) and verification runs.
    """

    shard: int
    number: int
    jobs: asyncio.Queue
    provider: str = ""
    retired: bool = False
    task: Any = None
    """The yapapi task of this slot, while an activity holds it."""

    @property
    def live(self) -> bool:
        return bool(self.provider) and not self.retired


@dataclass
class _GolemJob:
    """One job as it travels through a slot."""

    job: Job
    task_tar: Path
    submitted: float
    carries_state: bool = True
    """The task holds its clients' states (any provider can run it, not only their keeper)."""
    slot: _Slot | None = None
    """Where it is queued (None: waiting for a provider outside `avoid`)."""
    waiting_since: float = 0.0
    """When it was last queued on a slot no provider holds (or left unplaced)."""
    started: float | None = None
    provider: str = ""
    finished: bool = False
    verdict: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class ProviderFailed(Exception):
    """Ends a provider's activity and agreement (the provider is excluded)."""


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except Exception:
        return Decimal(0)


# ---------------------------------------------------------------- the executor


async def _cancel_leftovers() -> None:
    """Cancels and awaits every task still on the loop, as `asyncio.run` does at its end.

    yapapi can leave tasks behind after a failed start or stop (its `AsyncWrapper`
    workers, invoice pollers). A task still pending when the loop closes is closed
    later by the garbage collector, and yapapi's wrapper worker then loops forever
    logging "Unhandled exception" (seen: a test process that never exits).
    """
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


class GolemExecutor:
    """Runs job attempts on Golem providers (see the module docstring)."""

    def __init__(self, config: GolemConfig, work_dir: Path, rounds: int = 1):
        self.config = config
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.url = api_url()
        key = app_key()
        factory, self._previous_factory = key_redactor(key)
        logging.setLogRecordFactory(factory)
        self.identity = check_yagna(self.url, key)
        if shutil.which("gftp") is None:
            raise archive.OffloadError(
                "golem: the `gftp` binary (yagna's file transfer, shipped with the yagna "
                "requestor installer; PyPI's golem-node has only `yagna`) is not on PATH"
            )
        import_yapapi()
        route_golem_logs()
        self.leftovers = clean_up_yagna(self.url, key, self.identity, config.budget)
        """What an earlier (dead) run left on this yagna, settled before the demand."""
        self.blocked: dict[str, str] = {}
        """Excluded provider id -> why."""
        self.stats = {"proposals": 0, "agreements": 0, "subscriptions": 0}
        self.first_agreement: float | None = None
        self.last_agreement = 0.0
        """When the latest agreement was signed: `spare_wait` runs from it too."""
        self._stopping = False
        self.invoices: dict[str, Decimal] = {}
        """Agreement id -> accepted invoice amount (GLM)."""
        self.debit_notes: dict[str, Decimal] = {}
        """Agreement id -> largest accepted debit note amount (GLM, cumulative per activity)."""
        self.owed: dict[str, Decimal] = {}
        """Agreement id -> the most a provider has asked for (debit notes or invoice, GLM)."""
        self._error: BaseException | None = None
        self._fatal = ""
        """Why the run must stop at once (a stale image), in one line."""
        self._lock = threading.Lock()
        self._finished: queue.Queue = queue.Queue()
        self._jobs: list[_GolemJob] = []
        self._slots: dict[int, _Slot] = {}
        """Shard -> its own slot (the yapapi task a fresh provider takes for it)."""
        self._hosts: dict[int, _Slot] = {}
        """Shard -> the slot of another provider that serves it too (`golem.spare_wait`)."""
        self._spares: list[_Slot] = []
        """Spare slots (verification runs for providers not yet working)."""
        self._unplaced: list[_GolemJob] = []
        """Verification runs waiting for a provider outside their `avoid` set."""
        self._slot_count = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="golem", daemon=True)
        self._thread.start()
        self._source: asyncio.Queue | None = None
        self._golem = None
        self._consumer: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        job_seconds = max(1800.0, rounds * config.task_timeout + config.offer_timeout)
        self._job_timeout = timedelta(seconds=min(job_seconds, 7 * 24 * 3600.0))
        try:
            self._submit(self._start(), timeout=120)
        except BaseException:
            self.close()
            raise
        log.info(
            "golem: requestor %s on yagna %s; demand for %s on subnet %r, payment %s/%s, "
            "budget %g GLM",
            self.identity,
            self.url,
            constraints(config),
            config.subnet,
            config.payment_driver,
            config.payment_network,
            config.budget,
        )

    # -- the event loop thread

    def _submit(self, coroutine, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise archive.OffloadError(
                f"golem: yagna at {self.url} did not respond in {timeout:g}s"
            ) from None

    def _on_event(self, event) -> None:
        name = type(event).__name__
        if name == "SubscriptionCreated":
            self.stats["subscriptions"] += 1
            log.info("golem: demand published on the market")
        elif name == "ProposalReceived":
            self.stats["proposals"] += 1
        elif name == "AgreementConfirmed":
            self.stats["agreements"] += 1
            self.last_agreement = time.monotonic()
            if self.first_agreement is None:
                self.first_agreement = self.last_agreement
            log.info("golem: agreement with provider %s", _provider(event))
        elif name == "AgreementTerminated":
            provider = _provider_id(event)
            reason = getattr(event, "reason", {}) or {}
            if reason.get("golem.requestor.code") is None:  # the provider ended it
                self._lost(provider, f"the provider terminated the agreement: {reason}")
        elif name == "WorkerFinished" and getattr(event, "exc_info", None):
            error = event.exc_info[1]
            if not isinstance(error, ProviderFailed):
                self._lost(_provider_id(event), f"{type(error).__name__}: {error}"[:500])
        elif name in ("DebitNoteReceived", "InvoiceReceived"):
            agreement = event.agreement.id
            amount = _decimal(event.amount)
            self.owed[agreement] = max(self.owed.get(agreement, Decimal(0)), amount)
        elif name == "DebitNoteAccepted":
            agreement = event.agreement.id
            amount = _decimal(event.amount)
            self.debit_notes[agreement] = max(self.debit_notes.get(agreement, Decimal(0)), amount)
        elif name == "InvoiceAccepted":
            self.invoices[event.agreement.id] = _decimal(event.amount)
            log.info("golem: invoice of %s GLM accepted (%s)", event.amount, _provider(event))
        elif name == "PaymentFailed":
            log.warning("golem: payment failed for %s: %s", _provider(event), event.exception)
        elif name in ("SubscriptionFailed", "CollectFailed"):
            log.warning("golem: %s: %s", name, getattr(event, "reason", ""))

    async def _start(self) -> None:
        from yapapi import Golem, Task
        from yapapi.strategy import (
            SCORE_REJECTED,
            LeastExpensiveLinearPayuMS,
            WrappingMarketStrategy,
        )

        blocked = self.blocked

        class ExcludeFailedProviders(WrappingMarketStrategy):
            async def score_offer(self, offer) -> float:
                if offer.issuer in blocked:
                    return SCORE_REJECTED
                return await self.base_strategy.score_offer(offer)

        config = self.config
        package_url = await resolve_image(config)
        payload = make_payload(config, package_url)
        self._source = asyncio.Queue()
        golem = Golem(
            budget=config.budget,
            strategy=ExcludeFailedProviders(LeastExpensiveLinearPayuMS()),
            subnet_tag=config.subnet,
            payment_driver=config.payment_driver,
            payment_network=config.payment_network,
            event_consumer=self._on_event,
        )
        try:
            await golem.start()
        except Exception as error:
            raise archive.OffloadError(
                f"golem: could not start the requestor on yagna at {self.url}: "
                f"{type(error).__name__}: {error}"
            ) from None
        self._golem = golem

        async def source():
            while True:
                slot = await self._source.get()
                if slot is None:
                    return
                yield Task(data=slot)

        async def consume():
            try:
                async for _ in golem.execute_tasks(
                    self._work,
                    source(),
                    payload=payload,
                    max_workers=config.max_workers,
                    timeout=self._job_timeout,
                ):
                    pass
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # surfaces in `wait`
                self._error = error

        self._consumer = asyncio.get_running_loop().create_task(consume())
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    # -- slots (event loop thread)

    def _slot(self, shard: int) -> _Slot:
        slot = self._slots.get(shard)
        if slot is None or slot.retired:
            slot = self._open(shard)
            self._slots[shard] = slot
        return slot

    def _open(self, shard: int) -> _Slot:
        """A new slot for yapapi to hand to the next provider it signs."""
        self._slot_count += 1
        slot = _Slot(shard, self._slot_count, asyncio.Queue())
        self._source.put_nowait(slot)
        return slot

    def _live_slots(self, avoid: frozenset[str] = frozenset()) -> list[_Slot]:
        """Slots a healthy provider holds now (one per provider), outside `avoid`."""
        seen, live = set(), []
        for slot in [*self._slots.values(), *self._spares]:
            gone = slot.provider in self.blocked or slot.provider in avoid
            if slot.live and not gone and slot.provider not in seen:
                seen.add(slot.provider)
                live.append(slot)
        return live

    def _load(self, slot: _Slot) -> int:
        """How many shards a slot serves (its own and those it hosts) plus its queue."""
        own = 1 if self._slots.get(slot.shard) is slot else 0
        return own + sum(host is slot for host in self._hosts.values()) + slot.jobs.qsize()

    def _place(self, golem_job: _GolemJob, slot: _Slot | None) -> None:
        golem_job.slot, golem_job.waiting_since = slot, time.monotonic()
        if slot is None:
            self._unplaced.append(golem_job)
        else:
            slot.jobs.put_nowait(golem_job)

    def _route(self, golem_job: _GolemJob) -> None:
        """Queues a job where it runs (loop thread).

        A shard's job goes to the provider hosting the shard, if one does, else
        to the shard's own slot. A hosted shard goes back to its own slot (taken
        meanwhile by a fresh provider) with its next task that carries its
        clients' states, so no kept state is lost. A verification run goes to a
        working provider outside its `avoid` set, else to a spare slot.
        """
        job = golem_job.job
        if job.avoid:
            live = self._live_slots(job.avoid)
            if live:
                self._place(golem_job, min(live, key=lambda s: (self._load(s), s.number)))
                return
            spare = next((s for s in self._spares if not s.provider and not s.retired), None)
            if spare is None:
                spare = self._open(-1)
                self._spares.append(spare)
            self._place(golem_job, spare)
            return
        own = self._slot(job.shard)
        host = self._hosts.get(job.shard)
        if host is not None and (not host.live or host.provider in self.blocked):
            del self._hosts[job.shard]
            host = None
        if host is not None and own.live and golem_job.carries_state:
            del self._hosts[job.shard]
            log.info("golem: shard %d goes back to its own provider %s", job.shard, own.provider)
            host = None
        self._place(golem_job, host or own)

    def _adopt_waiting(self) -> None:
        """Hands jobs no fresh provider took within `golem.spare_wait` to working ones."""
        now, wait = time.monotonic(), self.config.spare_wait
        for golem_job in list(self._jobs):
            slot = golem_job.slot
            if golem_job.finished or golem_job.started is not None or slot is None:
                continue
            if slot.live or now - max(golem_job.waiting_since, self.last_agreement) < wait:
                continue
            job = golem_job.job
            if job.avoid:  # a verification run: another provider may free up later
                continue
            live = self._live_slots()
            if not live:
                continue
            host = min(live, key=lambda s: (self._load(s), s.number))
            self._hosts[job.shard] = host
            moved = self._take_queued(slot, job.shard)
            for item in moved:
                self._place(item, host)
            log.warning(
                "golem: no fresh provider took shard %d within offload.golem.spare_wait=%gs; "
                "provider %s serves it too (%d shard(s) on %d provider(s))",
                job.shard,
                wait,
                host.provider,
                self._load(host) - host.jobs.qsize(),
                len(live),
            )
        for golem_job in list(self._unplaced):
            if golem_job.finished:
                self._unplaced.remove(golem_job)

    def _reclaim(self, slot: _Slot) -> None:
        """A fresh provider took a hosted shard's own slot: the shard's queued tasks that carry
        their states move to it (the host keeps the others, whose states it holds).
        """
        host = self._hosts.get(slot.shard)
        if host is None or host is slot:
            return
        moved = self._take_queued(host, slot.shard)
        for item in [m for m in moved if not m.carries_state]:
            host.jobs.put_nowait(item)
        moved = [m for m in moved if m.carries_state]
        if moved:
            del self._hosts[slot.shard]
            for item in moved:
                self._place(item, slot)

    @staticmethod
    def _take_queued(slot: _Slot, shard: int) -> list[_GolemJob]:
        """Removes and returns the jobs of `shard` queued on `slot` (the rest stay)."""
        items, keep = [], []
        while not slot.jobs.empty():
            item = slot.jobs.get_nowait()
            (items if item is not None and item.job.shard == shard else keep).append(item)
        for item in keep:
            slot.jobs.put_nowait(item)
        return items

    def _retire(self, slot: _Slot) -> None:
        """Takes a slot from its provider; the jobs queued on it are routed again."""
        if slot.retired:
            return
        slot.retired = True
        if slot.task is not None:
            slot.task.accept_result(None)  # done: yapapi must not hand it out again
            slot.task = None
        waiting = []
        while not slot.jobs.empty():
            item = slot.jobs.get_nowait()
            if item is not None:
                waiting.append(item)
        self._hosts = {shard: host for shard, host in self._hosts.items() if host is not slot}
        if slot.shard >= 0:
            self._slot(slot.shard)
        for item in waiting:
            self._route(item)

    async def _tick(self) -> None:
        """Every half second: jobs waiting past `golem.spare_wait` go to working providers."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self._adopt_waiting()
            except Exception:  # never let the bookkeeping loop die
                log.exception("golem: spare bookkeeping")

    def _exclude(self, provider: str, reason: str) -> None:
        """From now on `provider` gets nothing in this run (loop thread)."""
        if not provider or provider in self.blocked:
            return
        self.blocked[provider] = reason
        log.warning("golem: excluding provider %s: %s", provider, reason)
        for job in getattr(getattr(self._golem, "_engine", None), "_jobs", ()):
            # yapapi keeps one scored offer per provider and would sign it again.
            getattr(job.agreements_pool, "_offer_buffer", {}).pop(provider, None)
        for slot in [*self._slots.values(), *self._spares]:
            if slot.provider == provider:
                self._retire(slot)

    def _lost(self, provider: str, reason: str) -> None:
        """A provider stopped working: fail its running job at once and exclude it."""
        for golem_job in list(self._jobs):
            if golem_job.provider == provider and golem_job.started and not golem_job.finished:
                self._finish(golem_job, False, f"provider lost: {reason}")
        self._exclude(provider, reason)

    def _finish(self, golem_job: _GolemJob, ok: bool, error: str = "", data: bytes = b"") -> bool:
        """Hands a job's outcome to the requestor once (any thread); False if already done."""
        with self._lock:
            if golem_job.finished:
                return False
            golem_job.finished = True
        job = golem_job.job
        outcome = Outcome(
            job,
            ok,
            error,
            worker=golem_job.provider,
            seconds=time.monotonic() - (golem_job.started or golem_job.submitted),
            bytes_sent=golem_job.task_tar.stat().st_size if golem_job.task_tar.exists() else 0,
            bytes_received=len(data),
        )
        if ok:
            try:
                shutil.rmtree(job.output_dir, ignore_errors=True)
                archive.unpack(data, job.output_dir, job.max_result_bytes)
            except archive.TaskError as bad:
                outcome.ok, outcome.error = False, f"bad archive: {bad}"
        golem_job.task_tar.unlink(missing_ok=True)
        if not outcome.ok and not golem_job.verdict.done():
            golem_job.verdict.set_result(outcome.error)  # nothing to check: it failed
        self._finished.put(outcome)
        return True

    async def _watch(self, ctx, golem_job: _GolemJob) -> None:
        """Fails the job at once when the provider's activity stops answering."""
        misses = 0
        interval = self.config.health_interval
        while not golem_job.finished:
            await asyncio.sleep(interval)
            try:
                state = await asyncio.wait_for(ctx._activity.state(), timeout=interval)
                names = [str(s) for s in (getattr(state, "state", None) or []) if s]
                gone = any(n in ("Terminated", "Unresponsive") for n in names)
            except Exception:
                gone = True
            misses = misses + 1 if gone else 0
            if misses >= HEALTH_CHECKS:
                self._lost(
                    golem_job.provider,
                    f"its activity did not answer {HEALTH_CHECKS} checks "
                    f"{interval:g}s apart (offload.golem.health_interval)",
                )
                return

    async def _work(self, ctx, tasks):
        """The yapapi worker: hold a slot and serve its shard's jobs until the run ends.

        Each job is two batches: upload + the worker command (whose answer says
        whether a result exists), then the result's download. The requestor's
        verdict on the result is awaited before the next job, so a provider
        whose result was rejected gets no further work.
        """
        provider = ctx.provider_id
        async for task in tasks:
            slot: _Slot = task.data
            if slot.retired:
                task.accept_result(None)
                continue
            if provider in self.blocked:
                task.reject_result("provider excluded", retry=True)
                raise ProviderFailed(f"provider {provider} is excluded")
            slot.provider, slot.task = provider, task
            if self._stopping:
                pass  # handed over only to find the end of the run
            elif slot.shard >= 0:
                log.info("golem: provider %s serves shard %d", _name(ctx), slot.shard)
                self._reclaim(slot)
            else:
                log.info("golem: provider %s serves as a spare", _name(ctx))
            while True:
                golem_job = await slot.jobs.get()
                if golem_job is None:  # the end of the run
                    if slot.task is not None:
                        slot.task.accept_result(None)
                        slot.task = None
                    break
                if golem_job.finished:  # given up at its deadline while queued
                    continue
                job = golem_job.job
                golem_job.started, golem_job.provider = time.monotonic(), provider
                watchdog = asyncio.get_running_loop().create_task(self._watch(ctx, golem_job))
                timeout = timedelta(seconds=self.config.task_timeout)
                received: dict[str, bytes] = {}

                async def on_download(data: bytes, received=received) -> None:
                    received["data"] = data

                failure, answer = None, {"ok": False}
                try:
                    name = f"{job.shard:03d}-{job.attempt:02d}-{uuid.uuid4().hex[:8]}"
                    script = ctx.new_script(timeout=timeout)
                    script.upload_file(str(golem_job.task_tar), REMOTE_TASK)
                    run = script.run(
                        "/bin/sh", "-c", remote_command(self.config.worker_command, name)
                    )
                    yield script
                    answer = parse_answer((await run).stdout)
                    if answer.get("ok"):
                        download = ctx.new_script(timeout=timeout)
                        limit = archive.archive_cap(job.max_result_bytes) + 1
                        download.download_bytes(REMOTE_RESULT, on_download, limit=limit)
                        yield download
                except Exception as error:
                    failure = f"{type(error).__name__}: {error}"[:2000]
                finally:
                    watchdog.cancel()
                drop = await self._conclude(golem_job, failure, answer, received.get("data"))
                if drop is not None:
                    self._exclude(provider, drop)
                if slot.retired or provider in self.blocked:
                    raise ProviderFailed(self.blocked.get(provider, "slot retired"))

    async def _conclude(
        self, golem_job: _GolemJob, failure: str | None, answer: dict, data: bytes | None
    ) -> str | None:
        """Hands the job's outcome over; returns why the provider must go, or None."""
        if failure is not None:
            self._finish(golem_job, False, failure)
            return failure
        if not answer.get("ok"):
            error = str(answer.get("error") or "failed")
            if STALE_IMAGE in error:  # every provider runs the same image: end the run
                self._fatal = "golem: " + error[error.index(STALE_IMAGE) :]
                self._finish(golem_job, False, error)
                return None
            self._finish(golem_job, False, error)
            return None if error.startswith(CACHE_MISS) else error
        if data is None:
            self._finish(golem_job, False, "no result downloaded")
            return "no result downloaded"
        expected = answer.get("archive_sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            error = "bad result: the archive changed in transfer (its sha256 differs)"
            self._finish(golem_job, False, error)
            return error
        if not self._finish(golem_job, True, data=data):
            return None  # given up at its deadline meanwhile: the requestor has moved on
        return await asyncio.wrap_future(golem_job.verdict)

    # -- the executor interface (the requestor's thread)

    def submit(self, job: Job) -> None:
        owed = max(self.spent(), sum(self.owed.values(), Decimal(0)))
        if owed >= Decimal(str(self.config.budget)):
            raise archive.OffloadError(
                f"golem: the budget is spent (providers asked for {owed} of offload.golem.budget="
                f"{self.config.budget:g} GLM); raise it to go on (--resume keeps the rounds done)"
            )
        task_tar = job.task_dir.parent / f"task-{job.attempt}.tar"
        task_tar.write_bytes(archive.pack(job.task_dir))
        try:
            header = archive.read_json(job.task_dir / TASK_FILE, TASK_FILE)
            carries_state = header["state"] != "cache"
        except (archive.TaskError, KeyError, TypeError):
            carries_state = False
        now = time.monotonic()
        golem_job = _GolemJob(job, task_tar, now, carries_state, waiting_since=now)
        with self._lock:  # a finished job stays until its verdict: its provider awaits it
            self._jobs = [g for g in self._jobs if not (g.finished and g.verdict.done())]
            self._jobs.append(golem_job)
        self._loop.call_soon_threadsafe(self._route, golem_job)

    def wait(self, timeout: float) -> list[Outcome]:
        end = time.monotonic() + timeout
        done: list[Outcome] = []
        while True:
            if self._fatal:
                raise archive.OffloadError(self._fatal)
            if self._error is not None:
                raise archive.OffloadError(
                    f"golem: the requestor stopped: {type(self._error).__name__}: {self._error}"
                )
            self._check_deadlines()
            try:
                done.append(self._finished.get(timeout=max(0.0, min(0.2, end - time.monotonic()))))
            except queue.Empty:
                pass
            while not self._finished.empty():
                done.append(self._finished.get_nowait())
            if done or time.monotonic() >= end:
                return done

    def _check_deadlines(self) -> None:
        config, now = self.config, time.monotonic()
        for golem_job in list(self._jobs):
            if golem_job.finished:
                continue
            slot = golem_job.slot
            waiting = golem_job.started is None and (slot is None or not slot.live)
            if (
                golem_job.job.avoid
                and waiting
                and now - golem_job.waiting_since > max(config.spare_wait, 1.0)
            ):
                self._finish(
                    golem_job,
                    False,
                    f"{NO_OTHER_WORKER}: no provider but {', '.join(sorted(golem_job.job.avoid))} "
                    "took the "
                    f"verification run within offload.golem.spare_wait={config.spare_wait:g}s",
                )
            elif waiting and now - golem_job.waiting_since > config.offer_timeout:
                if self.first_agreement is None:
                    raise archive.OffloadError(self._no_provider_message())
                excluded = f"; {len(self.blocked)} provider(s) excluded" if self.blocked else ""
                self._finish(
                    golem_job,
                    False,
                    f"no provider took the task within offload.golem.offer_timeout="
                    f"{config.offer_timeout:g}s{excluded}",
                )
            elif golem_job.started is not None and now - golem_job.started > config.task_timeout:
                reason = f"no result within offload.golem.task_timeout={config.task_timeout:g}s"
                provider = golem_job.provider
                if self._finish(golem_job, False, reason):
                    self._loop.call_soon_threadsafe(self._exclude, provider, reason)

    def _no_provider_message(self) -> str:
        config = self.config
        return (
            f"golem: no provider took a task within offload.golem.offer_timeout="
            f"{config.offer_timeout:g}s (yagna {self.url}, subnet {config.subnet!r}, "
            f"payment {config.payment_driver}/{config.payment_network}, demand "
            f"{constraints(config)}; {self.stats['subscriptions']} demand(s) published, "
            f"{self.stats['proposals']} offer(s), {self.stats['agreements']} agreement(s))"
        )

    def verdict(self, outcome: Outcome, error: str | None) -> None:
        """A rejected result excludes its provider, also after a first `None` (verification)."""
        for golem_job in list(self._jobs):
            if golem_job.job is outcome.job and not golem_job.verdict.done():
                golem_job.verdict.set_result(error)
        if error is not None and outcome.worker:
            self._loop.call_soon_threadsafe(
                self._exclude, outcome.worker, f"result rejected: {error}"
            )

    def spent(self) -> Decimal:
        """GLM accepted so far: invoices, plus debit notes of agreements not yet invoiced."""
        invoiced = sum(self.invoices.values(), Decimal(0))
        noted = sum((v for k, v in self.debit_notes.items() if k not in self.invoices), Decimal(0))
        return invoiced + noted

    def metrics(self) -> dict[str, Any]:
        import numpy as np

        return {
            "golem/spent": np.float64(self.spent()),
            "golem/providers_excluded": np.int32(len(self.blocked)),
            "golem/agreements": np.int32(self.stats["agreements"]),
        }

    # -- shutdown

    async def _stop(self) -> None:
        """Lets the job end by itself: slots released, activities destroyed, invoices paid."""
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        for slot in [*self._slots.values(), *self._spares]:
            slot.jobs.put_nowait(None)
        if self._source is not None:
            self._source.put_nowait(None)
        if self._consumer is not None:
            # A slot no provider took is handed, once the others end, to a working provider,
            # which finds the end of the run in it; with none working, nothing can end it.
            untaken = not self._live_slots()
            grace = 5 if untaken or self.first_agreement is None else 60
            try:
                await asyncio.wait_for(asyncio.shield(self._consumer), timeout=grace)
            except asyncio.TimeoutError:
                if not untaken:
                    log.warning("golem: the job did not end within %d s; cancelling it", grace)
                self._consumer.cancel()
            except BaseException:
                pass
        if self._golem is not None:
            try:
                await asyncio.wait_for(self._golem.stop(), timeout=90)
            except BaseException as error:
                log.warning("golem: shutdown: %s: %s", type(error).__name__, error)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=180)
            except Exception as error:
                log.warning("golem: shutdown: %s: %s", type(error).__name__, error)
            try:
                asyncio.run_coroutine_threadsafe(_cancel_leftovers(), self._loop).result(timeout=30)
            except Exception as error:
                log.warning("golem: shutdown: %s: %s", type(error).__name__, error)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
        if self._golem is not None:
            unpaid = sorted(set(self.debit_notes) - set(self.invoices))
            log.info(
                "golem: paid %s GLM: %d invoice(s) accepted for %d agreement(s)%s; "
                "%d provider(s) excluded",
                self.spent(),
                len(self.invoices),
                self.stats["agreements"],
                f", {len(unpaid)} agreement(s) paid by debit notes only" if unpaid else "",
                len(self.blocked),
            )
        logging.setLogRecordFactory(self._previous_factory)


def _provider(event: Any) -> str:
    try:
        return event.agreement.details.provider_node_info.name or event.agreement.provider_id
    except AttributeError:
        return _provider_id(event) or "?"


def _provider_id(event: Any) -> str:
    try:
        return str(event.provider_id)
    except Exception:
        return ""


def _name(ctx: Any) -> str:
    try:
        return f"{ctx.provider_name} ({ctx.provider_id})"
    except AttributeError:
        return str(ctx.provider_id)
