"""One run over several processes or hosts, through JAX's multi-controller runtime.

Every process runs the same program (`jfedrl train --distributed`): after
`initialize`, `jax.devices()` lists every process's devices, the simulator's
`clients` mesh spans them all, and the jitted round runs unchanged, each process
computing its own devices' slices of the client axis. What the host does between
blocks splits in two: reading arrays (metrics, evaluation returns, env params) is
a collective every process takes part in, and writing files (logs, metrics,
plots, config) is process 0's alone; orbax writes checkpoints from every process.

On CPU the processes reduce over each other's devices through gloo
(`jax_cpu_collectives_implementation`), so two processes on one machine give
the same run as one process with two host devices.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jfedrl.config import Config, DistributedConfig
from jfedrl.schema.convert import to_dict

log = logging.getLogger("jfedrl")

#: Bytes of a string broadcast from process 0 (a run folder's path).
_TEXT_BYTES = 4096


def initialize(dist: DistributedConfig) -> None:
    """Joins the run's processes; call before JAX starts its backends.

    Empty fields are left to `jax.distributed.initialize`'s auto-detection
    (SLURM, Open MPI, Kubernetes, Cloud TPU).
    """
    # CPU devices of different processes can only reduce across processes through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=dist.coordinator or None,
        num_processes=dist.num_processes or None,
        process_id=None if dist.process_id < 0 else dist.process_id,
        initialization_timeout=dist.timeout,
    )


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; True when alone)."""
    return jax.process_index() == 0


def multiprocess() -> bool:
    return jax.process_count() > 1


def describe() -> str:
    """The place of this process in the run, for the start of `jfedrl train`."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} of {jax.device_count()} devices here"
    )


def host_value(tree: Any) -> Any:
    """`tree`'s arrays as NumPy arrays on this host, whatever their sharding.

    With several processes an array sharded over them is gathered, which is a
    collective: every process must call this with the same tree.
    """
    if not multiprocess():
        return jax.device_get(tree)

    def fetch(x: Any) -> Any:
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)


_barriers = itertools.count()


def barrier(name: str, timeout_seconds: int = 3600) -> None:
    """Waits until every process gets here, through the coordination service.

    Not a device collective: on CPU, gloo gives up on a collective (and on setting
    one up) when a process is 30 s late, and a process that compiled a program
    while another found it in the compilation cache is often later than that.
    Called after each compile, before the program runs.
    """
    if not multiprocess():
        return
    barrier_id = f"jfedrl/{name}/{next(_barriers)}"  # every barrier needs a fresh id
    wait = _coordination_barrier()
    if wait is None:
        multihost_utils.sync_global_devices(barrier_id)
        return
    wait(barrier_id, timeout_seconds * 1000)


@functools.cache
def _coordination_barrier() -> Callable[[str, int], None] | None:
    """The coordination service's `wait_at_barrier(id, timeout_ms)`, or None.

    Its client is not public API (`jax._src.distributed`); where a JAX release
    moved it, `barrier` falls back to `multihost_utils.sync_global_devices`, a
    device collective (subject to gloo's 30 s on CPU), and says so once.
    """
    try:
        from jax._src import distributed as runtime

        return runtime.global_state.client.wait_at_barrier
    except (ImportError, AttributeError) as error:
        log.warning(
            "distributed barrier: this JAX lacks the coordination client (%s); "
            "using multihost_utils.sync_global_devices",
            error,
        )
        return None


def any_process(flag: bool) -> bool:
    """Whether `flag` is True in some process (a collective; `flag` when alone)."""
    if not multiprocess():
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(flag))).any())


def broadcast_text(text: str) -> str:
    """Process 0's `text`, in every process (a collective; `text` when alone)."""
    if not multiprocess():
        return text
    data = text.encode()
    if len(data) > _TEXT_BYTES:
        raise ValueError(f"broadcast_text: {len(data)} bytes, at most {_TEXT_BYTES}")
    buffer = np.zeros(_TEXT_BYTES, np.uint8)
    buffer[: len(data)] = np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(received.astype(np.uint8)).rstrip(b"\0").decode()


def require_initialized(config: Config) -> None:
    """Raises `ConfigError` if `distributed.enabled` but this process never joined a run.

    Only `jfedrl train` initializes the runtime (before JAX starts); a run built in
    Python, or by another command, would otherwise quietly train alone.
    """
    from jfedrl.schema.checks import ConfigError

    if config.distributed.enabled and not jax.distributed.is_initialized():
        raise ConfigError(
            "distributed.enabled: this process has not joined a distributed run; launch it "
            "with `jfedrl train --distributed` (or call jfedrl.run.distributed.initialize before "
            "JAX starts)"
        )


def config_digest(config: Config) -> str:
    """A digest of everything in `config` but the `distributed` section (launch info)."""
    data = to_dict(config)
    data.pop("distributed", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(config: Config) -> None:
    """Raises `ConfigError` in every process if the processes were given different configs.

    Each process builds and compiles from its own config; a difference would run
    a program that does not match across processes (a hang or wrong results).
    """
    from jfedrl.schema.checks import ConfigError

    if not multiprocess():
        return
    mine = np.frombuffer(bytes.fromhex(config_digest(config)), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ConfigError(
            f"distributed: process(es) {differ} were given another config than process 0; "
            "every process needs the same config and flags (only distributed.* may differ)"
        )
