"""The worker's entry points: one task, or a loop answering task requests.

    jfedrl offload worker --input TASK_DIR --output RESULT_DIR
    python -m offload.worker --serve          (what the local executor runs)
    jfedrl offload worker --serve-dir DIR     (what a Golem provider keeps running)

With `--serve` a worker stays alive and reads one JSON request per line from
stdin (`{"input": DIR, "output": DIR}`), answering with JSON lines on stdout
(`ready`, then per task `compiling` (only when it compiles), `compiled` and
`done`), so JAX is imported and the step compiled once per run, not once per
round. `--serve-dir DIR` is the same loop over files: a request is
`DIR/requests/NAME.json`, its answer `DIR/answers/NAME.json` (see
`offload.golem.remote_command`, the shell client a provider runs per task).

The persistent compilation cache lives in `$JFEDRL_COMPILATION_CACHE`, else
`$JFEDRL_WORK_DIR/xla-cache`, else `/golem/work/xla-cache` on a provider, else
the user cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from offload.archive import TaskError
from offload.faults import hook_for
from offload.plugin import add_worker_arguments
from offload.task import CACHE_MISS
from offload.worker import CacheMiss, Progress, Worker


def _cache_dir() -> str | None:
    if os.environ.get("JFEDRL_COMPILATION_CACHE"):
        return os.environ["JFEDRL_COMPILATION_CACHE"]
    if os.environ.get("JFEDRL_WORK_DIR"):
        return str(Path(os.environ["JFEDRL_WORK_DIR"]) / "xla-cache")
    if Path("/golem/work").is_dir():
        return "/golem/work/xla-cache"
    return None


def _answer(
    worker: Worker, request: dict[str, Any], root_in: Path, root_out: Path, progress: Progress
) -> dict[str, Any]:
    """Runs one request; the `done` answer (never raises for a bad task)."""
    start = time.perf_counter()
    try:
        report, archive_sha256 = worker.run(
            root_in / request["input"],
            root_out / request["output"],
            progress=progress,
            hook=hook_for(request.get("fault")),
        )
        seconds = time.perf_counter() - start
        answer = {"event": "done", "ok": True, "seconds": seconds, "timings": report.timings}
        if archive_sha256:
            answer["archive_sha256"] = archive_sha256
        return answer
    except CacheMiss as error:
        return {"event": "done", "ok": False, "error": f"{CACHE_MISS}: {error}"}
    except (TaskError, ValueError, KeyError) as error:
        return {"event": "done", "ok": False, "error": f"{type(error).__name__}: {error}"}
    except Exception as error:  # keep serving; the requestor decides what to do
        traceback.print_exc(file=sys.stderr)
        return {"event": "done", "ok": False, "error": f"{type(error).__name__}: {error}"}


def serve(requests, answers, root_in: Path = Path("."), root_out: Path = Path(".")) -> int:
    """Answers task requests (JSON lines) until `requests` ends."""
    worker = Worker()

    def send(event: str, data: dict[str, Any]) -> None:
        answers.write(json.dumps({"event": event, **data}) + "\n")
        answers.flush()

    send("ready", {"pid": os.getpid()})
    for line in requests:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            send("done", {"ok": False, "error": f"bad request: {error}"})
            continue
        answer = _answer(worker, request, root_in, root_out, send)
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


def serve_dir(directory: Path, idle_timeout: float = 6 * 3600.0) -> int:
    """Answers requests dropped as files into `directory/requests` (a provider's worker).

    Each `requests/NAME.json` (`{"input": ..., "output": ...}`) is answered by
    `answers/NAME.json`, written atomically; requests run one at a time in
    name order. The worker exits after `idle_timeout` seconds without work.
    """
    requests, answers = directory / "requests", directory / "answers"
    requests.mkdir(parents=True, exist_ok=True)
    answers.mkdir(parents=True, exist_ok=True)
    worker = Worker()
    (directory / "ready").write_text(str(os.getpid()))
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_timeout:
        pending = sorted(requests.glob("*.json"))
        if not pending:
            time.sleep(0.05)
            continue
        path = pending[0]
        try:
            request = json.loads(path.read_text())
            answer = _answer(worker, request, Path("/"), Path("/"), lambda e, d: None)
        except (OSError, json.JSONDecodeError) as error:
            answer = {"event": "done", "ok": False, "error": f"bad request: {error}"}
        path.unlink(missing_ok=True)
        staging = answers / f".{path.name}.part"
        staging.write_text(json.dumps(answer))
        staging.replace(answers / path.name)
        idle_since = time.monotonic()
    return 0


def main(args: argparse.Namespace) -> int:
    """`jfedrl offload worker` (and `python -m offload.worker`)."""
    from jfedrl import plugins

    # The run's plugin modules, before anything assembles the config tree.
    plugins.load_modules(plugins.from_environment())
    from jfedrl.run.runner import enable_compilation_cache
    from jfedrl.run.startup import prepare_process

    prepare_process()  # a worker process compiles as `jfedrl train` does
    enable_compilation_cache(_cache_dir())
    if getattr(args, "serve_dir", None):
        return serve_dir(Path(args.serve_dir))
    if args.serve:
        # Stdout carries the protocol; anything else printed goes to stderr.
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        return serve(sys.stdin, answers, Path(args.input or "."), Path(args.output or "."))
    try:
        report, _ = Worker().run(Path(args.input), Path(args.output), hook=hook_for(None))
    except (TaskError, ValueError) as error:  # ValueError: a bad config in the task
        print(f"jfedrl offload worker: error: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "round": report.round,
                "shard": report.shard,
                "clients": len(report.client_ids),
                "seconds": round(report.timings["total"], 3),
                "device": report.device,
            }
        )
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offload.worker", description=__doc__.split("\n")[0]
    )
    add_worker_arguments(parser, "read task requests from stdin")
    return parser


def run_main() -> int:
    """`python -m offload.worker`."""
    parsed = _parser().parse_args()
    if not (parsed.serve or parsed.serve_dir) and not (parsed.input and parsed.output):
        _parser().error("--input and --output are required without --serve / --serve-dir")
    return main(parsed)
