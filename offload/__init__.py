"""Offload: a round's local training as tasks for worker processes or Golem providers.

Importing this package registers two executors with `jfedrl.runner`:

- `local`: long-lived worker processes on this machine (one per shard);
- `golem`: Golem Network providers through yapapi 0.13.1 (imported lazily).

Both run the same `jfedrl.federated.local_training` on a shard of clients and
hand the results to the same `Simulator.aggregate` (docs/offload.md).
"""

from __future__ import annotations

from pathlib import Path

import jax

from jfedrl.runner import register_executor
from offload.executors import Executor, Job, LocalExecutor, Outcome
from offload.requestor import OffloadRunner
from offload.task import OffloadError, TaskError


def _worker_env(work_dir: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env["JFEDRL_COMPILATION_CACHE"] = str(cache)  # workers share the requestor's cache
    env["JFEDRL_WORK_DIR"] = str(work_dir)
    return env


def _local(simulator, work_dir: Path, num_shards: int) -> Executor:
    offload = simulator.config.offload
    return LocalExecutor(
        num_workers=num_shards,
        work_dir=work_dir / "workers",
        task_timeout=offload.task_timeout,
        compile_timeout=offload.compile_timeout,
        env=_worker_env(work_dir),
    )


def _golem(simulator, work_dir: Path, num_shards: int) -> Executor:
    from offload.golem import GolemExecutor

    config = simulator.config
    return GolemExecutor(config.offload.golem, work_dir / "golem", config.federation.rounds)


def make_local_runner(simulator, run_dir: Path) -> OffloadRunner:
    """The `local` executor: worker processes on this machine."""
    return OffloadRunner(simulator, run_dir, _local)


def make_golem_runner(simulator, run_dir: Path) -> OffloadRunner:
    """The `golem` executor: Golem providers (needs a running yagna and `YAGNA_APPKEY`)."""
    return OffloadRunner(simulator, run_dir, _golem)


register_executor("local", make_local_runner)
register_executor("golem", make_golem_runner)

__all__ = [
    "Executor",
    "Job",
    "LocalExecutor",
    "OffloadError",
    "OffloadRunner",
    "Outcome",
    "TaskError",
    "make_golem_runner",
    "make_local_runner",
]
