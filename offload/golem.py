"""The `golem` executor: tasks on Golem Network providers through yapapi 0.13.1.

A thin adapter; everything Golem-specific lives here:

- the yagna daemon is checked first (`GET $YAGNA_API_URL/me` with the app key
  from `YAGNA_APPKEY`, which is read from the environment only and never
  written anywhere): an unreachable daemon or a rejected key fails the run at
  once with one clear line naming the URL;
- the payload is the provider image (`golem.image_hash` + optional
  `golem.image_url`, or `golem.image_tag` resolved through the public
  registry) with CPU requirements, or for `golem.gpu` the `vm-nvidia` runtime
  and the `!exp:gpu` capability;
- one `Golem` engine and one `execute_tasks` job live for the whole run, fed
  from a queue, so provider activities (and the XLA cache in their
  `/golem/work` volume) survive from round to round;
- `golem_worker` is the yapapi worker function: per task it uploads the task
  archive, runs the worker command and downloads the result archive (capped).
  A failed attempt is reported, the provider's agreement is dropped and the
  provider is excluded, so the retry goes to another provider;
- if no provider has taken a task within `golem.offer_timeout` the round fails
  with an `OffloadError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from jfedrl.config import GolemConfig
from offload import task as fmt
from offload.executors import Job, Outcome

log = logging.getLogger("jfedrl.offload")

DEFAULT_API_URL = "http://127.0.0.1:7465"
REMOTE_TASK = "/golem/input/task.tar"
REMOTE_RESULT = "/golem/output/result.tar"
REMOTE_WORK = "/golem/work"


def api_url() -> str:
    return os.environ.get("YAGNA_API_URL", DEFAULT_API_URL).rstrip("/")


def app_key() -> str:
    """The yagna app key, from `YAGNA_APPKEY` only."""
    key = os.environ.get("YAGNA_APPKEY", "")
    if not key:
        raise fmt.OffloadError(
            "golem: YAGNA_APPKEY is not set; create a key with `yagna app-key create "
            "requestor` and export it (it is never read from a config file)"
        )
    return key


def check_yagna(url: str, key: str, timeout: float = 5.0) -> str:
    """Fails fast unless a yagna daemon answers at `url` and accepts `key`.

    Returns:
        The requestor's node id.
    """
    request = urllib.request.Request(url + "/me", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read(1 << 16) or b"{}")
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise fmt.OffloadError(
                f"golem: yagna at {url} rejected the app key from YAGNA_APPKEY (HTTP "
                f"{error.code}); list valid keys with `yagna app-key list`"
            ) from None
        raise fmt.OffloadError(f"golem: yagna at {url} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise fmt.OffloadError(
            f"golem: yagna is not reachable at {url} (YAGNA_API_URL): {reason}. Start it "
            "with `yagna service run` or point YAGNA_API_URL at it"
        ) from None
    identity = body.get("identity") if isinstance(body, dict) else None
    if not identity:
        raise fmt.OffloadError(f"golem: {url}/me did not return a node identity; is it yagna?")
    return str(identity)


def import_yapapi() -> types.ModuleType:
    """Imports yapapi 0.13.1, which still imports `pkg_resources` for its version.

    setuptools >= 81 no longer ships `pkg_resources`; yapapi only calls
    `get_distribution(name).version`, so a minimal stand-in is provided when
    the real module is missing.
    """
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")

        class _Distribution:
            def __init__(self, name: str):
                self.version = importlib.metadata.version(name)

        shim.get_distribution = _Distribution  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    try:
        import yapapi
    except ImportError as error:
        raise fmt.OffloadError(
            f"golem: yapapi is not installed ({error}); pip install 'jfedrl[golem]'"
        ) from None
    return yapapi


def constraints(config: GolemConfig) -> str:
    """The demand's constraints: resources, runtime and (for GPUs) capability."""
    from yapapi.props import inf

    runtime = "vm-nvidia" if config.gpu else "vm"
    parts = [
        f"({inf.INF_MEM}>={config.min_mem_gib})",
        f"({inf.INF_STORAGE}>={config.min_storage_gib})",
        f"({inf.INF_THREADS}>={config.min_cpu_threads})",
        f"({inf.INF_RUNTIME_NAME}={runtime})",
    ]
    if config.gpu:
        parts.append("(golem.runtime.capabilities=!exp:gpu)")
    return "(&" + "".join(parts) + ")"


async def resolve_image(config: GolemConfig) -> str:
    """The image's package URL (`hash:sha3:<hash>:<url>`)."""
    if config.image_url:
        return f"hash:sha3:{config.image_hash}:{config.image_url}"
    from yapapi.payload.package import resolve_package_url
    from yapapi.payload.vm import DEFAULT_REPOSITORY_URL

    try:
        return await asyncio.wait_for(
            resolve_package_url(
                DEFAULT_REPOSITORY_URL,
                image_tag=config.image_tag or None,
                image_hash=config.image_hash or None,
            ),
            timeout=30,
        )
    except Exception as error:
        what = f"tag {config.image_tag!r}" if config.image_tag else f"hash {config.image_hash!r}"
        raise fmt.OffloadError(
            f"golem: could not resolve the image ({what}) at {DEFAULT_REPOSITORY_URL}: "
            f"{type(error).__name__}: {error}. Without internet access give "
            "offload.golem.image_url and offload.golem.image_hash"
        ) from None


def make_payload(config: GolemConfig, package_url: str):
    """A VM payload for `package_url` with this config's constraints."""
    from yapapi.payload.package import Package
    from yapapi.payload.vm import VmPackageFormat, VmRequest

    demand_constraints = constraints(config)

    class JfedrlVmPackage(Package):
        async def resolve_url(self) -> str:
            return package_url

        async def decorate_demand(self, demand) -> None:
            demand.ensure(demand_constraints)
            demand.add(
                VmRequest(package_url=package_url, package_format=VmPackageFormat.GVMKIT_SQUASH)
            )

    return JfedrlVmPackage()


def remote_command(worker_command: str) -> str:
    """The shell command a provider runs for one task."""
    return (
        f"set -e; mkdir -p {REMOTE_WORK} /golem/output; rm -f {REMOTE_RESULT}; "
        f"JFEDRL_WORK_DIR={REMOTE_WORK} {worker_command} "
        f"--input {REMOTE_TASK} --output {REMOTE_RESULT}"
    )


# ---------------------------------------------------------------- the worker function


@dataclass
class GolemJob:
    """One attempt of one task, as it travels through yapapi."""

    job: Job
    task_tar: Path
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    abandoned: bool = False


@dataclass
class WorkerOutcome:
    ok: bool
    data: bytes = b""
    error: str = ""
    provider: str = ""
    seconds: float = 0.0


def prepare_job(job: Job) -> GolemJob:
    """Packs the task folder into the archive that is uploaded."""
    task_tar = job.task_dir.parent / f"task-{job.attempt}.tar"
    task_tar.write_bytes(fmt.pack(job.task_dir))
    return GolemJob(job, task_tar)


def finish_job(golem_job: GolemJob) -> Outcome:
    """Unpacks a downloaded result (capped, plain files only) into the job's output folder."""
    result: WorkerOutcome = golem_job.future.result()
    job = golem_job.job
    outcome = Outcome(
        job,
        result.ok,
        result.error,
        worker=result.provider,
        seconds=result.seconds,
        bytes_sent=golem_job.task_tar.stat().st_size,
        bytes_received=len(result.data),
    )
    if result.ok:
        try:
            fmt.unpack(result.data, job.output_dir, job.max_result_bytes)
        except fmt.TaskError as error:
            outcome.ok, outcome.error = False, f"bad archive: {error}"
    golem_job.task_tar.unlink(missing_ok=True)
    return outcome


class ProviderFailed(Exception):
    """Ends a provider's activity after a failed task (its agreement is not reused)."""


async def golem_worker(ctx, tasks, *, task_timeout: float, worker_command: str):
    """The yapapi worker: upload, run, download for each task this provider gets.

    Every task is accepted with a `WorkerOutcome` (success or failure), so
    yapapi never retries on its own: the requestor validates results and
    decides. After a failure the activity ends, so the provider's agreement is
    not reused.
    """
    command = remote_command(worker_command)
    async for task in tasks:
        golem_job: GolemJob = task.data
        if golem_job.abandoned:
            task.accept_result(WorkerOutcome(False, error="abandoned", provider=ctx.provider_id))
            continue
        received: dict[str, bytes] = {}

        async def on_download(data: bytes, received=received) -> None:
            received["data"] = data

        start = time.monotonic()
        script = ctx.new_script(timeout=timedelta(seconds=task_timeout))
        script.upload_file(str(golem_job.task_tar), REMOTE_TASK)
        script.run("/bin/sh", "-c", command)
        script.download_bytes(
            REMOTE_RESULT, on_download, limit=fmt.archive_cap(golem_job.job.max_result_bytes) + 1
        )
        try:
            yield script
            outcome = WorkerOutcome(
                "data" in received,
                received.get("data", b""),
                "" if "data" in received else "no result downloaded",
            )
        except Exception as error:
            outcome = WorkerOutcome(False, error=f"{type(error).__name__}: {error}"[:2000])
        outcome.provider = ctx.provider_id
        outcome.seconds = time.monotonic() - start
        task.accept_result(outcome)
        _resolve(golem_job.future, outcome)
        if not outcome.ok:
            raise ProviderFailed(outcome.error)


# ---------------------------------------------------------------- the executor


class _RedactKey(logging.Filter):
    """Keeps the app key out of any log record that passes through yapapi's loggers."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        if self.key and self.key in record.getMessage():
            record.msg = record.getMessage().replace(self.key, "<YAGNA_APPKEY>")
            record.args = ()
        return True


class GolemExecutor:
    """Runs job attempts on Golem providers (see the module docstring)."""

    def __init__(self, config: GolemConfig, work_dir: Path, rounds: int = 1):
        self.config = config
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.url = api_url()
        key = app_key()
        self.identity = check_yagna(self.url, key)
        if shutil.which("gftp") is None:
            raise fmt.OffloadError(
                "golem: the `gftp` binary (yagna's file transfer, shipped with the yagna "
                "requestor installer; PyPI's golem-node has only `yagna`) is not on PATH"
            )
        import_yapapi()
        logging.getLogger("yapapi").addFilter(_RedactKey(key))
        self.blocked: set[str] = set()
        self.stats = {"proposals": 0, "agreements": 0, "subscriptions": 0}
        self.first_agreement: float | None = None
        self.first_submit: float | None = None
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="golem", daemon=True)
        self._thread.start()
        self._queue: asyncio.Queue | None = None
        self._golem = None
        self._consumer: asyncio.Task | None = None
        job_seconds = max(1800.0, rounds * config.task_timeout + config.offer_timeout)
        self._job_timeout = timedelta(seconds=min(job_seconds, 24 * 3600.0))
        try:
            self._submit(self._start(), timeout=120)
        except BaseException:
            self.close()
            raise
        log.info(
            "golem: requestor %s on yagna %s; demand for %s on subnet %r, payment %s/%s",
            self.identity,
            self.url,
            constraints(config),
            config.subnet,
            config.payment_driver,
            config.payment_network,
        )

    # -- the event loop thread

    def _submit(self, coroutine, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise fmt.OffloadError(
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
            if self.first_agreement is None:
                self.first_agreement = time.monotonic()
            log.info("golem: agreement with provider %s", _provider(event))
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
        self._queue = asyncio.Queue()
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
            raise fmt.OffloadError(
                f"golem: could not start the requestor on yagna at {self.url}: "
                f"{type(error).__name__}: {error}"
            ) from None
        self._golem = golem

        async def source():
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                yield Task(data=item)

        async def consume():
            try:
                worker = _bind_worker(config.task_timeout, config.worker_command)
                async for _ in golem.execute_tasks(
                    worker,
                    source(),
                    payload=payload,
                    max_workers=config.max_workers,
                    timeout=self._job_timeout,
                ):
                    pass
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # surfaces in `run`
                self._error = error

        self._consumer = asyncio.get_running_loop().create_task(consume())

    async def _stop(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except BaseException:
                pass
        if self._golem is not None:
            try:
                await asyncio.wait_for(self._golem.stop(), timeout=60)
            except BaseException as error:
                log.warning("golem: shutdown: %s: %s", type(error).__name__, error)

    # -- the executor interface

    def run(self, jobs: list[Job]) -> list[Outcome]:
        config = self.config
        submitted = []
        now = time.monotonic()
        if self.first_submit is None:
            self.first_submit = now
        for job in jobs:
            golem_job = prepare_job(job)
            self._loop.call_soon_threadsafe(self._queue.put_nowait, golem_job)
            submitted.append((golem_job, now))
        deadline_after = config.offer_timeout + config.task_timeout
        while not all(g.future.done() for g, _ in submitted):
            if self._error is not None:
                raise fmt.OffloadError(
                    f"golem: the requestor stopped: {type(self._error).__name__}: {self._error}"
                )
            now = time.monotonic()
            if self.first_agreement is None and now - self.first_submit > config.offer_timeout:
                raise fmt.OffloadError(
                    f"golem: no provider took a task within offload.golem.offer_timeout="
                    f"{config.offer_timeout:g}s (yagna {self.url}, subnet {config.subnet!r}, "
                    f"payment {config.payment_driver}/{config.payment_network}, demand "
                    f"{constraints(config)}; {self.stats['subscriptions']} demand(s) published, "
                    f"{self.stats['proposals']} offer(s), {self.stats['agreements']} agreement(s))"
                )
            for golem_job, start in submitted:
                if not golem_job.future.done() and now - start > deadline_after:
                    golem_job.abandoned = True
                    _resolve(
                        golem_job.future,
                        WorkerOutcome(False, error=f"no result within {deadline_after:g}s"),
                    )
            time.sleep(0.2)
        outcomes = [finish_job(golem_job) for golem_job, _ in submitted]
        for outcome in outcomes:
            if not outcome.ok:
                self.blame(outcome, outcome.error)
        return outcomes

    def blame(self, outcome: Outcome, reason: str) -> None:
        if outcome.worker:
            self.blocked.add(outcome.worker)
            log.warning("golem: excluding provider %s: %s", outcome.worker, reason)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=90)
            except Exception as error:
                log.warning("golem: shutdown: %s: %s", type(error).__name__, error)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def _resolve(future: concurrent.futures.Future, value: Any) -> None:
    """Sets a result once (the worker and the requestor's deadline may race)."""
    try:
        future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


def _bind_worker(task_timeout: float, worker_command: str):
    def worker(ctx, tasks):
        return golem_worker(ctx, tasks, task_timeout=task_timeout, worker_command=worker_command)

    return worker


def _provider(event: Any) -> str:
    try:
        return event.agreement.details.provider_node_info.name or event.agreement.provider_id
    except AttributeError:
        return "?"
