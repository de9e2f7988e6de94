"""The host device layout, chosen before JAX's backend starts, and what a compiled round needs.

On CPU, XLA gives a process one device however many cores it has, and a jitted
round then keeps little more than one core busy. JAX's `jax_num_cpu_devices`
option (or, where a JAX lacks it, `--xla_force_host_platform_device_count` in
`$XLA_FLAGS`) splits the host into N devices; the simulator shards its clients
over a `clients` mesh of all local devices, so N devices run N slices of the
client axis at once with results equal to the one-device run. The count must be
set before JAX initialises its backends (the first array or device query), not
before `import jax`; the CLI calls `configure_host_devices` before anything
computes. On a GPU the count only shapes the (unused) CPU platform, so it is
harmless there.

Override order: `--host-devices N` (the CLI), then `$JFEDRL_HOST_DEVICES`, then
the device count already in `$XLA_FLAGS` (left as it is), then the default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

FLAG = "--xla_force_host_platform_device_count"
ENV_VAR = "JFEDRL_HOST_DEVICES"


@dataclass(frozen=True)
class HostLayout:
    """The host device count in force and where it came from."""

    devices: int
    source: str  # "flag", "env", "XLA_FLAGS", "default", or "backend already initialised"
    wanted: int | None = None
    """The count that would have been set, where the backend had started first."""

    def describe(self) -> str:
        if self.wanted is not None and self.wanted != self.devices:
            return (
                f"{self.devices} XLA host device(s), not the {self.wanted} wanted: JAX's "
                "backend started before jfedrl could set the count (a module that computes "
                "with JAX when imported, such as a plugin, starts it; CPU backend only)"
            )
        return f"{self.devices} XLA host device(s) ({self.source}; CPU backend only)"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity mask
        return os.cpu_count() or 1


def default_host_devices(participants: int, cores: int) -> int:
    """The fewest devices (at most one per core) that minimise the slowest device's work.

    The simulator pads the participants to a multiple of the device count, so the
    round takes as long as `ceil(participants / devices)` clients on one device.
    One participant gets one device (a second would only run padding); three on
    two cores get two (one padded slot, but two clients side by side).

    Args:
        participants: clients training each round (`participants_per_round`).
        cores: usable cores.
    """
    if participants < 1 or cores < 1:
        raise ValueError(f"participants and cores must be >= 1, got {participants}, {cores}")
    per_device = [-(-participants // d) for d in range(1, cores + 1)]
    return per_device.index(min(per_device)) + 1


def _flag_in_xla_flags() -> int | None:
    for part in os.environ.get("XLA_FLAGS", "").split():
        if part.startswith(FLAG + "="):
            return int(part.split("=", 1)[1])
    return None


#: Host devices allowed per usable core (and at least `MIN_DEVICE_LIMIT`): XLA starts a
#: thread pool per device, and thousands of devices hang or abort it.
DEVICES_PER_CORE = 8
MIN_DEVICE_LIMIT = 64


def max_host_devices(cores: int | None = None) -> int:
    """The most host devices `--host-devices` (or `$JFEDRL_HOST_DEVICES`) may ask for."""
    return max(MIN_DEVICE_LIMIT, DEVICES_PER_CORE * (usable_cores() if cores is None else cores))


def _parse_count(value: str, where: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{where}: must be a whole number >= 1, got {value!r}")
    limit = max_host_devices()
    if count > limit:
        raise ValueError(
            f"{where}: must be at most {limit} (max({MIN_DEVICE_LIMIT}, {DEVICES_PER_CORE} x "
            f"{usable_cores()} usable cores)), got {value!r}"
        )
    return count


def _backend_initialised() -> bool:
    """Whether JAX has started its backends, after which the CPU device count is fixed.

    `jax._src.xla_bridge.backends_are_initialized` is private (jax 0.4 through
    0.11); where it is missing, an imported jax counts as started, the rule of
    jax versions before `jax_num_cpu_devices`.
    """
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True


def _set_num_cpu_devices(count: int) -> bool:
    """Sets JAX's `jax_num_cpu_devices`; False where this JAX has no such option."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except AttributeError:  # "Unrecognized config option"
        return False
    return True


def configure_host_devices(participants: int, requested: int | None = None) -> HostLayout:
    """Sets the CPU device count, unless JAX's backend has already started.

    Through JAX's `jax_num_cpu_devices` option (which imports jax but starts no
    backend); a JAX without it gets `--xla_force_host_platform_device_count` in
    `$XLA_FLAGS`. A count the user put in `$XLA_FLAGS` is left as it is.

    Args:
        participants: clients training each round, for the default layout.
        requested: `--host-devices`, if given (wins over everything else).

    Returns:
        The layout in force. Once JAX's backend is initialised the count cannot
        change any more, so nothing is set and the layout says so.

    Raises:
        ValueError: `requested` or `$JFEDRL_HOST_DEVICES` is not a count in range.
    """
    if requested is not None:
        count, source = _parse_count(str(requested), "--host-devices"), "flag"
    elif os.environ.get(ENV_VAR):
        count, source = _parse_count(os.environ[ENV_VAR], ENV_VAR), "env"
    elif _flag_in_xla_flags() is not None:
        count, source = _flag_in_xla_flags(), "XLA_FLAGS"
    else:
        count, source = default_host_devices(participants, usable_cores()), "default"
    if _backend_initialised():
        import jax

        return HostLayout(jax.local_device_count("cpu"), "backend already initialised", count)
    if source == "XLA_FLAGS" or _set_num_cpu_devices(count):
        return HostLayout(count, source)
    os.environ["XLA_FLAGS"] = with_host_device_count(os.environ.get("XLA_FLAGS", ""), count)
    return HostLayout(count, source)


def with_host_device_count(xla_flags: str, count: int) -> str:
    """`xla_flags` (an `XLA_FLAGS` value) with its host device count set to `count`."""
    others = [p for p in xla_flags.split() if not p.startswith(FLAG + "=")]
    return " ".join([*others, f"{FLAG}={count}"])


@dataclass(frozen=True)
class MemoryEstimate:
    """XLA's memory analysis of one compiled program, in bytes."""

    arguments: int
    outputs: int
    temporaries: int
    code: int
    aliased: int

    @property
    def total(self) -> int:
        """Peak device bytes: donated (aliased) outputs reuse their arguments' buffers."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def memory_estimate(compiled: Any) -> MemoryEstimate | None:
    """XLA's memory analysis of `compiled` (a `jax.stages.Compiled`), None if unavailable.

    `Compiled.memory_analysis()` exists from jax 0.4 through 0.11; some backends
    return None or raise NotImplementedError.
    """
    try:
        stats = compiled.memory_analysis()
    except NotImplementedError:
        return None
    if stats is None:
        return None
    return MemoryEstimate(
        arguments=int(stats.argument_size_in_bytes),
        outputs=int(stats.output_size_in_bytes),
        temporaries=int(stats.temp_size_in_bytes),
        code=int(stats.generated_code_size_in_bytes),
        aliased=int(stats.alias_size_in_bytes),
    )


def device_memory_bytes(device: Any) -> int | None:
    """Memory available to `device`: its allocator limit on GPU, free RAM on CPU."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def clients_that_fit(total_bytes: int, clients: int, capacity: int, fixed_bytes: int = 0) -> int:
    """How many clients fit in `capacity` bytes if memory grows linearly with clients.

    Args:
        total_bytes: the compiled round's peak bytes at `clients` clients.
        clients: the client count it was compiled for.
        capacity: bytes available.
        fixed_bytes: the part that does not grow with clients (0 gives a lower bound).
    """
    per_client = max(total_bytes - fixed_bytes, 1) / clients
    return max(int((capacity - fixed_bytes) // per_client), 0)


class MemoryCheckError(ValueError):
    """The compiled round needs more memory than the devices have (`check_fits`)."""


def check_fits(estimate: MemoryEstimate | None, clients: int, devices: list[Any]) -> None:
    """Refuses a run whose compiled block needs more memory than `devices` have.

    The arithmetic of `jfedrl train --dry-run`: the block's peak bytes per device
    (XLA's memory analysis) times the device count, against the allocator limit
    of an accelerator (summed over the devices) or the host's available RAM (CPU
    devices share it). Nothing is checked when the backend gives no estimate or
    no capacity.

    Raises:
        MemoryCheckError: naming `federation.num_clients`, the need, what is
            available and about how many clients fit (a lower bound).
    """
    if estimate is None or not devices:
        return
    capacity = device_memory_bytes(devices[0])
    if capacity is None:
        return
    count = len(devices)
    if devices[0].platform != "cpu":
        capacity *= count
    need = estimate.total * count
    if need <= capacity:
        return
    fit = clients_that_fit(need, clients, capacity)
    raise MemoryCheckError(
        f"federation.num_clients: {clients} clients need about {_amount(need)} "
        f"(the compiled block on {count} {devices[0].platform} device(s), as --dry-run "
        f"estimates), {_amount(capacity)} is available; about {fit} clients fit. "
        "Use fewer clients, or --force-memory to run anyway"
    )


def _amount(size: float) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"
