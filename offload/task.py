"""The offload task format: what goes to a worker and what comes back.

A task is a folder::

    task.json         the `TaskHeader`: run id, round, shard, attempt, client
                      ids, the config (as a dict), seed, quantisation, package
                      versions, the SHA-256 of every input file, and what to do
                      with the clients' state (`op`, `state`, `revert`,
                      `return_state`)
    inputs/           an orbax checkpoint of flat arrays:
                      global/NNNN    the broadcast global params (quantised)
                      peers/NNNN     the peers' params (mixture-KL), if any (quantised)
                      peer_weights/0000
                      clients/NNNN   the shard's client states with the params
                                     stripped (the worker puts the global params
                                     back with the algorithm's own `set_params`);
                                     absent when the worker keeps them (`state:
                                     cache`)
                      env/NNNN       the shard's environment params (drift applied)
                      keys/0000      one PRNG key per client

A result is a folder::

    state/            an orbax checkpoint: clients/NNNN (new states, params
                      stripped; only with `return_state`), params/NNNN (new
                      params, quantised), metrics/<name> (`[local_updates, n]`);
                      a `fetch` result holds clients/NNNN only
    report.json       the `Report`: round, shard, client ids, returns, env
                      steps, timings, device, versions, quantisation error
    digests.json      SHA-256 of every other file the worker wrote

Array names, shapes and dtypes come from `offload.shapes`; caps, digests and
archives from `offload.archive`. The two JSON files are typed here, each with
one `to_json` / `from_json` that checks every field it reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offload import quantize
from offload.archive import (
    DIGESTS_FILE,
    Spec,
    TaskError,
    list_files,
    read_json,
    restore_arrays,
    verify_digests,
)
from offload.shapes import max_result_bytes

FORMAT = 2
TASK_KIND = "jfedrl-offload-task"
#: What a task asks of a worker: train the shard, or only hand back its kept states.
OPS = ("train", "fetch")
#: Where the clients' states come from: the task's inputs, or the worker's own copy.
STATE_SOURCES = ("task", "cache")
#: The error prefix of a worker that does not hold the state a task asks for.
CACHE_MISS = "cache miss"
TASK_FILE = "task.json"
REPORT_FILE = "report.json"
INPUTS_DIR = "inputs"
STATE_DIR = "state"

_REQUIRED = object()


def _read(data: dict[str, Any], what: str, name: str, kind: type, default: Any = _REQUIRED):
    """`data[name]` if it is a `kind` (or `default` when absent and optional)."""
    if name not in data and default is not _REQUIRED:
        return default
    value = data.get(name)
    if not isinstance(value, kind):
        raise TaskError(f"{what}: {name} is missing or not a {kind.__name__}")
    return value


def _choice(what: str, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise TaskError(f"{what}: {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


def _json(record: Any, **extra: Any) -> dict[str, Any]:
    """A record's fields as a JSON object (tuples as lists), with `format` and `extra`."""
    data = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(record).items()
    }
    return {**data, "format": FORMAT, **extra}


def _identity(data: dict[str, Any], what: str) -> dict[str, Any]:
    """Which attempt of which task a header or report is about."""
    kinds = {"run_id": str, "round": int, "shard": int, "attempt": int}
    return {name: _read(data, what, name, kind) for name, kind in kinds.items()}


def _format(data: dict[str, Any], what: str) -> None:
    if data.get("format") != FORMAT:
        raise TaskError(f"{what} format {data.get('format')!r}; this side reads {FORMAT}")


@dataclass(frozen=True)
class TaskHeader:
    """`task.json`: which shard of which round, and what the worker is to do with it.

    Attributes:
        op: `train` the shard, or only `fetch` the states the worker keeps.
        state: where the clients' states come from: `task` (the inputs) or
            `cache` (the worker's own copy, sticky clients).
        revert: clients (ids) whose kept state goes back to its pre-round value
            first: the requestor rejected their last update.
        return_state: put the new client states in the result (a state sync).
        inputs: SHA-256 of every input file, by path relative to the task folder.
    """

    run_id: str
    round: int
    shard: int
    client_ids: tuple[int, ...]
    quantize: str
    config: dict[str, Any]
    inputs: dict[str, str]
    op: str = "train"
    state: str = "task"
    revert: tuple[int, ...] = ()
    return_state: bool = True
    attempt: int = 0
    num_shards: int = 1
    seed: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return _json(self, kind=TASK_KIND)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskHeader:
        """Raises `TaskError` naming the first missing or malformed field."""
        what = TASK_FILE
        _format(data, "task")
        client_ids = _read(data, what, "client_ids", list)
        if not client_ids or not all(isinstance(i, int) for i in client_ids):
            raise TaskError(f"{what}: client_ids must be a non-empty list of integers")
        revert = data.get("revert")
        if not isinstance(revert, list) or not set(revert) <= set(client_ids):
            raise TaskError(f"{what}: revert must list some of the task's client ids")
        return cls(
            **_identity(data, what),
            client_ids=tuple(client_ids),
            quantize=_choice(what, "quantize", data.get("quantize"), quantize.MODES),
            config=_read(data, what, "config", dict),
            inputs=_read(data, what, "inputs", dict),
            op=_choice(what, "op", data.get("op"), OPS),
            state=_choice(what, "state", data.get("state"), STATE_SOURCES),
            revert=tuple(revert),
            return_state=_read(data, what, "return_state", bool),
            num_shards=_read(data, what, "num_shards", int, 1),
            seed=_read(data, what, "seed", int, 0),
            versions=_read(data, what, "versions", dict, {}),
        )


@dataclass(frozen=True)
class Report:
    """`report.json`: what a worker did for one task attempt.

    Attributes:
        returns: each client's last training return (None where not finite or
            for a `fetch`).
        timings: seconds per phase (`restore`, `compile`, `train`, `total`)
            and `compiled_fresh`.
        quantize_error: the worker's own account of the params' quantisation
            (`relative`, `max_abs`, `raw_bytes`, `encoded_bytes`); it alone saw
            the unquantised params. Empty for a `fetch`.
    """

    run_id: str
    round: int
    shard: int
    attempt: int
    op: str
    client_ids: tuple[int, ...]
    returns: tuple[float | None, ...]
    quantize: str
    timings: dict[str, Any]
    device: str
    platform: str
    versions: dict[str, str]
    env_steps: int = 0
    quantize_error: dict[str, float] = field(default_factory=dict)

    @property
    def relative_error(self) -> float:
        """The params' relative quantisation error (0 when not reported)."""
        return float(self.quantize_error.get("relative", 0.0))

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """Raises `TaskError` naming the first missing or malformed field."""
        what = REPORT_FILE
        _format(data, "report")
        client_ids = _read(data, what, "client_ids", list)
        returns = _read(data, what, "returns", list)
        if not all(r is None or isinstance(r, int | float) for r in returns):
            raise TaskError(f"{what}: returns must be numbers or null")
        error = _read(data, what, "quantize_error", dict, {})
        if not all(isinstance(v, int | float) for v in error.values()):
            raise TaskError(f"{what}: quantize_error must map names to numbers")
        return cls(
            **_identity(data, what),
            op=_read(data, what, "op", str),
            client_ids=tuple(client_ids),
            returns=tuple(returns),
            quantize=_read(data, what, "quantize", str),
            timings=_read(data, what, "timings", dict),
            device=_read(data, what, "device", str),
            platform=_read(data, what, "platform", str),
            versions=_read(data, what, "versions", dict),
            env_steps=_read(data, what, "env_steps", int, 0),
            quantize_error=error,
        )

    def check(self, task: TaskHeader) -> None:
        """The report must be for `task`: same run, round, shard, client ids and jfedrl."""
        from jfedrl import __version__

        for name in ("run_id", "round", "shard"):
            got, want = getattr(self, name), getattr(task, name)
            if got != want:
                raise TaskError(f"report is for {name} {got!r}, expected {want!r}")
        if self.client_ids != task.client_ids:
            raise TaskError("report is for other client ids")
        version = self.versions.get("jfedrl")
        if version != __version__:
            raise TaskError(f"worker runs jfedrl {version!r}, the requestor {__version__!r}")
        if len(self.returns) != len(task.client_ids):
            raise TaskError("report has no return per client")


def read_result(
    result_dir: Path, task: TaskHeader, spec: Spec
) -> tuple[dict[str, np.ndarray], Report]:
    """Validates a result folder against its task and returns its arrays and report.

    Checks, in order: size cap and file types, digests (nothing missing,
    truncated, altered or added), the report (round, shard, client ids,
    version), and the checkpoint's structure, shapes and dtypes. Non-finite
    values are judged per client by the requestor (`nonfinite_rows`), so one
    bad client does not cost its shard.

    Raises:
        TaskError: naming the first problem found.
    """
    if not result_dir.is_dir():
        raise TaskError("no result folder")
    list_files(result_dir, max_result_bytes(spec))
    digests = read_json(result_dir / DIGESTS_FILE, DIGESTS_FILE)
    files = digests.get("files")
    if digests.get("algorithm") != "sha256" or not isinstance(files, dict):
        raise TaskError(f"{DIGESTS_FILE} has no sha256 file list")
    verify_digests(result_dir, files)
    report = Report.from_json(read_json(result_dir / REPORT_FILE, REPORT_FILE))
    report.check(task)
    arrays = restore_arrays(result_dir / STATE_DIR, spec)
    return arrays, report
