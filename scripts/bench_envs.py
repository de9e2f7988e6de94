"""Environment throughput: heterogeneous vs identical clients, and Brax on CPU.

1. `federated`: env steps/s of the same federated PPO round (`make_simulator`
   + `run_block`) on CartPole-v1 with C clients (default 64) whose params are
   identical (`variant=default`), heterogeneous (`variant=random`), and
   heterogeneous with a sinusoidal drift. Heterogeneity is data (a batched
   `EnvParams`), so the compiled program is the same shape; target: within 5%.
   Blocks of the configurations are interleaved, so load from other processes
   on a shared machine hits all alike; the best block (least disturbed) and the
   median are reported.
2. `raw`: bare env steps/s (`jit(vmap(scan(step)))`, random actions) of
   CartPole-v1 identical vs random clients, and of Brax envs on CPU with the
   `spring` backend (`--brax-backends` adds others for comparison).

Writes bench/envs.json and bench/envs.md.

    python -m scripts.bench_envs                      # 64 clients, hopper + inverted_pendulum
    python -m scripts.bench_envs --clients 16 --reps 3 --brax inverted_pendulum
    python -m scripts.bench_envs --brax-backends spring positional generalized mjx
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import envs
from jfedrl.config import Config
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.convert import override
from scripts import benchlib


def federated_config(clients: int, variant: str, drift: str) -> Config:
    settings = {
        "federation.num_clients": clients,
        "federation.rounds": 1000,
        "federation.local_updates": 1,
        "algo.ppo.num_envs": 4,
        "algo.ppo.num_steps": 64,
        "algo.ppo.update_epochs": 2,
        "algo.ppo.num_minibatches": 2,
        "log.eval_episodes": 1,
        "env.name": "CartPole-v1",
        "env.variant": variant,
        "env.drift": drift,
    }
    return override(Config(), settings)


def bench_federated(clients: int, rounds: int, reps: int) -> dict:
    cases = {
        "identical": ("default", "none"),
        "heterogeneous": ("random", "none"),
        "heterogeneous+drift": ("random", "sinusoidal"),
    }
    sims, states, compile_s, times = {}, {}, {}, {k: [] for k in cases}
    for label, (variant, drift) in cases.items():
        sim = make_simulator(federated_config(clients, variant, drift))
        state = sim.init(jax.random.PRNGKey(0))
        start = time.perf_counter()
        state, _ = sim.run_block(state, rounds)
        jax.block_until_ready(state)
        compile_s[label] = time.perf_counter() - start
        sims[label], states[label] = sim, state
    for _ in range(reps):
        for label in cases:
            start = time.perf_counter()
            states[label], _ = sims[label].run_block(states[label], rounds)
            jax.block_until_ready(states[label])
            times[label].append(time.perf_counter() - start)
    out = {}
    for label in cases:
        steps = sims[label].env_steps_per_round * rounds
        best, median = min(times[label]), statistics.median(times[label])
        out[label] = {
            "env_steps_per_s": steps / best,
            "env_steps_per_s_median": steps / median,
            "seconds_per_block_best": best,
            "rounds_per_block": rounds,
            "env_steps_per_block": steps,
            "first_block_s_incl_compile": compile_s[label],
            "all_block_s": times[label],
        }
    for key in ("env_steps_per_s", "env_steps_per_s_median"):
        base = out["identical"][key]
        for label in cases:
            suffix = key.removeprefix("env_steps_per_s")
            out[label]["relative_to_identical" + suffix] = out[label][key] / base
    return out


def raw_runner(name: str, params, num: int, steps: int, **options):
    """A compiled `key -> total` rollout of `num` envs for `steps` steps, and its compile time."""
    env, _ = envs.make(name, **options)
    space = env.action_space(jax.tree.map(lambda x: x[0], params))

    # Params are an argument (as in the simulator, where they live in the state), so
    # XLA cannot constant-fold identical clients; observations feed the output, so
    # no part of the dynamics is dead code.
    def run(key, params):
        keys = jax.random.split(key, num)
        _, state = jax.vmap(env.reset)(keys, params)

        def step(state, k):
            k_act, k_env = jax.random.split(k)
            if hasattr(space, "n"):
                action = jax.random.randint(k_act, (num,), 0, space.n)
            else:
                action = jax.random.uniform(
                    k_act, (num, *space.shape), minval=space.low, maxval=space.high
                )
            obs, state, reward, *_ = jax.vmap(env.step)(
                jax.random.split(k_env, num), state, action, params
            )
            return state, reward.sum() + obs.sum()

        _, totals = jax.lax.scan(step, state, jax.random.split(key, steps))
        return totals.sum()

    fn = jax.jit(run)
    start = time.perf_counter()
    jax.block_until_ready(fn(jax.random.PRNGKey(0), params))
    return (lambda key: fn(key, params)), time.perf_counter() - start


def bench_raw(cases: dict, reps: int) -> dict:
    """`cases`: label -> (name, params, num, steps, options); timed interleaved."""
    runners, compile_s, times = {}, {}, {label: [] for label in cases}
    for label, (name, params, num, steps, options) in cases.items():
        runners[label], compile_s[label] = raw_runner(name, params, num, steps, **options)
    for i in range(reps):
        for label in cases:
            start = time.perf_counter()
            jax.block_until_ready(runners[label](jax.random.PRNGKey(i + 1)))
            times[label].append(time.perf_counter() - start)
    out = {}
    for label, (_, _, num, steps, _) in cases.items():
        best, median = min(times[label]), statistics.median(times[label])
        out[label] = {
            "env_steps_per_s": num * steps / best,
            "env_steps_per_s_median": num * steps / median,
            "parallel_envs": num,
            "steps": steps,
            "first_call_s_incl_compile": compile_s[label],
        }
        print(f"  {label}: {out[label]['env_steps_per_s']:,.0f} env steps/s", flush=True)
    return out


def raw_cases(clients: int, brax: list[str], backends: list[str]) -> dict:
    cases = {}
    for variant in ("default", "random"):
        params = envs.client_params("CartPole-v1", jax.random.PRNGKey(0), clients * 4, variant)
        cases[f"CartPole-v1/{variant}"] = ("CartPole-v1", params, clients * 4, 2000, {})
    for task in brax:
        name = f"brax-{task}"
        params = envs.client_params(name, jax.random.PRNGKey(0), 64, "random")
        for backend in backends:
            cases[f"{name}/{backend}/random"] = (name, params, 64, 100, {"backend": backend})
    return cases


def markdown(result: dict) -> str:
    fed = result["federated"]
    lines = [
        "# Environment throughput",
        "",
        f"Machine: {benchlib.describe(result['machine'])}; "
        "1-minute load average before / after: "
        + " / ".join(f"{x:.1f}" for x in benchlib.load_averages(result["machine"]))
        + " (other processes share the CPUs).",
        "",
        f"## Federated PPO round, CartPole-v1, {result['clients']} clients",
        "",
        "Same PPO round (`make_simulator` + `run_block`, "
        f"{fed['identical']['rounds_per_block']} rounds per block, "
        f"{fed['identical']['env_steps_per_block']} env steps per block), "
        f"{result['reps']} interleaved blocks each: best (the machine's other load hits "
        "it least) and median. Target: heterogeneous within 5% of identical.",
        "",
        "| clients | env steps/s (best) | relative | env steps/s (median) | relative "
        "| first block (incl. compile) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in fed.items():
        lines.append(
            f"| {label} | {row['env_steps_per_s']:,.0f} | {row['relative_to_identical']:.3f} | "
            f"{row['env_steps_per_s_median']:,.0f} | {row['relative_to_identical_median']:.3f} | "
            f"{row['first_block_s_incl_compile']:.1f} s |"
        )
    lines += [
        "",
        "## Raw environment steps (jit + vmap + scan, random actions)",
        "",
        "| env / backend / params | parallel envs x steps | env steps/s (best) "
        "| (median) | first call (incl. compile) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in result["raw"].items():
        lines.append(
            f"| {label} | {row['parallel_envs']} x {row['steps']} | "
            f"{row['env_steps_per_s']:,.0f} | {row['env_steps_per_s_median']:,.0f} | "
            f"{row['first_call_s_incl_compile']:.1f} s |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per timed block")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--brax", nargs="*", default=["hopper", "inverted_pendulum"])
    parser.add_argument("--brax-backends", nargs="*", default=["spring"])
    parser.add_argument("--out", type=Path, default=benchlib.BENCH)
    args = parser.parse_args()

    machine = benchlib.machine()
    print(f"federated PPO round, CartPole-v1, {args.clients} clients ...", flush=True)
    federated = bench_federated(args.clients, args.rounds, args.reps)
    for label, row in federated.items():
        print(
            f"  {label}: {row['env_steps_per_s']:,.0f} env steps/s "
            f"({row['relative_to_identical']:.3f} x identical; median "
            f"{row['relative_to_identical_median']:.3f})",
            flush=True,
        )
    print("raw env steps ...", flush=True)
    raw = bench_raw(raw_cases(args.clients, args.brax, args.brax_backends), args.reps)
    result = {
        "machine": benchlib.finish(machine),
        "clients": args.clients,
        "reps": args.reps,
        "federated": federated,
        "raw": raw,
    }
    benchlib.write_report(args.out / "envs", result, markdown(result))


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing anything
    main()
