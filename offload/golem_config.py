"""The `offload.golem` config section (a light module: the config schema imports it).

`jfedrl.config` adds it to `OffloadConfig` through the `golem` executor's
`ExecutorSpec.section` (offload.plugin), so it exists only where offload is
installed. It must not import `jfedrl.config` (that module is being built).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GolemConfig:
    """Golem Network executor (yapapi 0.13.1); see docs/offload.md.

    The app key is read from `YAGNA_APPKEY` only (never from a config) and the
    daemon's address from `YAGNA_API_URL`.
    """

    budget: float = 1.0
    """Most GLM the run may spend (the yapapi allocation)."""
    subnet: str = "public"
    """Provider subnet tag."""
    payment_driver: str = "erc20"
    """Payment driver (yagna 0.17 has only `erc20`)."""
    payment_network: str = "holesky"
    """Payment network: `holesky` (testnet) or `polygon` (mainnet)."""
    image_hash: str = ""
    """SHA3-224 hash of the provider image (printed by scripts/build_golem_image.sh)."""
    image_tag: str = ""
    """Registry tag of the provider image (`user/jfedrl:0.1.0`), instead of the hash."""
    image_url: str = ""
    """Direct URL of the `.gvmi` image (with `image_hash`; skips the registry lookup)."""
    gpu: bool = False
    """Ask for GPU providers (runtime `vm-nvidia`, capability `!exp:gpu`; use the CUDA image)."""
    min_mem_gib: float = 4.0
    """Least provider memory, GiB."""
    min_storage_gib: float = 4.0
    """Least provider disk, GiB."""
    min_cpu_threads: int = 2
    """Least provider CPU threads."""
    max_workers: int = 4
    """Most providers working at the same time."""
    task_timeout: float = 600.0
    """Seconds one task may take on a provider (upload, run, download); then the provider is
    excluded and the task retried elsewhere."""
    offer_timeout: float = 300.0
    """Seconds a task may wait for a provider to take it (with no agreement at all yet, the run
    fails; later, the attempt fails and is retried)."""
    spare_wait: float = 30.0
    """Seconds a shard's task waits for a fresh provider; then a healthy provider that serves
    another shard takes it too (its worker keeps several shards' client states), so a run
    needs no more providers than it finds."""
    verify_fraction: float = 0.0
    """Fraction of shard tasks per round (drawn from the run's seed) that also run on a second
    provider; results that differ bring a third run, and the provider outvoted is excluded
    (needs offload.state_sync_rounds 0: the second provider gets the clients' states)."""
    verify_tolerance: float = 0.0
    """Largest |a - b| / (1 + |b|) between two providers' results that still agree (0: they
    must be bit-identical, right where the providers' CPUs match)."""
    health_interval: float = 20.0
    """Seconds between checks that a working provider's activity still answers; after 3 missed
    checks in a row it counts as lost: its task fails at once and it is excluded."""
    worker_command: str = "/opt/venv/bin/jfedrl offload worker"
    """The worker command inside the provider image."""
