"""The cost of cross-process collectives: 2 processes x 1 device vs 1 process x 2 devices.

Both layouts run the same jitted round over a 2-device `clients` mesh; in the
first the devices belong to two processes on this machine (`jfedrl.run.distributed`,
gloo between them), in the second to one process. The layouts alternate
(A B, B A, ...) so that the machine's load falls on both alike; the ratio of
their median throughputs is the price of going through the distributed runtime.
Each measurement also records a checksum of the final global params: equal
checksums show both layouts computed the same run.

    python -m scripts.bench_distributed [--reps 3] [--blocks 8] [--clients 16]

writes bench/distributed.json and bench/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scripts.benchlib import BENCH, ROOT, describe, finish, machine, table, write_report

#: The throughput benchmark's round (bench/throughput.md): PPO 4 envs x 128 steps,
#: 4 local updates, 4 epochs x 4 minibatches, MLP 2x64, CartPole-v1.
SETTINGS = {
    "federation.local_updates": 4,
    "algo.ppo.num_envs": 4,
    "algo.ppo.num_steps": 128,
    "algo.ppo.update_epochs": 4,
    "algo.ppo.num_minibatches": 4,
}
LAYOUTS = {"1 process x 2 devices": (1, 2), "2 processes x 1 device": (2, 1)}


def measure(
    processes: int, process_id: int, port: int, clients: int, rounds: int, blocks: int
) -> dict | None:
    """Runs in a worker process: compiles one block, then times `blocks` blocks.

    Every process runs the same fixed number of blocks (a time budget could end
    them at different blocks, and their collectives would then wait forever).

    Returns:
        Process 0's figures (None in the others).
    """
    import jax
    import numpy as np

    from jfedrl.config import Config, DistributedConfig
    from jfedrl.run import distributed
    from jfedrl.schema.convert import override

    if processes > 1:
        coordinator = f"127.0.0.1:{port}"
        distributed.initialize(DistributedConfig(True, coordinator, processes, process_id))
    from jfedrl.round.simulator import Simulator, make_simulator
    from jfedrl.run.runner import enable_compilation_cache

    enable_compilation_cache()
    config = override(Config(), {**SETTINGS, "federation.num_clients": clients})
    sim = make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = Simulator.run_block.lower(sim, state, rounds).compile()
    compile_seconds = time.perf_counter() - start
    distributed.barrier("compiled")  # one process may have found it in the cache
    state, out = compiled(state)  # warm-up
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(blocks):
        state, out = compiled(state)
        jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    checksum = sum(float(np.sum(np.asarray(x))) for x in jax.tree.leaves(state.global_params))
    if not distributed.is_primary():
        return None
    return {
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "compile_seconds": compile_seconds,
        "seconds": seconds,
        "env_steps_per_second": sim.env_steps_per_round * rounds * blocks / seconds,
        "params_checksum": checksum,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(processes: int, devices: int, args: argparse.Namespace) -> dict:
    """Launches one layout's worker processes; returns process 0's figures."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    port = _free_port()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.bench_distributed",
                "--worker",
                f"{processes},{i},{port}",
                "--clients",
                str(args.clients),
                "--rounds",
                str(args.rounds),
                "--blocks",
                str(args.blocks),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(processes)
    ]
    outputs = [w.communicate(timeout=1800) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        if worker.returncode != 0:
            raise RuntimeError(f"worker failed ({worker.returncode}):\n{err[-3000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main() -> None:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="measurements per layout")
    parser.add_argument("--blocks", type=int, default=8, help="timed blocks per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per block")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # "processes,id,port"
    parser.add_argument("--out", default=str(BENCH / "distributed"))
    parser.add_argument("--render", metavar="JSON", help="only rewrite the .md of a report")
    args = parser.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        Path(args.out + ".md").write_text(render(report))
        return
    if args.worker:
        processes, process_id, port = (int(v) for v in args.worker.split(","))
        result = measure(processes, process_id, port, args.clients, args.rounds, args.blocks)
        if result is not None:
            print(json.dumps(result), flush=True)
        return
    facts = machine(with_jax=False)
    runs: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    names = list(LAYOUTS)
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            result = run_layout(*LAYOUTS[name], args)
            runs[name].append(result)
            print(f"{name}: {result['env_steps_per_second']:,.0f} env steps/s", flush=True)
    report = summarize(finish(facts), runs, args)
    write_report(Path(args.out), report, render(report))


def summarize(facts: dict, runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """Every figure of the run, and the medians and their ratio."""
    median = {n: statistics.median(r["env_steps_per_second"] for r in runs[n]) for n in runs}
    one, two = (median[n] for n in LAYOUTS)
    checksums = {r["params_checksum"] for rs in runs.values() for r in rs}
    return {
        "machine": facts,
        "settings": {
            **SETTINGS,
            "clients": args.clients,
            "rounds_per_block": args.rounds,
            "blocks": args.blocks,
            "reps": args.reps,
        },
        "runs": runs,
        "median_env_steps_per_second": median,
        "cross_process_cost": one / two - 1,
        "same_params": len(checksums) == 1,
    }


def render(report: dict) -> str:
    """bench/distributed.md from the report (also `--render JSON` for a saved report)."""
    facts, runs, settings = report["machine"], report["runs"], report["settings"]
    median = report["median_env_steps_per_second"]
    names = list(LAYOUTS)
    rows = [
        [
            name,
            f"{median[name]:,.0f}",
            ", ".join(f"{r['env_steps_per_second']:,.0f}" for r in runs[name]),
            f"{statistics.median(r['compile_seconds'] for r in runs[name]):.1f}",
        ]
        for name in names
    ]
    load = f"{facts['loadavg_at_start'][0]:.1f} at start, {facts['loadavg_at_end'][0]:.1f} at end"
    lines = [
        "# Distributed: 2 processes x 1 device vs 1 process x 2 devices",
        "",
        f"{facts['date'][:10]}, {describe(facts)}; load average {load}. "
        f"{settings['clients']} clients, PPO 4 envs x 128 steps, 4 local updates, 4 epochs x 4 "
        f"minibatches, MLP 2x64, CartPole-v1; {settings['blocks']} blocks of "
        f"{settings['rounds_per_block']} rounds per measurement, layouts alternated, "
        f"{settings['reps']} each. `python -m scripts.bench_distributed`.",
        "",
        *table(["layout", "median env steps/s", "each measurement", "compile s"], rows),
        "",
        f"Cross-process cost (1 process x 2 devices / 2 processes x 1 device - 1): "
        f"{report['cross_process_cost']:+.1%} (medians; each measurement is listed because "
        "the machine is shared and its load varies within a run). Final global params "
        + ("identical in every measurement." if report["same_params"] else "DIFFER between runs.")
        + " Compile seconds depend on what the persistent compilation cache already held.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
