"""The worker: runs one shard's local training from a task folder.

    python -m offload.worker --serve          (what the local executor runs)

A worker restores the task, builds the simulator from the task's config
(`make_simulator`, cached per config) and runs the very same
`jfedrl.round.local.local_training` the in-process simulator runs, jitted and
compiled once per shard shape. `offload.serve` holds the entry points (one
task, or a loop over JSON requests, keeping one `Worker` alive).

Sticky clients: after training, a worker keeps its shard's new client states
(and those it started from) keyed by run and shard. A task with `state:
cache` carries no client states: the worker starts from its own copy, first
putting back the pre-round state of the clients the requestor rejected last
round (`revert`). `return_state` asks for the states in the result (a state
sync); `op: fetch` only returns them. A worker that does not hold what a task
asks for answers with an error starting `cache miss`, and the requestor sends
the states.

Inputs or outputs ending in `.tar` are unpacked / packed (what a Golem
provider receives and returns).

Fault injection (tests) is a hook called at fixed stages of a task; see
`offload.faults`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jfedrl.run.devices import clients_that_fit
from offload.archive import (
    DIGESTS_FILE,
    TaskError,
    digest_tree,
    pack,
    read_json,
    restore_arrays,
    save_arrays,
    unpack,
    verify_digests,
    write_json,
)
from offload.faults import FaultHook, no_faults
from offload.shapes import (
    ShardShapes,
    decode_group,
    encode_group,
    shard_config,
    shard_shapes,
    strip_params_jit,
    task_spec,
    tree_bytes,
    with_params_jit,
    with_participants,
)
from offload.source import stale_image_error, worker_source_hash
from offload.task import (
    INPUTS_DIR,
    REPORT_FILE,
    STATE_DIR,
    TASK_FILE,
    Report,
    TaskHeader,
)

#: Cap on an input archive (the requestor's own upload).
MAX_INPUT_BYTES = 16 << 30

Progress = Callable[[str, dict[str, Any]], None]


# ---------------------------------------------------------------- the worker


def versions() -> dict[str, str]:
    import jax
    import jaxlib

    from jfedrl import __version__

    return {
        "jfedrl": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "source": worker_source_hash(),
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
    import jax

    if not rows:
        return after
    index = np.asarray(rows)

    def put(new, old):
        new = np.array(new, copy=True)
        new[index] = np.asarray(old)[index]
        return new

    return jax.tree.map(put, after, before)


def load_plugins(config_dict: dict[str, Any]) -> None:
    """Imports the plugin modules a task's config names, before its config is built.

    The requestor puts the folders it loaded them from on this process's
    `PYTHONPATH` (`offload.plugin.local_executor`).

    Raises:
        TaskError: naming `plugins`, if one cannot be imported here.
    """
    from jfedrl import plugins

    try:
        plugins.load_modules(config_dict.get("plugins") or ())
    except ValueError as error:
        raise TaskError(str(error)) from None


class Worker:
    """Runs tasks, keeping each config's simulator and compiled step across tasks."""

    def __init__(self):
        self._simulators: dict[str, Any] = {}
        self._compiled: dict[tuple[int, int], Any] = {}
        self._cache: dict[tuple[str, int], ShardCache] = {}

    def simulator(self, config_dict: dict[str, Any]):
        load_plugins(config_dict)
        from jfedrl.config import from_dict
        from jfedrl.round.simulator import make_simulator

        key = json.dumps(config_dict, sort_keys=True)
        if key not in self._simulators:
            self._simulators[key] = make_simulator(from_dict(config_dict))
        return self._simulators[key]

    def _shapes(self, simulator, n: int) -> ShardShapes:
        """A shard's shapes, traced over a federation of only its `n` clients where it can be
        (`shard_config`): the worker builds nothing that grows with the federation but the
        peer arrays every task carries.
        """
        from jfedrl.round.simulator import make_simulator

        small = shard_config(simulator.config, n)
        if small is None:
            return shard_shapes(simulator, n)
        key = json.dumps(dataclasses.asdict(small), sort_keys=True, default=str)
        if key not in self._simulators:
            self._simulators[key] = make_simulator(small)
        shapes = shard_shapes(self._simulators[key], n)
        return with_participants(shapes, simulator.padded_participants)

    def _step(self, simulator, n: int, args: tuple, progress: Progress) -> tuple[Any, bool]:
        """The compiled local training for `n` clients (compiled on first use)."""
        import jax

        from jfedrl.round.local import local_training

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
        hook: FaultHook = no_faults,
    ) -> tuple[Report, str]:
        """Runs one task; writes the result folder (or `.tar`).

        Returns:
            The report, and the SHA-256 of the result archive ("" for a folder):
            sent apart from the file (a Golem task prints it), so any change the
            transfer makes to the archive shows, even in tar padding.

        Raises:
            TaskError: if the task folder is damaged or does not match its config.
        """
        progress = progress or (lambda event, data: None)
        input_path, output_path = Path(input_path), Path(output_path)
        cleanup = []
        try:
            if input_path.suffix == ".tar" and input_path.is_file():
                unpacked = input_path.with_name(input_path.name + ".d")
                shutil.rmtree(unpacked, ignore_errors=True)
                unpack(input_path.read_bytes(), unpacked, MAX_INPUT_BYTES)
                cleanup.append(unpacked)
                input_path = unpacked
            if output_path.suffix != ".tar":
                return self._run(input_path, output_path, progress, hook), ""
            staging = output_path.with_name(output_path.name + ".d")
            shutil.rmtree(staging, ignore_errors=True)
            cleanup.append(staging)
            report = self._run(input_path, staging, progress, hook)
            partial_tar = output_path.with_name(output_path.name + ".part")
            archive = pack(staging)
            partial_tar.write_bytes(archive)
            partial_tar.replace(output_path)
            return report, hashlib.sha256(archive).hexdigest()
        except (KeyError, TypeError) as error:
            raise TaskError(f"malformed task: {type(error).__name__}: {error}") from None
        finally:
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)

    def _run(self, task_dir: Path, out: Path, progress: Progress, hook: FaultHook) -> Report:
        start = time.perf_counter()
        task = TaskHeader.from_json(read_json(task_dir / TASK_FILE, TASK_FILE))
        stale = stale_image_error(str(task.versions.get("source", "")))
        if stale is not None:
            raise TaskError(stale)
        verify_digests(task_dir, task.inputs, exclude=(TASK_FILE,))
        hook("start", task, None)
        _check_shard(task)
        simulator = self.simulator(task.config)
        shapes = self._shapes(simulator, len(task.client_ids))
        _check_arrays(simulator.config.federation.num_clients, len(task.client_ids), shapes)
        spec = task_spec(shapes, task.quantize, task.op, task.state)
        arrays = restore_arrays(task_dir / INPUTS_DIR, spec) if spec else {}
        if task.state == "cache":
            stripped = self._kept_states(task)
        else:
            stripped = decode_group("clients", arrays, shapes.clients, rows=False)
        if task.op == "fetch":
            result = encode_group("clients", stripped, "none", False, False)[0]
            out.mkdir(parents=True, exist_ok=True)
            save_arrays(out / STATE_DIR, result)
            hook("saved", task, None)
            return self._finish(task, out, hook, {"total": time.perf_counter() - start})
        args = _training_args(simulator.algorithm, shapes, arrays, stripped)
        restored = time.perf_counter()

        step, fresh = self._step(simulator, len(task.client_ids), args, progress)
        _check_compiled(step, len(task.client_ids))
        compiled = time.perf_counter()
        progress("compiled", {"seconds": compiled - restored, "fresh": fresh})
        hook("compiled", task, None)
        new_params, new_stripped, metrics = _train(simulator.algorithm, step, args)
        trained = time.perf_counter()
        self._cache[(task.run_id, task.shard)] = ShardCache(
            task.round, list(task.client_ids), stripped, new_stripped
        )
        new_params = hook("params", task, new_params)
        result, error = encode_group("params", new_params, task.quantize, True, True)
        if task.return_state:
            result.update(encode_group("clients", new_stripped, "none", False, False)[0])
        result.update({f"metrics/{name}": value for name, value in metrics.items()})
        result = hook("result", task, result)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise TaskError(f"output folder {str(out)!r} is not empty")
        save_arrays(out / STATE_DIR, result)
        hook("saved", task, None)
        timings = {
            "restore": restored - start,
            "compile": compiled - restored,
            "compiled_fresh": fresh,
            "train": trained - compiled,
            "total": time.perf_counter() - start,
        }
        steps = simulator.config.federation.local_updates * simulator.algorithm.env_steps_per_update
        returns = metrics.get("train_return")
        last = returns[-1] if returns is not None else np.full(len(task.client_ids), np.nan)
        trained_fields = {
            "returns": tuple(float(r) if np.isfinite(r) else None for r in last),
            "env_steps": len(task.client_ids) * steps,
            "quantize_error": {
                "relative": error.relative_error,
                "max_abs": error.max_abs_error,
                "raw_bytes": error.raw_bytes,
                "encoded_bytes": error.encoded_bytes,
            },
        }
        return self._finish(task, out, hook, timings, trained_fields)

    def _kept_states(self, task: TaskHeader) -> Any:
        """The shard's kept states for this task's round, with `revert` applied.

        Raises:
            CacheMiss: if this worker does not hold them (a new or restarted worker).
        """
        cache = self._cache.get((task.run_id, task.shard))
        if cache is None or cache.client_ids != list(task.client_ids):
            raise CacheMiss(f"no kept state for shard {task.shard} of run {task.run_id}")
        if cache.round == task.round and task.op == "train":
            return cache.before  # a retry of the round last trained
        if cache.round != task.round - 1:
            raise CacheMiss(
                f"kept state of shard {task.shard} is for round {cache.round + 2}, "
                f"not {task.round + 1}"
            )
        rows = [cache.client_ids.index(i) for i in task.revert]
        cache.after = _revert_rows(cache.after, cache.before, rows)
        cache.before = cache.after
        return cache.after

    def _finish(
        self,
        task: TaskHeader,
        out: Path,
        hook: FaultHook,
        timings: dict[str, Any],
        trained: dict[str, Any] | None = None,
    ) -> Report:
        """Writes the report and the digests next to the saved arrays; returns the report."""
        import jax

        report = Report(
            run_id=task.run_id,
            round=task.round,
            shard=task.shard,
            attempt=task.attempt,
            op=task.op,
            client_ids=task.client_ids,
            returns=(None,) * len(task.client_ids),
            quantize=task.quantize,
            timings=timings,
            device=str(jax.devices()[0]),
            platform=jax.default_backend(),
            versions=versions(),
        )
        report = hook("report", task, dataclasses.replace(report, **(trained or {})))
        write_json(out / REPORT_FILE, report.to_json())
        write_json(out / DIGESTS_FILE, {"algorithm": "sha256", "files": digest_tree(out)})
        hook("written", task, out)
        return report


# ---------------------------------------------------------------- refusing what does not fit

#: A task's arrays are held about this many times at once (the restored inputs, the
#: decoded trees and their device copies, the results); the margin the worker keeps
#: when it checks them against the memory it has.
HOST_COPIES = 3


def available_bytes() -> int:
    """Host memory this worker can still use (what the kernel reports as available)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _amount(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"


def _check_shard(task: TaskHeader) -> None:
    """The cheap checks, before anything is built: the shard names clients the config has.

    Raises:
        TaskError: naming the field.
    """
    load_plugins(task.config)
    from jfedrl.config import from_dict

    num_clients = from_dict(task.config).federation.num_clients
    if not isinstance(num_clients, int) or num_clients < 1:
        raise TaskError(f"federation.num_clients: {num_clients!r}; must be an integer >= 1")
    ids = task.client_ids
    if len(set(ids)) != len(ids) or not all(0 <= i < num_clients for i in ids):
        raise TaskError(
            f"client_ids: must be distinct clients in [0, {num_clients}) (federation.num_clients)"
        )
    if not 0 <= task.shard < task.num_shards:
        raise TaskError(f"shard: {task.shard} is not in [0, num_shards={task.num_shards})")


def _check_arrays(num_clients: int, n: int, shapes: ShardShapes) -> None:
    """Refuses a task whose arrays would not fit in this worker's memory, before any is
    read: first the part every task carries for the whole federation (the peer weights,
    one per participant), then the shard's own, each `HOST_COPIES` times.

    Raises:
        TaskError: naming `federation.num_clients` or `client_ids`, the need and the limit.
    """
    capacity = available_bytes()
    wide = HOST_COPIES * tree_bytes((shapes.peer_params, shapes.peer_weights))
    if wide > capacity:
        raise TaskError(
            f"federation.num_clients: {num_clients} clients: the peer arrays every task "
            f"carries need about {_amount(wide)}, this worker has {_amount(capacity)} available"
        )
    need = HOST_COPIES * tree_bytes([x for x in shapes if not isinstance(x, bool)])
    if need > capacity:
        fit = clients_that_fit(need, n, capacity, wide)
        raise TaskError(
            f"client_ids: a shard of {n} clients needs about {_amount(need)} of arrays, this "
            f"worker has {_amount(capacity)} available; about {fit} clients fit (use more "
            "offload.shards)"
        )


def _check_compiled(step: Any, n: int) -> None:
    """Refuses a shard whose compiled local training needs more than the device has (XLA's
    memory analysis, as `jfedrl train --dry-run`), before it runs.

    Raises:
        TaskError: naming `client_ids`, the need and the limit.
    """
    import jax

    from jfedrl.run.devices import device_memory_bytes, memory_estimate

    estimate = memory_estimate(step)
    capacity = device_memory_bytes(jax.devices()[0])
    if estimate is None or capacity is None or estimate.total <= capacity:
        return
    fit = clients_that_fit(estimate.total, n, capacity)
    raise TaskError(
        f"client_ids: a shard of {n} clients needs about {_amount(estimate.total)} (the "
        f"compiled local training), this worker has {_amount(capacity)} available; about "
        f"{fit} clients fit (use more offload.shards)"
    )


def _training_args(algorithm, shapes: ShardShapes, arrays: dict, stripped: Any) -> tuple:
    """`local_training`'s arguments from a task's arrays and the clients' stripped states."""
    from jfedrl.algorithms.base import Reference

    stacked = shapes.stacked_reference
    global_params = decode_group("global", arrays, shapes.global_params, rows=stacked)
    reference = Reference(
        global_params,
        decode_group("peers", arrays, shapes.peer_params, rows=True),
        decode_group("peer_weights", arrays, shapes.peer_weights, rows=False),
    )
    if shapes.start_params is not None:  # each client starts from its own params
        own = decode_group("start", arrays, shapes.start_params, rows=True)
        clients = with_params_jit(algorithm, stripped, own, True)
    else:
        clients = with_params_jit(algorithm, stripped, global_params, False)
    env_params = decode_group("env", arrays, shapes.env_params, rows=False)
    keys = decode_group("keys", arrays, shapes.keys, rows=False)
    num_updates = None
    if shapes.num_updates is not None:
        num_updates = decode_group("updates", arrays, shapes.num_updates, rows=False)
    return keys, clients, env_params, reference, num_updates


def _train(algorithm, step, args: tuple) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Runs the compiled step; the new params, new stripped states and metrics, on the host."""
    import jax

    new_clients, metrics = step(*args)
    new_params = jax.device_get(jax.vmap(algorithm.get_params)(new_clients))
    new_stripped = jax.device_get(strip_params_jit(algorithm, new_clients))
    return new_params, new_stripped, {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


if __name__ == "__main__":  # `python -m offload.worker`: what the local executor runs
    from offload.serve import run_main

    sys.exit(run_main())
