"""The `offload.ray` config section (a light module: the config schema imports it).

`jfedrl.config` adds it to `OffloadConfig` through the `ray` executor's
`ExecutorSpec.section` (offload.plugin), so it exists only where offload is
installed. It must not import `jfedrl.config` (that module is being built),
nor Ray (imported only when the executor runs).
"""

from __future__ import annotations

from dataclasses import dataclass

#: How a task's folder reaches its actor and the result comes back.
RAY_TRANSFERS = ("objects", "path")


@dataclass(frozen=True)
class RayConfig:
    """Ray executor: one long-lived Ray actor per worker; see docs/offload.md."""

    address: str = ""
    """Cluster to join: empty starts a local Ray instance for the run (stopped with it);
    `auto` joins the cluster this machine belongs to; `ray://HOST:PORT` connects through Ray
    Client; `HOST:PORT` joins a cluster's head node."""
    num_cpus: float = 1.0
    """CPUs each actor requests (the Ray resource; Ray schedules, it does not pin)."""
    num_gpus: float = 0.0
    """GPUs each actor requests (0: CPU actors; 1: one GPU per actor, fractions share one)."""
    transfer: str = "objects"
    """`objects`: task and result travel as Ray objects (tar bytes; works on any cluster);
    `path`: actors read and write the run folder directly (same machine or a shared
    filesystem mounted at the same path)."""
    local_cpus: int = 0
    """CPUs of the local Ray instance started when `address` is empty (0: enough for one
    actor per shard)."""
