"""The `ray` executor: offload shards as work of long-lived Ray actors.

A lab's own CPU/GPU cluster usually runs Ray; this executor puts one actor per
worker on it (`offload.shards` of them), each holding an `offload.worker.Worker`
for the whole run, so each actor imports JAX and compiles the local-training
step once, not once per round, and keeps its shard's client states between
rounds (sticky clients) like a `local` worker process. Shard `s` always runs on
actor `s % num_workers`; an actor runs one task at a time.

Task data travels as Ray objects by default (`offload.ray.transfer: objects`):
the task folder goes up as one uncompressed tar (the same archive a Golem
provider gets), the result comes back as a tar with its SHA-256 and is
unpacked under the run folder with the same caps as a download. With
`transfer: path` the actors read and write the run folder directly (this
machine, or a filesystem mounted at the same path on every node).

Faults are attempt failures, as with the other executors: an actor that dies
(`ray.kill`, a crash, a lost node: `RayActorError`) or does not answer in
time is killed and replaced by a fresh actor, and the attempt fails, so
`offload.dispatch` retries it there (the fresh actor answers `cache miss`
for sticky states it never had, and the task is resent with the states).
Timeouts: an actor that has not yet compiled gets `offload.compile_timeout`
for its attempt (start, import, restore, compile, train); a warm one gets
`offload.task_timeout`.

Ray is imported by this module, which `offload.plugin` imports only when the
executor is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from offload.archive import OffloadError, TaskError, pack, unpack
from offload.executors import Job
from offload.ray_config import RayConfig
from offload.slots import Slot, SlotPool

log = logging.getLogger("jfedrl.offload")


class RayWorker:
    """The actor: one `offload.worker.Worker`, alive for the run (see the module docstring)."""

    def __init__(self, env: dict[str, str]):
        os.environ.update(env)
        from jfedrl.run.runner import enable_compilation_cache
        from offload.serve import _cache_dir
        from offload.worker import Worker

        enable_compilation_cache(_cache_dir())
        self.worker = Worker()
        self.scratch = Path(tempfile.mkdtemp(prefix="jfedrl-ray-"))

    def ready(self) -> dict[str, Any]:
        """Where the actor runs (its pid and node), once it has imported everything."""
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def run(self, request: dict[str, Any], task: bytes | None) -> tuple[dict[str, Any], bytes]:
        """Runs one task: `(the serve loop's done answer, the result tar or b"")`.

        With `task` (tar bytes) the task is unpacked here and the result packed
        into the returned bytes; with None, `request` names folders to use in place.
        """
        from offload.serve import _answer

        if task is None:
            root = Path("/")
            answer = _answer(self.worker, request, root, root, lambda event, data: None)
            return answer, b""
        name = f"{request['shard']}-{request['attempt']}"
        task_tar = self.scratch / f"task-{name}.tar"
        result_tar = self.scratch / f"result-{name}.tar"
        task_tar.write_bytes(task)
        paths = dict(request, input=str(task_tar), output=str(result_tar))
        try:
            answer = _answer(self.worker, paths, Path("/"), Path("/"), lambda event, data: None)
            data = result_tar.read_bytes() if answer.get("ok") else b""
        finally:
            task_tar.unlink(missing_ok=True)
            result_tar.unlink(missing_ok=True)
        return answer, data


@dataclass
class _Actor(Slot):
    """One actor handle and what it is doing (Ray queues calls: it is `ready` at once)."""

    handle: Any
    ref: Any = None


def connect(config: RayConfig, num_workers: int) -> bool:
    """Joins (or starts) Ray for the run; True if this call started it (and must stop it).

    A Ray already initialised in this process (a notebook, the tests) is used
    as it is and left running.
    """
    if ray.is_initialized():
        return False
    # Ray must not phone home (nothing may download or upload at run time).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if config.address:
        try:
            ray.init(address=config.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise OffloadError(
                f"ray: cannot join the cluster at offload.ray.address={config.address!r}: "
                f"{_first_line(error)}"
            ) from None
    else:
        cpus = config.local_cpus or max(1, int(-(-config.num_cpus * num_workers // 1)))
        ray.init(num_cpus=cpus, num_gpus=None if config.num_gpus else 0, **options)
    return True


def check_resources(config: RayConfig, num_workers: int) -> None:
    """Fails fast if the cluster cannot hold every actor at once.

    An actor that finds no room waits, and since actors live for the whole run
    its shard would wait for ever (then time out, round after round).
    """
    total = ray.cluster_resources()
    for name, field_name in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        want = getattr(config, field_name) * num_workers
        have = float(total.get(name, 0.0))
        if want > have:
            raise OffloadError(
                f"ray: {num_workers} actor(s) (offload.shards) x offload.ray.{field_name}="
                f"{getattr(config, field_name):g} need {want:g} {name}(s), but the cluster has "
                f"{have:g}; lower one of them"
                + (
                    " or raise offload.ray.local_cpus"
                    if name == "CPU" and not config.address
                    else ""
                )
            )


class RayExecutor(SlotPool[_Actor]):
    """Ray actors, alive for the whole run (the `Executor` interface of offload.executors)."""

    _timeout_log = "offload: ray actor %d %s; starting a fresh one"
    _poll_when_idle = False  # only a busy actor has a call to wait for

    def __init__(
        self,
        config: RayConfig,
        num_workers: int,
        task_timeout: float,
        compile_timeout: float,
        env: dict[str, str] | None = None,
    ):
        super().__init__(num_workers, task_timeout, compile_timeout)
        self.config = config
        self.env = dict(env or {})
        self._owns_ray = connect(config, num_workers)
        try:
            check_resources(config, num_workers)
        except OffloadError:
            self._shutdown()
            raise
        self._remote = ray.remote(RayWorker).options(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            max_restarts=0,  # a dead actor is replaced by this executor, which knows its job
            max_concurrency=1,
        )
        self._slots = [self._spawn(index) for index in range(num_workers)]

    # -- actors

    def _spawn(self, index: int) -> _Actor:
        return _Actor(index, self._remote.remote(self.env), ready=True)

    def _kill(self, actor: _Actor) -> None:
        try:
            ray.kill(actor.handle, no_restart=True)
        except (RayError, ValueError):
            pass  # already gone

    def _limit(self, actor: _Actor) -> tuple[str, float]:
        if actor.warm:
            return "task_timeout", self.task_timeout
        return "compile_timeout", self.compile_timeout

    def _send(self, actor: _Actor, job: Job) -> None:
        request = {
            "shard": job.shard,
            "attempt": job.attempt,
            # Fault injection follows the requestor's environment (tests), see offload.faults.
            "fault": os.environ.get("JFEDRL_FAULT", ""),
        }
        if self.config.transfer == "objects":
            task = pack(job.task_dir)
        else:
            task = None
            request["input"] = str(job.task_dir.absolute())
            request["output"] = str(job.output_dir.absolute())
        actor.job = job
        actor.sent_at = time.monotonic()
        actor.deadline = actor.sent_at + self._limit(actor)[1]
        actor.bytes_sent, actor.compile_seconds = len(task or b""), 0.0
        actor.ref = actor.handle.run.remote(request, task)

    def _worker_name(self, actor: _Actor) -> str:
        return f"ray-{actor.index}/{actor.generation}"

    def _poll(self, busy: list[_Actor], seconds: float) -> None:
        ready, _ = ray.wait([actor.ref for actor in busy], num_returns=1, timeout=max(0, seconds))
        for actor in busy:
            if actor.ref in ready:
                self._receive(actor)

    def _receive(self, actor: _Actor) -> None:
        """The answer of the actor's finished attempt (or its death)."""
        ref, actor.ref = actor.ref, None  # the attempt ends here, whatever the answer
        try:
            answer, data = ray.get(ref)
        except RayActorError as error:
            reason = f"ray actor died ({type(error).__name__}: {_first_line(error)})"
            self._finish(actor, False, reason)
            log.warning("offload: ray actor %d: %s; starting a fresh one", actor.index, reason)
            self._restart(actor)
            return
        except RayError as error:  # the call failed but the actor lives (e.g. unpicklable)
            self._finish(actor, False, f"ray: {type(error).__name__}: {_first_line(error)}")
            return
        timings = answer.get("timings") or {}
        fresh = timings.get("compiled_fresh")
        actor.compile_seconds = float(timings.get("compile", 0.0)) if fresh else 0
        if answer.get("ok"):
            actor.warm = True
        extra = dict(bytes_received=len(data))
        if not answer.get("ok"):
            self._finish(actor, False, str(answer.get("error") or "failed"), **extra)
            return
        if self.config.transfer == "objects":
            job = actor.job
            expected = answer.get("archive_sha256")
            if not expected or hashlib.sha256(data).hexdigest() != expected:
                error = "bad result: the archive changed in transfer (its sha256 differs)"
                self._finish(actor, False, error, **extra)
                return
            try:
                shutil.rmtree(job.output_dir, ignore_errors=True)
                unpack(data, job.output_dir, job.max_result_bytes)
            except TaskError as bad:
                self._finish(actor, False, f"bad archive: {bad}", **extra)
                return
        self._finish(actor, True, **extra)

    def wait_ready(self, timeout: float) -> float:
        """Blocks until every actor has started and imported JAX (benchmarks); the seconds."""
        start = time.monotonic()
        try:
            ray.get([actor.handle.ready.remote() for actor in self._slots], timeout=timeout)
        except GetTimeoutError:
            raise TimeoutError(f"ray actors not ready after {timeout:g}s") from None
        return time.monotonic() - start

    def actor(self, shard: int) -> Any:
        """The actor handle running `shard` now (tests kill it)."""
        return self._slots[shard % self.num_workers].handle

    def close(self) -> None:
        """Kills every actor, and stops Ray if this executor started it."""
        for actor in self._slots:
            self._kill(actor)
        self._slots = []
        self._shutdown()

    def _shutdown(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
