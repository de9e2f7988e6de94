"""Throughput and memory of the federated round on an accelerator.

For each (environment, client count): compile seconds, env steps/s, and XLA's
memory analysis of the compiled round (`jfedrl.devices.memory_estimate`); from
the two smallest counts of an environment, the bytes per client and the
largest client count that fits in the device's memory. Writes bench/gpu.json
and bench/gpu.md (or the `--out` stem). A count that fails to compile or run
(out of memory) is recorded with its error and the next one still runs.

Uses only APIs present in jax 0.9 through 0.11 (`jit(...).lower().compile()`,
`Compiled.memory_analysis()`, `Device.memory_stats()`).

Usage:
    python -m scripts.bench_gpu                 # CartPole 256/1024/4096, brax-hopper 64/256
    python -m scripts.bench_gpu --cpu-smoke     # a tiny CPU run of the same code (CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scripts import benchlib
from scripts.bench_throughput import time_blocks

#: (env, client counts, config overrides): the issue's GPU plan.
PLAN = (
    ("CartPole-v1", (256, 1024, 4096), {}),
    ("brax-hopper", (64, 256), {"algo.ppo.num_steps": 64}),
)
SMOKE_PLAN = (("CartPole-v1", (2, 4), {}),)
SMOKE_SETTINGS = {
    "algo.ppo.num_envs": 2,
    "algo.ppo.num_steps": 8,
    "algo.ppo.update_epochs": 1,
    "algo.ppo.num_minibatches": 1,
    "algo.ppo.hidden_sizes": [8, 8],
    "federation.local_updates": 1,
}
#: The throughput benchmark's PPO shape (bench_throughput.py).
SETTINGS = {
    "algo.ppo.num_envs": 4,
    "algo.ppo.num_steps": 128,
    "algo.ppo.update_epochs": 4,
    "algo.ppo.num_minibatches": 4,
    "federation.local_updates": 4,
}


def measure(env: str, clients: int, settings: dict, seconds: float) -> dict:
    """One (env, clients) point: compile, warm-up block, then timed blocks."""
    import jax

    from jfedrl import devices
    from jfedrl.config import Config
    from jfedrl.federated import Simulator, make_simulator
    from jfedrl.schema import override

    config = override(Config(), {**settings, "env.name": env, "federation.num_clients": clients})
    sim = make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = Simulator.run_block.lower(sim, state, 1).compile()
    compile_seconds = time.perf_counter() - start
    estimate = devices.memory_estimate(compiled)
    _, blocks, run_seconds = time_blocks(compiled, state, seconds)
    return {
        "env": env,
        "clients": clients,
        "compile_seconds": compile_seconds,
        "env_steps_per_second": sim.env_steps_per_round * blocks / run_seconds,
        "memory_bytes": None if estimate is None else estimate.total * jax.device_count(),
    }


def fit(points: list[dict], capacity: int | None) -> dict:
    """Bytes per client and fixed bytes from the two smallest measured counts; what fits."""
    from jfedrl.devices import clients_that_fit

    known = [p for p in points if p.get("memory_bytes")]
    if len(known) < 2 or capacity is None:
        return {"bytes_per_client": None, "largest_clients_that_fit": None}
    a, b = known[0], known[1]
    per_client = (b["memory_bytes"] - a["memory_bytes"]) / (b["clients"] - a["clients"])
    fixed = max(int(a["memory_bytes"] - per_client * a["clients"]), 0)
    largest = clients_that_fit(b["memory_bytes"], b["clients"], capacity, fixed_bytes=fixed)
    return {"bytes_per_client": per_client, "largest_clients_that_fit": largest}


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Federated PPO on an accelerator",
        "",
        f"{m['date'][:10]}, {benchlib.describe(m)}; device memory "
        f"{(report['capacity_bytes'] or 0) / 2**30:.1f} GiB. "
        f"`python -m scripts.bench_gpu{' --cpu-smoke' if report['smoke'] else ''}`. "
        f"Load average {m['loadavg_at_start'][0]:.1f} at start, "
        f"{m['loadavg_at_end'][0]:.1f} at end.",
        "",
    ]
    rows = []
    for p in report["points"]:
        if "error" in p:
            rows.append([p["env"], p["clients"], "failed", "", "", p["error"][:80]])
            continue
        memory = p["memory_bytes"]
        rows.append(
            [
                p["env"],
                p["clients"],
                f"{p['env_steps_per_second']:,.0f}",
                f"{p['compile_seconds']:.1f}",
                "" if memory is None else f"{memory / 2**20:.0f}",
                "",
            ]
        )
    lines += benchlib.table(
        ["env", "clients", "env steps/s", "compile s", "round memory MiB", "error"], rows
    )
    lines.append("")
    for env, f in report["fits"].items():
        per = f["bytes_per_client"]
        lines.append(
            f"{env}: {'n/a' if per is None else f'{per / 2**20:.2f} MiB'} per client; "
            f"largest client count that fits: {f['largest_clients_that_fit'] or 'n/a'}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run (CI)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per point")
    parser.add_argument("--out", default=str(benchlib.BENCH / "gpu"), help="output file stem")
    args = parser.parse_args(argv)
    import jax

    from jfedrl.devices import device_memory_bytes

    if args.cpu_smoke:
        jax.config.update("jax_platforms", "cpu")
        plan, settings, seconds = SMOKE_PLAN, SMOKE_SETTINGS, min(args.seconds, 0.2)
    else:
        plan, settings, seconds = PLAN, SETTINGS, args.seconds
    facts = benchlib.machine()
    capacity = device_memory_bytes(jax.devices()[0])
    if capacity is not None and jax.devices()[0].platform != "cpu":
        capacity *= jax.device_count()
    points, fits = [], {}
    for env, counts, extra in plan:
        env_points = []
        for clients in counts:
            print(f"{env}: {clients} clients ...", file=sys.stderr, flush=True)
            try:
                point = measure(env, clients, {**settings, **extra}, seconds)
            except Exception as error:  # noqa: BLE001 (out of memory: record it, go on)
                point = {
                    "env": env,
                    "clients": clients,
                    "error": f"{type(error).__name__}: {error}",
                }
            env_points.append(point)
        points += env_points
        fits[env] = fit(env_points, capacity)
    report = {
        "machine": benchlib.finish(facts),
        "smoke": args.cpu_smoke,
        "capacity_bytes": capacity,
        "points": points,
        "fits": fits,
    }
    benchlib.write_report(Path(args.out), report, render(report))


if __name__ == "__main__":
    main()
