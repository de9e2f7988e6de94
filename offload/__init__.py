"""Offload: a round's local training as tasks for worker processes or Golem providers.

Two executors, found by `jfedrl.plugins` through this package's entry points
(`offload.plugin`):

- `local`: long-lived worker processes on this machine (one per shard);
- `golem`: Golem Network providers through yapapi 0.13.1 (imported lazily).

Both run the same `jfedrl.round.local.local_training` on a shard of clients and
hand the results to the same `Simulator.aggregate` (docs/offload.md). A round,
module by module: `requestor` (the round's steps) -> `shapes` (what a shard
holds) -> `task` (header, report) and `archive` (caps, digests, files) ->
`executors` / `golem` -> `worker` -> `assemble` -> `Simulator.aggregate`.

Importing the package costs nothing heavy: the names below load their module
(and JAX) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Executor": "offload.executors",
    "Job": "offload.executors",
    "LocalExecutor": "offload.executors",
    "Outcome": "offload.executors",
    "OffloadError": "offload.archive",
    "TaskError": "offload.archive",
    "OffloadRunner": "offload.requestor",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'offload' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
