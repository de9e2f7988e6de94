"""The worker: runs one shard's local training from a task folder.

    jfedrl offload worker --input TASK_DIR --output RESULT_DIR
    python -m offload.worker --serve          (what the local executor runs)
    jfedrl offload worker --serve-dir DIR     (what a Golem provider keeps running)

A worker restores the task, builds the simulator from the task's config
(`make_simulator`, cached per config) and runs the very same
`jfedrl.federated.local_training` the in-process simulator runs, jitted and
compiled once per shard shape. With `--serve` it stays alive and reads one
JSON request per line from stdin (`{"input": DIR, "output": DIR}`), answering
with JSON lines on stdout (`ready`, then per task `compiling` (only when it
compiles), `compiled` and `done`), so JAX is imported and the step compiled
once per run, not once per round. `--serve-dir DIR` is the same loop over
files: a request is `DIR/requests/NAME.json`, its answer
`DIR/answers/NAME.json` (see `offload.golem.remote_command`, the shell client
a provider runs per task).

Sticky clients: after training, a worker keeps its shard's new client states
(and those it started from) keyed by run and shard. A task with `state:
cache` carries no client states: the worker starts from its own copy, first
putting back the pre-round state of the clients the requestor rejected last
round (`revert`). `return_state` asks for the states in the result (a state
sync); `op: fetch` only returns them. A worker that does not hold what a task
asks for answers with an error starting `cache miss`, and the requestor sends
the states.

Inputs or outputs ending in `.tar` are unpacked / packed (what a Golem
provider receives and returns). The persistent compilation cache lives in
`$JFEDRL_COMPILATION_CACHE`, else `$JFEDRL_WORK_DIR/xla-cache`, else
`/golem/work/xla-cache` on a provider, else the user cache.

Fault injection (tests): `JFEDRL_FAULT="kind[:shard=S,attempt=A,round=R][;...]"`
with kinds `crash`, `hang` (after compiling), `stall` (before restoring),
`corrupt`, `truncate`, `missing`, `nan` (one client), `shape`, `dtype`,
`wrong_round`, `wrong_clients`; `shard` and `round` default to any,
`attempt` to 0 (so a retry succeeds); `*` means any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

FAULT_ENV = "JFEDRL_FAULT"
FAULT_KINDS = (
    "crash",
    "hang",
    "stall",
    "corrupt",
    "truncate",
    "missing",
    "nan",
    "shape",
    "dtype",
    "wrong_round",
    "wrong_clients",
)
#: Cap on an input archive (the requestor's own upload).
MAX_INPUT_BYTES = 16 << 30

Progress = Callable[[str, dict[str, Any]], None]


# ---------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One injected fault: which kind, for which shard / attempt / round (None: any)."""

    kind: str
    shard: int | None = None
    attempt: int | None = 0
    round: int | None = None

    def matches(self, task: dict[str, Any]) -> bool:
        if task.get("op", "train") != "train":
            return False  # faults hit training tasks, not state fetches
        return all(
            want is None or want == task.get(field)
            for field, want in (
                ("shard", self.shard),
                ("attempt", self.attempt),
                ("round", self.round),
            )
        )


def parse_faults(text: str) -> list[Fault]:
    """Parses `$JFEDRL_FAULT` (see the module docstring)."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        kind, _, filters = item.partition(":")
        if kind not in FAULT_KINDS:
            allowed = ", ".join(FAULT_KINDS)
            raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; allowed: {allowed}")
        fields: dict[str, int | None] = {}
        for pair in filter(None, filters.split(",")):
            key, _, value = pair.partition("=")
            if key not in ("shard", "attempt", "round"):
                raise ValueError(
                    f"{FAULT_ENV}: unknown filter {key!r}; allowed: shard, attempt, round"
                )
            fields[key] = None if value == "*" else int(value)
        faults.append(Fault(kind, **fields))
    return faults


def _fault_for(task: dict[str, Any], spec: str | None) -> str | None:
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    for fault in parse_faults(spec):
        if fault.matches(task):
            return fault.kind
    return None


def _hang() -> None:
    """Sleeps until killed, or until the parent (the requestor) is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(3)


# ---------------------------------------------------------------- the worker


def _cache_dir() -> str | None:
    if os.environ.get("JFEDRL_COMPILATION_CACHE"):
        return os.environ["JFEDRL_COMPILATION_CACHE"]
    if os.environ.get("JFEDRL_WORK_DIR"):
        return str(Path(os.environ["JFEDRL_WORK_DIR"]) / "xla-cache")
    if Path("/golem/work").is_dir():
        return "/golem/work/xla-cache"
    return None


def versions() -> dict[str, str]:
    import jax
    import jaxlib

    from jfedrl import __version__

    return {
        "jfedrl": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
    }


@dataclass
class ShardCache:
    """The client states a worker keeps for one shard of one run (sticky clients)."""

    round: int
    """The round last trained."""
    client_ids: list[int]
    before: Any
    """Stripped states at the start of `round` (what a retry of that round starts from)."""
    after: Any
    """Stripped states at the end of `round`."""


class CacheMiss(Exception):
    """The worker does not hold the client states a task asks for."""


def _revert_rows(after: Any, before: Any, rows: list[int]) -> Any:
    """`after` with the given rows taken from `before` (clients the requestor rejected)."""
    import numpy as np

    if not rows:
        return after
    index = np.asarray(rows)

    def put(new, old):
        new = np.array(new, copy=True)
        new[index] = np.asarray(old)[index]
        return new

    import jax

    return jax.tree.map(put, after, before)


class Worker:
    """Runs tasks, keeping each config's simulator and compiled step across tasks."""

    def __init__(self):
        self._simulators: dict[str, Any] = {}
        self._compiled: dict[tuple[int, int], Any] = {}
        self._cache: dict[tuple[str, int], ShardCache] = {}

    def simulator(self, config_dict: dict[str, Any]):
        from jfedrl.config import from_dict
        from jfedrl.federated import make_simulator

        key = json.dumps(config_dict, sort_keys=True)
        if key not in self._simulators:
            self._simulators[key] = make_simulator(from_dict(config_dict))
        return self._simulators[key]

    def _step(self, simulator, n: int, args: tuple, progress: Progress) -> tuple[Any, bool]:
        """The compiled local training for `n` clients (compiled on first use)."""
        import jax

        from jfedrl.federated import local_training

        key = (id(simulator), n)
        fresh = key not in self._compiled
        if fresh:
            progress("compiling", {})
            fn = jax.jit(
                partial(
                    local_training,
                    simulator.algorithm,
                    simulator.config.federation.local_updates,
                    stacked_reference=simulator.config.federation.staleness > 0,
                )
            )
            self._compiled[key] = fn.lower(*args).compile()
        return self._compiled[key], fresh

    def run(
        self,
        input_path: Path,
        output_path: Path,
        progress: Progress | None = None,
        fault: str | None = None,
    ) -> dict:
        """Runs one task; writes the result folder (or `.tar`); returns the report.

        `fault` overrides `$JFEDRL_FAULT` (the local executor forwards the
        requestor's current value, so long-lived workers follow it).

        Raises:
            TaskError: if the task folder is damaged or does not match its config.
        """
        from offload.task import TaskError

        progress = progress or (lambda event, data: None)
        input_path, output_path = Path(input_path), Path(output_path)
        cleanup = []
        try:
            if input_path.suffix == ".tar" and input_path.is_file():
                from offload.task import unpack

                unpacked = input_path.with_name(input_path.name + ".d")
                shutil.rmtree(unpacked, ignore_errors=True)
                unpack(input_path.read_bytes(), unpacked, MAX_INPUT_BYTES)
                cleanup.append(unpacked)
                input_path = unpacked
            if output_path.suffix == ".tar":
                staging = output_path.with_name(output_path.name + ".d")
                shutil.rmtree(staging, ignore_errors=True)
                cleanup.append(staging)
                report = self._run(input_path, staging, progress, fault)
                from offload.task import pack

                partial_tar = output_path.with_name(output_path.name + ".part")
                archive = pack(staging)
                partial_tar.write_bytes(archive)
                partial_tar.replace(output_path)
                # Sent apart from the file (a Golem task prints it), so any change the
                # transfer makes to the archive shows, even in tar padding.
                report["archive_sha256"] = hashlib.sha256(archive).hexdigest()
                return report
            return self._run(input_path, output_path, progress, fault)
        except (KeyError, TypeError) as error:
            raise TaskError(f"malformed task: {type(error).__name__}: {error}") from None
        finally:
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)

    def _run(self, task_dir: Path, out: Path, progress: Progress, fault_spec: str | None) -> dict:
        import jax
        import numpy as np

        from jfedrl.algorithms import Reference
        from offload import task as fmt

        start = time.perf_counter()
        task = fmt.read_json(task_dir / fmt.TASK_FILE, fmt.TASK_FILE)
        fmt.check_task(task)
        fmt.verify_digests(task_dir, task["inputs"], exclude=(fmt.TASK_FILE,))
        fault = _fault_for(task, fault_spec)
        if fault == "stall":  # stuck before the step, e.g. on a slow disk
            _hang()
        simulator = self.simulator(task["config"])
        algorithm = simulator.algorithm
        n, mode, op = len(task["client_ids"]), task["quantize"], task["op"]
        shapes = fmt.shard_shapes(simulator, n)
        spec = fmt.task_spec(shapes, mode, op, task["state"])
        arrays = fmt.restore_arrays(task_dir / fmt.INPUTS_DIR, spec) if spec else {}
        if task["state"] == "cache":
            stripped = self._kept_states(task)
        else:
            stripped = fmt.decode_group("clients", arrays, shapes.clients, rows=False)
        if op == "fetch":
            result = fmt.encode_group("clients", stripped, "none", False, False)[0]
            out.mkdir(parents=True, exist_ok=True)
            fmt.save_arrays(out / fmt.STATE_DIR, result)
            return self._finish(task, out, fault, {"total": time.perf_counter() - start})
        stacked = shapes.stacked_reference
        global_params = fmt.decode_group("global", arrays, shapes.global_params, rows=stacked)
        reference = Reference(
            global_params,
            fmt.decode_group("peers", arrays, shapes.peer_params, rows=True),
            fmt.decode_group("peer_weights", arrays, shapes.peer_weights, rows=False),
        )
        if shapes.start_params is not None:  # each client starts from its own params
            own = fmt.decode_group("start", arrays, shapes.start_params, rows=True)
            clients = fmt.with_params_jit(algorithm, stripped, own, True)
        else:
            clients = fmt.with_params_jit(algorithm, stripped, global_params, False)
        env_params = fmt.decode_group("env", arrays, shapes.env_params, rows=False)
        keys = fmt.decode_group("keys", arrays, shapes.keys, rows=False)
        num_updates = None
        if shapes.num_updates is not None:
            num_updates = fmt.decode_group("updates", arrays, shapes.num_updates, rows=False)
        args = (keys, clients, env_params, reference, num_updates)
        restored = time.perf_counter()

        step, fresh = self._step(simulator, n, args, progress)
        compiled = time.perf_counter()
        progress("compiled", {"seconds": compiled - restored, "fresh": fresh})
        if fault == "hang":
            _hang()
        new_clients, metrics = step(*args)
        new_params = jax.device_get(jax.vmap(algorithm.get_params)(new_clients))
        new_stripped = jax.device_get(fmt.strip_params_jit(algorithm, new_clients))
        metrics = {name: np.asarray(value) for name, value in jax.device_get(metrics).items()}
        trained = time.perf_counter()
        self._cache[(task["run_id"], task["shard"])] = ShardCache(
            task["round"], list(task["client_ids"]), jax.device_get(stripped), new_stripped
        )

        if fault == "nan":  # one client diverged
            new_params = jax.tree.map(
                lambda x: np.concatenate([np.full_like(x[:1], np.nan), x[1:]]), new_params
            )
        result, error = fmt.encode_group("params", new_params, mode, True, True)
        if task["return_state"]:
            result.update(fmt.encode_group("clients", new_stripped, "none", False, False)[0])
        result.update({f"metrics/{name}": value for name, value in metrics.items()})
        if fault == "shape":
            name = sorted(k for k in result if k.startswith("params/"))[0]
            result[name] = np.concatenate([result[name], result[name][:1]])
        if fault == "dtype":
            name = sorted(k for k in result if k.startswith("params/"))[0]
            result[name] = result[name].astype(np.float64)

        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise fmt.TaskError(f"output folder {str(out)!r} is not empty")
        fmt.save_arrays(out / fmt.STATE_DIR, result)
        if fault == "crash":
            os._exit(17)  # after a partial write, like a killed provider
        returns = metrics.get("train_return")
        last = np.asarray(returns)[-1] if returns is not None else np.full(n, np.nan)
        extra = {
            "returns": [float(r) if np.isfinite(r) else None for r in last],
            "env_steps": n
            * simulator.config.federation.local_updates
            * algorithm.env_steps_per_update,
            "quantize_error": {
                "relative": error.relative_error,
                "max_abs": error.max_abs_error,
                "raw_bytes": error.raw_bytes,
                "encoded_bytes": error.encoded_bytes,
            },
        }
        timings = {
            "restore": restored - start,
            "compile": compiled - restored,
            "compiled_fresh": fresh,
            "train": trained - compiled,
            "total": time.perf_counter() - start,
        }
        return self._finish(task, out, fault, timings, extra)

    def _kept_states(self, task: dict[str, Any]) -> Any:
        """The shard's kept states for this task's round, with `revert` applied.

        Raises:
            CacheMiss: if this worker does not hold them (a new or restarted worker).
        """
        key = (task["run_id"], task["shard"])
        cache = self._cache.get(key)
        if cache is None or cache.client_ids != task["client_ids"]:
            raise CacheMiss(f"no kept state for shard {task['shard']} of run {task['run_id']}")
        if cache.round == task["round"] and task["op"] == "train":
            return cache.before  # a retry of the round last trained
        if cache.round != task["round"] - 1:
            raise CacheMiss(
                f"kept state of shard {task['shard']} is for round {cache.round + 2}, "
                f"not {task['round'] + 1}"
            )
        rows = [cache.client_ids.index(i) for i in task["revert"]]
        cache.after = _revert_rows(cache.after, cache.before, rows)
        cache.before = cache.after
        return cache.after

    def _finish(
        self,
        task: dict[str, Any],
        out: Path,
        fault: str | None,
        timings: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> dict:
        """Writes the report and the digests next to the saved arrays; returns the report."""
        import jax

        from offload import task as fmt

        client_ids = task["client_ids"]
        report = {
            "format": fmt.FORMAT,
            "run_id": task["run_id"],
            "round": task["round"] + (1 if fault == "wrong_round" else 0),
            "shard": task["shard"],
            "attempt": task["attempt"],
            "op": task["op"],
            "client_ids": [i + (1 if fault == "wrong_clients" else 0) for i in client_ids],
            "returns": [None] * len(client_ids),
            "quantize": task["quantize"],
            "timings": timings,
            "device": str(jax.devices()[0]),
            "platform": jax.default_backend(),
            "versions": versions(),
            **(extra or {}),
        }
        fmt.write_json(out / fmt.REPORT_FILE, report)
        digests = {"algorithm": "sha256", "files": fmt.digest_tree(out)}
        fmt.write_json(out / fmt.DIGESTS_FILE, digests)
        _damage(out, fault)
        return report


def _damage(out: Path, fault: str | None) -> None:
    """Output faults applied after the digests were written (transfer damage)."""
    if fault not in ("corrupt", "truncate", "missing"):
        return
    from offload.task import DIGESTS_FILE, list_files

    files = sorted(rel for rel in list_files(out) if rel.startswith("state/"))
    victim = out / max(files, key=lambda rel: (out / rel).stat().st_size)
    if fault == "missing":
        victim.unlink()
    elif fault == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    assert (out / DIGESTS_FILE).exists()


# ---------------------------------------------------------------- entry points


def _answer(
    worker: Worker, request: dict[str, Any], root_in: Path, root_out: Path, progress: Progress
) -> dict[str, Any]:
    """Runs one request; the `done` answer (never raises for a bad task)."""
    from offload.task import CACHE_MISS, TaskError

    start = time.perf_counter()
    try:
        report = worker.run(
            root_in / request["input"],
            root_out / request["output"],
            progress=progress,
            fault=request.get("fault"),
        )
        seconds = time.perf_counter() - start
        answer = {"event": "done", "ok": True, "seconds": seconds, "timings": report["timings"]}
        if "archive_sha256" in report:
            answer["archive_sha256"] = report["archive_sha256"]
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
    from jfedrl.runner import enable_compilation_cache
    from offload.task import TaskError

    enable_compilation_cache(_cache_dir())
    if getattr(args, "serve_dir", None):
        return serve_dir(Path(args.serve_dir))
    if args.serve:
        # Stdout carries the protocol; anything else printed goes to stderr.
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        return serve(sys.stdin, answers, Path(args.input or "."), Path(args.output or "."))
    try:
        report = Worker().run(Path(args.input), Path(args.output))
    except (TaskError, ValueError) as error:  # ValueError: a bad config in the task
        print(f"jfedrl offload worker: error: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "round": report["round"],
                "shard": report["shard"],
                "clients": len(report["client_ids"]),
                "seconds": round(report["timings"]["total"], 3),
                "device": report["device"],
            }
        )
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offload.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--input", help="task folder or .tar (--serve: root of request paths)")
    parser.add_argument("--output", help="result folder or .tar (--serve: root of request paths)")
    parser.add_argument("--serve", action="store_true", help="read task requests from stdin")
    parser.add_argument("--serve-dir", help="answer task requests dropped into this folder")
    return parser


if __name__ == "__main__":
    parsed = _parser().parse_args()
    if not (parsed.serve or parsed.serve_dir) and not (parsed.input and parsed.output):
        _parser().error("--input and --output are required without --serve / --serve-dir")
    sys.exit(main(parsed))
