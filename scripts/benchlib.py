"""What the benchmark scripts share: timing, machine facts, and their output files.

Each benchmark writes `bench/<name>.json` (every figure, for later analysis) and
`bench/<name>.md` (the table the docs quote), and states the machine it ran on.
This module imports no jax at its top, so the Flower side of `bench_vs_peers`
can use it from an interpreter without jax.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def time_calls(fn: Callable[..., Any], *args: Any, reps: int) -> tuple[float, float]:
    """Times a jitted call: the first (compile + run), then the median of `reps` more.

    Each call waits for its results (`block_until_ready`), so the time is the
    computation's, not its dispatch's.

    Returns:
        (seconds of the first call, median seconds of the `reps` further calls).
    """
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return first, statistics.median(samples)


def _proc_lines(path: str, prefix: str) -> list[str]:
    """The values of `/proc/<file>` lines starting with `prefix` ([] if unreadable)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)]


def machine(with_jax: bool = True) -> dict[str, Any]:
    """Facts about this machine that a benchmark's figures depend on.

    Args:
        with_jax: include jax, jaxlib, the backend and its device count (imports jax).
    """
    flags = f" {(_proc_lines('/proc/cpuinfo', 'flags') or [''])[0]} "
    memory = (_proc_lines("/proc/meminfo", "MemTotal") or ["0 kB"])[0]
    facts: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": (_proc_lines("/proc/cpuinfo", "model name") or [platform.machine()])[0],
        "cpu_features": [f for f in ("avx2", "avx512f", "fma") if f" {f} " in flags],
        "cores": os.cpu_count(),
        "memory_gib": int(memory.split()[0]) / 2**20,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }
    if with_jax:
        import jax
        import jaxlib

        facts.update(
            jax=jax.__version__,
            jaxlib=jaxlib.__version__,
            backend=jax.default_backend(),
            devices=jax.device_count(),
        )
    return facts


def describe(facts: dict[str, Any] | str) -> str:
    """The machine in one line, for a report's header (reports before `machine` hold it so)."""
    if isinstance(facts, str):
        return facts
    text = f"{facts['cpu']}, {facts['cores']} cores"
    if "jax" in facts:
        text += f", jax {facts['jax']} ({facts['backend']}, {facts['devices']} device(s))"
    return text


def finish(facts: dict[str, Any]) -> dict[str, Any]:
    """`facts` with the load average at the end: other jobs on the machine skew the figures."""
    return dict(facts, loadavg_at_end=list(os.getloadavg()))


def load_averages(facts: dict[str, Any] | str) -> tuple[float, float] | None:
    """The 1-minute load averages at the start and end of a run (None if not recorded)."""
    if isinstance(facts, str) or "loadavg_at_end" not in facts:
        return None
    return facts["loadavg_at_start"][0], facts["loadavg_at_end"][0]


def load_note(load: tuple[float, float] | None) -> str:
    """A sentence on how busy the machine was (from `load_averages`), or "" if unknown."""
    if not load:
        return ""
    cores = os.cpu_count() or 1
    start = (
        "The machine was otherwise idle at the start"
        if load[0] < 0.5 * cores
        else "Other jobs shared the machine"
    )
    return (
        f"{start} (1-minute load average {load[0]:.1f}; {load[1]:.1f} at the end, the run's "
        f"own work included; {cores} cores); compare ratios within this file, not figures "
        "from other days."
    )


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """Writes `<out>.json` and `<out>.md` (creating their folder) and says so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown)
    print(f"wrote {json_path} and {md_path}", flush=True)
