"""Golem plumbing around the executor: the yagna daemon, the payload, the provider's command.

`offload.golem` runs the jobs; this module holds what it needs around them:
the daemon check (`GET $YAGNA_API_URL/me` with `YAGNA_APPKEY`, read from the
environment only), yapapi's lazy import, the provider image and its
constraints, the shell client a provider runs per task (`remote_command`) and
its answer, and the routing of yapapi's log records into the run's log with the
app key redacted.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import shlex
import sys
import traceback
import types
import urllib.error
import urllib.request
from typing import Any

from offload.archive import OffloadError
from offload.golem_config import GolemConfig

log = logging.getLogger("jfedrl.offload")

DEFAULT_API_URL = "http://127.0.0.1:7465"
REMOTE_TASK = "/golem/input/task.tar"
REMOTE_RESULT = "/golem/output/result.tar"
REMOTE_WORK = "/golem/work"
REMOTE_WORKER = "/golem/work/worker"
#: The loggers of yapapi and of its generated REST clients (which log request headers).
GOLEM_LOGGERS = ("yapapi", "ya_market", "ya_activity", "ya_payment", "ya_net")


def api_url() -> str:
    return os.environ.get("YAGNA_API_URL", DEFAULT_API_URL).rstrip("/")


def app_key() -> str:
    """The yagna app key, from `YAGNA_APPKEY` only."""
    key = os.environ.get("YAGNA_APPKEY", "")
    if not key:
        raise OffloadError(
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
            raise OffloadError(
                f"golem: yagna at {url} rejected the app key from YAGNA_APPKEY (HTTP "
                f"{error.code}); list valid keys with `yagna app-key list`"
            ) from None
        raise OffloadError(f"golem: yagna at {url} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise OffloadError(
            f"golem: yagna is not reachable at {url} (YAGNA_API_URL): {reason}. Start it "
            "with `yagna service run` or point YAGNA_API_URL at it"
        ) from None
    identity = body.get("identity") if isinstance(body, dict) else None
    if not identity:
        raise OffloadError(f"golem: {url}/me did not return a node identity; is it yagna?")
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
        raise OffloadError(
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
        raise OffloadError(
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


def remote_command(worker_command: str, name: str) -> str:
    """The shell command a provider runs for one task: a client of its worker process.

    The first task of an activity starts `worker_command --serve-dir` in the
    background (it outlives the command, so it compiles once and keeps its
    shard's client states); every task drops a request file for it and
    prints the worker's answer (one JSON line) when it appears. If the worker
    process dies, the command fails with the end of its log.
    """
    d = REMOTE_WORKER
    request = json.dumps({"input": REMOTE_TASK, "output": REMOTE_RESULT})
    return (
        f"set -e; D={d}; mkdir -p $D/requests $D/answers /golem/output; rm -f {REMOTE_RESULT}; "
        'if ! { [ -f $D/pid ] && kill -0 "$(cat $D/pid)" 2>/dev/null; }; then '
        f"JFEDRL_WORK_DIR={REMOTE_WORK} nohup {worker_command} --serve-dir $D "
        ">> $D/worker.log 2>&1 < /dev/null & echo $! > $D/pid; fi; "
        f"printf '%s' {shlex.quote(request)} > $D/requests/.{name}; "
        f"mv $D/requests/.{name} $D/requests/{name}.json; "
        f"while [ ! -f $D/answers/{name}.json ]; do "
        'if ! kill -0 "$(cat $D/pid)" 2>/dev/null; then '
        'echo "the worker process died; its log ends:" >&2; tail -n 5 $D/worker.log >&2; '
        "exit 3; fi; sleep 0.1; done; "
        f"cat $D/answers/{name}.json"
    )


def parse_answer(stdout: str | None) -> dict[str, Any]:
    """The worker's answer from the last JSON line a task's command printed."""
    for line in reversed((stdout or "").strip().splitlines()):
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(answer, dict) and "ok" in answer:
            return answer
    return {"ok": False, "error": "the task printed no answer from the worker"}


# ---------------------------------------------------------------- logging


def key_redactor(key: str):
    """A log record factory that removes `key` from every record's message and traceback."""
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return record
        if key in message:
            record.msg, record.args = message.replace(key, "<YAGNA_APPKEY>"), ()
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            if key in text:
                record.exc_info, record.exc_text = None, text.replace(key, "<YAGNA_APPKEY>")
        return record

    return factory, previous


def route_golem_logs(level: str | None = None) -> None:
    """Sends yapapi's records (and its REST clients') to the handlers of the `jfedrl` logger."""
    handlers = logging.getLogger("jfedrl").handlers
    level = (level or os.environ.get("JFEDRL_GOLEM_LOG") or "WARNING").upper()
    for name in GOLEM_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
