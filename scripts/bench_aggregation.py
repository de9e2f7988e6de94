"""Aggregation cost vs local training cost, per strategy and client count.

For C clients (default 16 / 64 / 256) of federated PPO on CartPole-v1 with the
default MLP (2 x 64, actor and critic), measures

  - `local`: one round's local work, `local_training` with the default PPO
    settings (4 envs x 128 steps, 4 epochs x 4 minibatches) and
    `federation.local_updates` updates per client, vmapped over C clients;
  - `aggregate`: one call of each strategy's `aggregate` on the same params
    shapes (all clients valid, distinct params),

each as one jitted call (compiled first, then timed: the median of `--reps`
local / `--agg-reps` aggregate calls, `block_until_ready`). The aggregate share of a round is
aggregate / (local + aggregate). Targets (issue 3): mean-type rules < 5 % of a
round; Krum's O(C^2 D) pairwise distances are measured and the scaling
exponent between the two largest C is reported.

Writes bench/aggregation.json and bench/aggregation.md.

    python -m scripts.bench_aggregation                   # 16 64 256, 3 reps
    python -m scripts.bench_aggregation --clients 16 64 --reps 5
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jfedrl import strategies
from jfedrl.algorithms.base import Reference
from jfedrl.config import Config, FederationConfig, StrategyConfig
from jfedrl.round.local import local_training
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.convert import override
from jfedrl.strategies.base import ClientInfo
from scripts import benchlib

MEAN_TYPE = ("fedavg", "mean", "reward_weighted", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
# Settings that make each rule do its full work (e.g. noise on, trimming on).
SETTINGS = {
    "fedadam": {"lr": 0.01},
    "fedyogi": {"lr": 0.01},
    "fedadagrad": {"lr": 0.01},
    "trimmed_mean": {"beta": 0.1},
    "multi_krum": {"m": 0},
}


def bench_clients(num_clients: int, reps: int, agg_reps: int, names: list[str]) -> dict:
    config = Config(federation=FederationConfig(num_clients=num_clients))
    sim = make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    fed = config.federation
    reference = Reference(state.global_params, state.peer_params, state.peer_weights)

    @jax.jit
    def local(key, clients):
        keys = jax.random.split(key, num_clients)
        return local_training(
            sim.algorithm, fed.local_updates, keys, clients, state.env_params, reference
        )

    local_first, local_time = benchlib.time_calls(
        local, jax.random.PRNGKey(1), state.clients, reps=reps
    )
    num_params = int(sum(x.size for x in jax.tree.leaves(state.global_params)))

    # Distinct client params around the global, as after local training.
    rng = np.random.default_rng(0)
    client_params = jax.tree.map(
        lambda g: g[None] + jnp.asarray(0.01 * rng.normal(size=(num_clients,) + g.shape), g.dtype),
        state.global_params,
    )
    info = ClientInfo(
        num_steps=jnp.full((num_clients,), float(sim.algorithm.env_steps_per_update)),
        returns=jnp.asarray(rng.normal(100.0, 30.0, size=num_clients), jnp.float32),
        mask=jnp.ones((num_clients,), bool),
    )
    rows = {}
    for name in names:
        own = {f"{name}.{k}": v for k, v in SETTINGS.get(name, {}).items()}
        strategy_config = override(StrategyConfig(name=name), own)
        strategy = strategies.make(strategy_config, num_clients)
        server_state = strategy.init(state.global_params)
        aggregate = jax.jit(strategy.aggregate)
        first, seconds = benchlib.time_calls(
            aggregate,
            server_state,
            state.global_params,
            client_params,
            info,
            jax.random.PRNGKey(2),
            reps=agg_reps,
        )
        rows[name] = {
            "aggregate_s": seconds,
            "compile_s": first,
            "share_of_round": seconds / (seconds + local_time),
        }
        print(
            f"C={num_clients:4d} {name:16s} aggregate {seconds * 1e3:9.3f} ms  "
            f"({100 * rows[name]['share_of_round']:6.2f} % of a round)",
            flush=True,
        )
    print(f"C={num_clients:4d} local training {local_time:.3f} s", flush=True)
    return {
        "num_clients": num_clients,
        "num_params": num_params,
        "local_updates": fed.local_updates,
        "env_steps_per_client": fed.local_updates * sim.algorithm.env_steps_per_update,
        "local_s": local_time,
        "local_compile_s": local_first,
        "strategies": rows,
    }


def krum_exponent(results: list[dict], name: str) -> float | None:
    """Slope of log(time) vs log(C) between the two largest client counts."""
    if len(results) < 2:
        return None
    a, b = results[-2], results[-1]
    ta, tb = a["strategies"][name]["aggregate_s"], b["strategies"][name]["aggregate_s"]
    return math.log(tb / ta) / math.log(b["num_clients"] / a["num_clients"])


def markdown(report: dict) -> str:
    results = report["results"]
    sizes = [r["num_clients"] for r in results]
    lines = [
        "# Aggregation cost vs local training",
        "",
        "Written by `python -m scripts.bench_aggregation`. CartPole-v1, PPO, MLP 2x64 "
        f"({results[0]['num_params']} params per client), {results[0]['local_updates']} local "
        f"updates per round ({results[0]['env_steps_per_client']} env steps per client). "
        f"Median of {report['reps']} (local training) / {report['agg_reps']} (aggregate) "
        "jitted calls after compilation, on "
        f"{benchlib.describe(report['machine'])}.",
        "",
        "Share = aggregate / (local training + aggregate) of one round.",
        "",
        "| strategy | " + " | ".join(f"C={c} ms (share)" for c in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name in report["strategies"]:
        cells = []
        for r in results:
            row = r["strategies"][name]
            cells.append(f"{row['aggregate_s'] * 1e3:.2f} ({100 * row['share_of_round']:.2f} %)")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append(
        "| local training | " + " | ".join(f"{r['local_s'] * 1e3:.0f}" for r in results) + " |"
    )
    worst = max(
        r["strategies"][n]["share_of_round"]
        for r in results
        for n in MEAN_TYPE
        if n in r["strategies"]
    )
    lines += [
        "",
        f"Mean-type rules ({', '.join(MEAN_TYPE)}): at most {100 * worst:.2f} % of a round "
        f"(target < 5 %): {'met' if worst < 0.05 else 'NOT met'}.",
    ]
    for name in ("krum", "multi_krum"):
        exponent = report["scaling_exponent"].get(name)
        if exponent is not None:
            lines.append(
                f"`{name}`: time ~ C^{exponent:.2f} between C={sizes[-2]} and C={sizes[-1]} "
                "(expected 2: the pairwise distances are one [C, D] x [D, C] Gram product, "
                "O(C^2 D), plus an O(C^2 log C) sort of each row; the flattening and the mean "
                "are O(C D))."
            )
    load = benchlib.load_averages(report["machine"])
    if load:
        lines += [
            "",
            f"The machine was shared with other jobs: 1-minute load average {load[0]:.1f} at "
            f"the start and {load[1]:.1f} at the end, on {report['machine']['cores']} cores, so "
            "single figures can be off by a factor of 2-3 (compare shares within one column).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--reps", type=int, default=3, help="timed local-training calls")
    parser.add_argument("--agg-reps", type=int, default=20, help="timed aggregate calls")
    parser.add_argument("--strategies", nargs="+", default=list(strategies.names()))
    parser.add_argument("--out", type=Path, default=benchlib.BENCH / "aggregation")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite <out>.md from <out>.json"
    )
    args = parser.parse_args()
    if args.markdown_only:
        report = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(report))
        return

    machine = benchlib.machine()
    results = [
        bench_clients(c, args.reps, args.agg_reps, args.strategies) for c in sorted(args.clients)
    ]
    report = {
        "reps": args.reps,
        "agg_reps": args.agg_reps,
        "machine": benchlib.finish(machine),
        "strategies": args.strategies,
        "results": results,
        "scaling_exponent": {
            name: krum_exponent(results, name)
            for name in ("krum", "multi_krum")
            if name in args.strategies
        },
    }
    benchlib.write_report(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
