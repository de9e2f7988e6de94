"""The offload task format: what goes to a worker and what comes back.

A task is a folder::

    task.json         run id, round, shard, attempt, client ids, the config (as
                      a dict), seed, quantisation, package versions, the
                      SHA-256 of every input file, and what to do with the
                      clients' state (`op`, `state`, `revert`, `return_state`:
                      see `check_task`)
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
    report.json       round, shard, client ids, returns, env steps, timings,
                      device, versions, quantisation error
    digests.json      SHA-256 of every other file the worker wrote

Every array name, shape and dtype is derived from the config on both sides,
so a result is checked against what the config implies before it is read:
nothing a worker returns is unpickled, and its size is capped.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from offload import quantize

FORMAT = 2
#: What a task asks of a worker: train the shard, or only hand back its kept states.
OPS = ("train", "fetch")
#: Where the clients' states come from: the task's inputs, or the worker's own copy.
STATE_SOURCES = ("task", "cache")
#: The error prefix of a worker that does not hold the state a task asks for.
CACHE_MISS = "cache miss"
TASK_FILE = "task.json"
REPORT_FILE = "report.json"
DIGESTS_FILE = "digests.json"
INPUTS_DIR = "inputs"
STATE_DIR = "state"
#: Caps on the small JSON files of a task or result.
MAX_JSON_BYTES = 16 << 20
#: Cap on the number of files in a result (orbax writes a handful).
MAX_FILES = 4096

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


class OffloadError(ValueError):
    """Offloading cannot go on: the round fails and the last checkpoint stays intact.

    A `ValueError`, so the CLI prints it as one clear line.
    """


class TaskError(Exception):
    """One attempt of a task produced no usable result (the task is retried)."""


# ---------------------------------------------------------------- shapes


class ShardShapes(NamedTuple):
    """Abstract trees (shape/dtype structs) of one shard of `n` clients.

    `start_params` (each client's own starting params: aggregation periods or
    staleness) and `num_updates` (per-client local work) are None when the
    config does not need them; with staleness the reference `global_params`
    are per client (`stacked_reference`).
    """

    global_params: Any
    peer_params: Any
    peer_weights: Any
    clients: Any
    """Client states with the params stripped (see `strip_params`)."""
    env_params: Any
    keys: Any
    new_clients: Any
    new_params: Any
    metrics: dict[str, Any]
    start_params: Any = None
    num_updates: Any = None
    stacked_reference: bool = False


def _rows(tree: Any, n: int) -> Any:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((n,) + tuple(s.shape[1:]), s.dtype), tree)


def strip_params(algorithm, clients: Any) -> Any:
    """Stacked client states with each param leaf replaced by a scalar zero.

    The params travel separately (once for the broadcast, quantised on the way
    back), so a task does not carry K copies of the global params.
    """
    one = jax.eval_shape(algorithm.get_params, jax.tree.map(lambda x: x[0], clients))
    dummy = jax.tree.map(lambda s: np.zeros((), s.dtype), one)
    return jax.vmap(algorithm.set_params, in_axes=(0, None))(clients, dummy)


def with_params(algorithm, stripped: Any, params: Any, stacked: bool) -> Any:
    """Puts params back into stripped states (the algorithm's own `set_params`)."""
    return jax.vmap(algorithm.set_params, in_axes=(0, 0 if stacked else None))(stripped, params)


strip_params_jit = jax.jit(strip_params, static_argnums=0)
with_params_jit = jax.jit(with_params, static_argnums=(0, 3))


@lru_cache(maxsize=64)
def shard_shapes(simulator, n: int) -> ShardShapes:
    """What a task and a result of `n` clients hold, for this simulator's config."""
    from jfedrl.federated import local_training

    algorithm = simulator.algorithm
    state = jax.eval_shape(simulator.init, jax.ShapeDtypeStruct((2,), np.uint32))
    inputs = jax.eval_shape(simulator.begin_round, state)
    clients = _rows(inputs.clients, n)
    env_params = _rows(inputs.env_params, n)
    keys = _rows(inputs.client_keys, n)
    stacked = inputs.start_params is not None
    reference = inputs.reference
    if stacked:
        reference = reference._replace(global_params=_rows(reference.global_params, n))
    num_updates = _rows(inputs.num_updates, n) if simulator.heterogeneous else None
    stripped = jax.eval_shape(partial(strip_params, algorithm), clients)
    new_clients, metrics = jax.eval_shape(
        partial(
            local_training,
            algorithm,
            simulator.config.federation.local_updates,
            stacked_reference=stacked,
        ),
        keys,
        clients,
        env_params,
        reference,
        num_updates,
    )
    per_client_start = stacked or simulator.periodic
    new_params = jax.eval_shape(jax.vmap(algorithm.get_params), new_clients)
    return ShardShapes(
        global_params=reference.global_params,
        peer_params=reference.peer_params,
        peer_weights=reference.peer_weights,
        clients=stripped,
        env_params=env_params,
        keys=keys,
        new_clients=jax.eval_shape(partial(strip_params, algorithm), new_clients),
        new_params=new_params,
        metrics=dict(metrics),
        start_params=new_params if per_client_start else None,
        num_updates=num_updates,
        stacked_reference=stacked,
    )


# ---------------------------------------------------------------- flat groups

#: Groups of a task / result: (name, field of ShardShapes, quantised, one scale per row).
TASK_GROUPS = (
    ("global", "global_params", True, False),
    ("peers", "peer_params", True, True),
    ("peer_weights", "peer_weights", False, False),
    ("clients", "clients", False, False),
    ("env", "env_params", False, False),
    ("keys", "keys", False, False),
    ("start", "start_params", True, True),
    ("updates", "num_updates", False, False),
)
RESULT_GROUPS = (
    ("clients", "new_clients", False, False),
    ("params", "new_params", True, True),
)


def _leaf_names(group: str, tree: Any) -> list[str]:
    return [f"{group}/{i:04d}" for i in range(len(jax.tree.leaves(tree)))]


def group_spec(group: str, abstract: Any, mode: str, quantised: bool, rows: bool) -> Spec:
    """Encoded names, shapes and dtypes of one group (zero-size leaves are not stored)."""
    spec: Spec = {}
    for name, leaf in zip(_leaf_names(group, abstract), jax.tree.leaves(abstract), strict=True):
        if int(np.prod(leaf.shape)) == 0:
            continue
        spec.update(
            quantize.encoded_spec(
                name, tuple(leaf.shape), leaf.dtype, mode if quantised else "none", rows
            )
        )
    return spec


def encode_group(
    group: str, tree: Any, mode: str, quantised: bool, rows: bool
) -> tuple[dict[str, np.ndarray], quantize.QuantError]:
    """Flattens (and quantises) a tree into `{group/NNNN: array}`."""
    arrays: dict[str, np.ndarray] = {}
    error = quantize.NO_ERROR
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    for name, leaf in zip(_leaf_names(group, tree), leaves, strict=True):
        if leaf.size == 0:
            continue
        encoded, leaf_error = quantize.encode(name, leaf, mode if quantised else "none", rows)
        arrays.update(encoded)
        if quantised:
            error = error + leaf_error
    return arrays, error


def decode_group(group: str, arrays: dict[str, np.ndarray], abstract: Any, rows: bool) -> Any:
    """Rebuilds a tree shaped like `abstract` from its flat (encoded) arrays."""
    leaves = []
    for name, leaf in zip(_leaf_names(group, abstract), jax.tree.leaves(abstract), strict=True):
        if int(np.prod(leaf.shape)) == 0:
            leaves.append(np.zeros(leaf.shape, leaf.dtype))
        else:
            leaves.append(quantize.decode(name, arrays, leaf.dtype, rows))
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def task_spec(shapes: ShardShapes, mode: str, op: str = "train", state: str = "task") -> Spec:
    """The arrays of a task's inputs (a `fetch`, or states kept by the worker, carry fewer)."""
    spec: Spec = {}
    if op == "fetch":
        return spec
    for group, field, quantised, rows in TASK_GROUPS:
        if (group == "clients" and state == "cache") or getattr(shapes, field) is None:
            continue
        rows = rows or (group == "global" and shapes.stacked_reference)
        spec.update(group_spec(group, getattr(shapes, field), mode, quantised, rows))
    return spec


def result_spec(
    shapes: ShardShapes, mode: str, op: str = "train", return_state: bool = True
) -> Spec:
    """The arrays of a result: new params and metrics, plus the states when asked for."""
    spec: Spec = {}
    for group, field, quantised, rows in RESULT_GROUPS:
        if group == "clients" and not (return_state or op == "fetch"):
            continue
        if group == "params" and op == "fetch":
            continue
        spec.update(group_spec(group, getattr(shapes, field), mode, quantised, rows))
    if op == "train":
        for name, leaf in shapes.metrics.items():
            spec[f"metrics/{name}"] = (tuple(leaf.shape), np.dtype(leaf.dtype))
    return spec


def spec_bytes(spec: Spec) -> int:
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())


def max_result_bytes(spec: Spec) -> int:
    """Download cap of a result: twice its arrays plus 1 MiB for metadata and JSON."""
    return 2 * spec_bytes(spec) + (1 << 20) + 4096 * len(spec)


# ---------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(root: Path, max_bytes: int | None = None) -> dict[str, int]:
    """Every regular file under `root` (relative path -> size).

    Raises:
        TaskError: on a link or special file, too many files, or more than
            `max_bytes` in total.
    """
    files: dict[str, int] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise TaskError(f"{rel} is a symbolic link")
            if name in filenames:
                if not path.is_file():
                    raise TaskError(f"{rel} is not a regular file")
                size = path.stat().st_size
                files[rel] = size
                total += size
                if len(files) > MAX_FILES:
                    raise TaskError(f"more than {MAX_FILES} files")
                if max_bytes is not None and total > max_bytes:
                    raise TaskError(f"more than the cap of {max_bytes} bytes")
    return files


def digest_tree(root: Path, exclude: tuple[str, ...] = (DIGESTS_FILE,)) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in sorted(list_files(root)) if rel not in exclude}


def verify_digests(root: Path, expected: dict[str, str], exclude=(DIGESTS_FILE,)) -> None:
    """Every file listed is present with its digest, and nothing else is there."""
    present = {rel for rel in list_files(root) if rel not in exclude}
    missing = sorted(set(expected) - present)
    if missing:
        raise TaskError(f"missing file(s): {', '.join(missing[:3])}")
    extra = sorted(present - set(expected))
    if extra:
        raise TaskError(f"unlisted file(s): {', '.join(extra[:3])}")
    for rel, digest in expected.items():
        if sha256_file(root / rel) != digest:
            raise TaskError(f"digest mismatch for {rel}")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A small JSON object from an untrusted folder (size-capped)."""
    if not path.is_file():
        raise TaskError(f"{what} is missing")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise TaskError(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"{what} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{what} is not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes flat arrays as an orbax checkpoint (synchronously)."""
    import orbax.checkpoint as ocp

    checkpointer = _checkpointer()
    try:
        checkpointer.save(directory.absolute(), args=ocp.args.StandardSave(arrays))
    finally:
        checkpointer.close()


def restore_arrays(directory: Path, spec: Spec) -> dict[str, np.ndarray]:
    """Restores an orbax checkpoint of flat arrays after checking it matches `spec`.

    The names, shapes and dtypes recorded in the checkpoint's metadata are
    compared with `spec` before any array is read (orbax would otherwise
    restore whatever shape was saved), and again after.

    Raises:
        TaskError: on a missing or unreadable checkpoint or a structure mismatch.
    """
    import orbax.checkpoint as ocp

    if not directory.is_dir():
        raise TaskError(f"{directory.name}/ is missing")
    checkpointer = _checkpointer()
    try:
        try:
            metadata = checkpointer.metadata(directory.absolute()).item_metadata.tree
        except Exception as error:  # orbax raises many types for damaged files
            raise TaskError(f"unreadable checkpoint metadata: {type(error).__name__}") from None
        if not isinstance(metadata, dict) or set(metadata) != set(spec):
            got = set(metadata) if isinstance(metadata, dict) else set()
            missing, extra = sorted(set(spec) - got), sorted(got - set(spec))
            raise TaskError(f"wrong tree structure (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, (shape, dtype) in spec.items():
            meta = metadata[name]
            if tuple(meta.shape) != tuple(shape) or np.dtype(meta.dtype) != np.dtype(dtype):
                raise TaskError(
                    f"{name}: {tuple(meta.shape)}/{np.dtype(meta.dtype)} where "
                    f"{tuple(shape)}/{np.dtype(dtype)} is expected"
                )
        target = {name: np.empty(shape, dtype) for name, (shape, dtype) in spec.items()}
        try:
            restored = checkpointer.restore(
                directory.absolute(), args=ocp.args.StandardRestore(target)
            )
        except Exception as error:
            raise TaskError(f"unreadable checkpoint: {type(error).__name__}: {error}") from None
    finally:
        checkpointer.close()
    arrays = {name: np.asarray(value) for name, value in restored.items()}
    for name, (shape, dtype) in spec.items():
        if arrays[name].shape != tuple(shape) or arrays[name].dtype != np.dtype(dtype):
            raise TaskError(f"{name}: restored with shape {arrays[name].shape}")
    return arrays


# ---------------------------------------------------------------- archives


def pack(directory: Path) -> bytes:
    """A folder as an uncompressed tar (what is uploaded to / downloaded from Golem)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in sorted(list_files(directory)):
            tar.add(directory / rel, arcname=rel, recursive=False)
    return buffer.getvalue()


def archive_cap(max_bytes: int) -> int:
    """Largest archive accepted for `max_bytes` of content (headers and padding on top)."""
    return max_bytes + (1 << 20)


#: Longest entry name and path an archive may hold, in bytes (Linux NAME_MAX and PATH_MAX).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
#: Errors of this machine's disk, not of the archive: retrying elsewhere cannot help.
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _shown(name: str) -> str:
    """An entry name for an error line (long ones shortened, with their length)."""
    return repr(name) if len(name) <= 80 else f"{name[:40]!r}... ({len(name)} characters)"


def _entry_paths(members: list[tarfile.TarInfo], destination: Path) -> list[tuple[str, ...]]:
    """The relative path of every entry, after checking all of them together.

    Raises:
        TaskError: if an entry escapes, is not a regular file, has a name or path
            longer than the filesystem allows, or clashes with another entry (the
            same file twice, or a file where another entry needs a folder).
    """
    base = len(os.fsencode(str(destination.absolute())))
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    paths = []
    for member in members:
        parts = Path(member.name).parts
        shown = _shown(member.name)
        if member.name.startswith("/") or ".." in parts or not parts:
            raise TaskError(f"archive entry {shown} escapes the folder")
        if not member.isfile():
            raise TaskError(f"archive entry {shown} is not a regular file")
        if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in parts):
            raise TaskError(f"archive entry {shown} has a name longer than {MAX_NAME_BYTES} bytes")
        if base + 1 + len(os.fsencode("/".join(parts))) >= MAX_PATH_BYTES:
            raise TaskError(
                f"archive entry {shown} makes a path longer than {MAX_PATH_BYTES} bytes"
            )
        if parts in files:
            raise TaskError(f"archive entry {shown} appears twice")
        if parts in folders:
            raise TaskError(f"archive entry {shown} is a file where another entry needs a folder")
        for end in range(1, len(parts)):
            if parts[:end] in files:
                raise TaskError(
                    f"archive entry {shown} needs a folder where the entry "
                    f"{'/'.join(parts[:end])!r} is a file"
                )
            folders.add(parts[:end])
        files.add(parts)
        paths.append(parts)
    return paths


def unpack(data: bytes, destination: Path, max_bytes: int) -> None:
    """Extracts a tar from an untrusted source: regular files only, inside `destination`.

    Every entry is checked before anything is written, so a malformed archive is
    a bad result of its worker (a `TaskError`), never an `OSError` of this process.

    Args:
        data: the archive.
        destination: the folder to extract into.
        max_bytes: cap on the extracted content (the archive may be 1 MiB larger).

    Raises:
        TaskError: if the archive is too big, damaged, holds anything but plain
            relative files, or entries that are too long or clash with each other
            or with what `destination` already holds.
        OffloadError: if this machine cannot write to `destination` (full disk,
            read-only or not permitted): no worker can fix that.
    """
    if len(data) > archive_cap(max_bytes):
        raise TaskError(f"archive of {len(data)} bytes exceeds the cap of {archive_cap(max_bytes)}")
    target = destination
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise TaskError(f"archive holds more than {MAX_FILES} entries")
            paths = _entry_paths(members, destination)
            if sum(member.size for member in members) > max_bytes:
                raise TaskError(f"archive content exceeds the cap of {max_bytes} bytes")
            destination.mkdir(parents=True, exist_ok=True)
            for member, parts in zip(members, paths, strict=True):
                target = destination.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with open(target, "wb") as out:
                    out.write(source.read())
    except tarfile.TarError as error:
        raise TaskError(f"damaged archive: {error}") from None
    except OSError as error:
        if error.errno in _LOCAL_ERRNOS:
            raise OffloadError(
                f"cannot unpack a result into {str(destination)!r}: {error.strerror}"
            ) from None
        shown = _shown(target.relative_to(destination).as_posix())
        raise TaskError(f"archive entry {shown} cannot be written: {error.strerror}") from None


# ---------------------------------------------------------------- results


def check_task(task: dict[str, Any]) -> None:
    """A task.json has the fields a worker needs, with the right types."""
    if task.get("format") != FORMAT:
        raise TaskError(f"task format {task.get('format')!r}; this worker reads {FORMAT}")
    expected = {
        "run_id": str,
        "round": int,
        "shard": int,
        "attempt": int,
        "client_ids": list,
        "quantize": str,
        "config": dict,
        "inputs": dict,
    }
    for field, kind in expected.items():
        if not isinstance(task.get(field), kind):
            raise TaskError(f"task.json: {field} is missing or not a {kind.__name__}")
    if not task["client_ids"] or not all(isinstance(i, int) for i in task["client_ids"]):
        raise TaskError("task.json: client_ids must be a non-empty list of integers")
    if task["quantize"] not in quantize.MODES:
        raise TaskError(
            f"task.json: quantize {task['quantize']!r}; allowed: {', '.join(quantize.MODES)}"
        )
    for field, allowed in (("op", OPS), ("state", STATE_SOURCES)):
        if task.get(field) not in allowed:
            raise TaskError(
                f"task.json: {field} {task.get(field)!r}; allowed: {', '.join(allowed)}"
            )
    revert = task.get("revert")
    if not isinstance(revert, list) or not set(revert) <= set(task["client_ids"]):
        raise TaskError("task.json: revert must list some of the task's client ids")
    if not isinstance(task.get("return_state"), bool):
        raise TaskError("task.json: return_state is missing or not a bool")


def check_report(report: dict[str, Any], task: dict[str, Any]) -> None:
    """The report must be for this task: same run, round, shard and client ids."""
    from jfedrl import __version__

    if report.get("format") != FORMAT:
        raise TaskError(f"report format {report.get('format')!r}, expected {FORMAT}")
    for field in ("run_id", "round", "shard"):
        if report.get(field) != task[field]:
            raise TaskError(
                f"report is for {field} {report.get(field)!r}, expected {task[field]!r}"
            )
    if report.get("client_ids") != task["client_ids"]:
        raise TaskError("report is for other client ids")
    version = (report.get("versions") or {}).get("jfedrl")
    if version != __version__:
        raise TaskError(f"worker runs jfedrl {version!r}, the requestor {__version__!r}")
    returns = report.get("returns")
    if not isinstance(returns, list) or len(returns) != len(task["client_ids"]):
        raise TaskError("report has no return per client")


def read_result(
    result_dir: Path, task: dict[str, Any], spec: Spec
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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
    report = read_json(result_dir / REPORT_FILE, REPORT_FILE)
    check_report(report, task)
    arrays = restore_arrays(result_dir / STATE_DIR, spec)
    return arrays, report


def nonfinite_rows(arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
    """`[n]` True for each client with a non-finite returned state, param or return.

    Quantisation scales (`@scale`) are per client too; metrics are
    `[local_updates, n]`, everything else has the client axis first.
    """
    bad = np.zeros(n, bool)
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            continue
        if name.startswith(("clients/", "params/")) and array.ndim and array.shape[0] == n:
            bad |= ~np.isfinite(array.reshape(n, -1)).all(axis=1)
        elif name == "metrics/train_return":
            bad |= ~np.isfinite(array[-1])
    return bad
