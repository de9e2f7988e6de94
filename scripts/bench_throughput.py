"""Throughput of the federated PPO round: env steps/s vs number of clients.

Writes bench/throughput.json and bench/throughput.md. Every figure comes from
this one run, so ratios compare like with like on a noisy machine:

* for C clients: compile seconds and run seconds separately, total env steps/s,
  peak resident memory (each C in its own subprocess, so peaks don't mix);
* the same vmapped PPO with aggregation switched off (local updates only), so
  the cost of federation is a measured ratio;
* achieved GFLOP/s of the round (the MLPs' matmul flops, counted analytically,
  / run time) against a 1024x1024 float32 matmul timed in the same process;
* the persistent compilation cache: the same config compiled in a second
  process that reuses the first one's cache;
* the README's default `jfedrl train`, timed end to end from a cold cache;
* `--reference`: jfedrl's round on one device and on the default host device
  layout (`jfedrl.run.devices`) against the plain one-file federated PPO of
  `scripts/reference_ppo.py` (one device), alternating processes;
* `--interleaved`: the same comparison inside one process per layout, the two
  compiled rounds called in turns (writes bench/throughput_interleaved.*), so a
  slower or faster spell of a shared machine falls on both alike.

Usage: python -m scripts.bench_throughput [--clients 1 16 64 256] [--seconds 4] [--quick]
       python -m scripts.bench_throughput --reference [--clients 64 256]
       python -m scripts.bench_throughput --interleaved [--clients 64 256] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts import benchlib


def _matmul_gflops() -> float:
    import jax

    a = jax.random.normal(jax.random.PRNGKey(0), (1024, 1024))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        f(a).block_until_ready()
        reps += 1
    return 2 * 1024**3 * reps / (time.perf_counter() - start) / 1e9


def hlo_op_counts(compiled) -> dict[str, int]:
    """Instructions of a compiled program by kind (fusions, gathers, scatters, loops).

    The size of the program XLA had to compile (its compile time follows it) and
    the data movement it does around the clients' states; not a timing.
    """
    import re

    counts = dict.fromkeys(("fusion", "gather", "scatter", "while", "dot"), 0)
    for kind in re.findall(r"= .*? ([a-z][\w-]*)\(", compiled.as_text()):
        if kind in counts:
            counts[kind] += 1
    return counts


def time_blocks(compiled, state, seconds: float) -> tuple[object, int, float]:
    """One untimed warm-up call of `compiled(state) -> (state, out)`, then at least two
    timed calls and as many as fit in `seconds`.

    Returns:
        The last state, the number of timed calls and their seconds.
    """
    import jax

    state, out = compiled(state)
    jax.block_until_ready(out)
    blocks, start = 0, time.perf_counter()
    while blocks < 2 or time.perf_counter() - start < seconds:
        state, out = compiled(state)
        jax.block_until_ready(out)
        blocks += 1
    return state, blocks, time.perf_counter() - start


def local_only_block(sim, rounds_per_block: int):
    """`rounds_per_block` rounds of `sim` with local training only: no validation, no
    aggregation (each round's global params are client 0's), for `jit(...)(state)`.
    """
    import jax

    from jfedrl.round.local import local_training
    from jfedrl.round.state import FedState

    config = sim.config

    def local_only_block(state: FedState):
        def one(state, _):
            inputs = sim.begin_round(state)
            clients_, metrics = local_training(
                sim.algorithm,
                config.federation.local_updates,
                inputs.client_keys,
                inputs.clients,
                inputs.env_params,
                inputs.reference,
            )
            # Keep the clients' new states, skip validation and aggregation.
            params = jax.vmap(sim.algorithm.get_params)(clients_)
            state = state.replace(
                clients=clients_ if sim.num_clients == sim.padded_participants else state.clients,
                global_params=jax.tree.map(lambda x: x[0], params),
                round=state.round + 1,
            )
            return state, metrics["value_loss"]

        return jax.lax.scan(one, state, None, length=rounds_per_block)

    return local_only_block


def measure_one(
    clients: int, seconds: float, rounds_per_block: int, federated_only: bool = False
) -> dict:
    """Runs in a subprocess: one client count, federated and (unless told not) local-only."""
    import jax

    from jfedrl.config import Config
    from jfedrl.round.simulator import Simulator, make_simulator
    from jfedrl.run.runner import enable_compilation_cache
    from jfedrl.schema.convert import override

    enable_compilation_cache()
    config = override(Config(), ppo_settings(clients))
    sim = make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    steps_per_block = sim.env_steps_per_round * rounds_per_block

    # XLA's cost analysis counts a loop body once, not per iteration, so count the
    # matmul flops of the MLPs analytically: a forward pass costs 2 flops per
    # weight per sample, a forward + backward pass 6. Per local update: the
    # rollout's forward pass (+ the critic on final observations) and the epochs.
    ppo = config.algo.ppo
    weights = sum(x.size for x in jax.tree.leaves(state.global_params) if x.ndim == 2)
    samples = ppo.num_envs * ppo.num_steps
    per_update = samples * 2 * weights * 1.5 + ppo.update_epochs * samples * 6 * weights
    model_flops_per_block = (
        per_update * config.federation.local_updates * sim.num_participants * rounds_per_block
    )

    results = {}
    variants = {
        "federated": lambda: Simulator.run_block.lower(sim, state, rounds_per_block),
        "local_only": lambda: jax.jit(
            local_only_block(sim, rounds_per_block), donate_argnums=0
        ).lower(state),
    }
    if federated_only:
        del variants["local_only"]
    for name, lower in variants.items():
        state = sim.init(jax.random.PRNGKey(0))
        start = time.perf_counter()
        compiled = lower().compile()
        compile_seconds = time.perf_counter() - start
        flops = model_flops_per_block
        state, blocks, run_seconds = time_blocks(compiled, state, seconds)
        results[name] = {
            "compile_seconds": compile_seconds,
            "run_seconds": run_seconds,
            "env_steps": steps_per_block * blocks,
            "env_steps_per_second": steps_per_block * blocks / run_seconds,
            "gflops_per_second": flops * blocks / run_seconds / 1e9,
            "hlo_ops": hlo_op_counts(compiled),
        }
    results["clients"] = clients
    results["matmul_gflops_per_second"] = _matmul_gflops()
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["devices"] = [str(d) for d in jax.devices()]
    return results


def _run(args: list[str], env: dict | None = None) -> str:
    """Runs this interpreter with `args` in the repository; its stdout (raises on failure)."""
    out = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=benchlib.ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return out.stdout


def _subprocess(
    args: list[str], env: dict | None = None, module: str = "scripts.bench_throughput"
) -> dict:
    return json.loads(_run(["-m", module, *args], env).strip().splitlines()[-1])


def _host_devices_env(count: int) -> dict:
    from jfedrl.run.devices import FLAG

    return {"XLA_FLAGS": f"{FLAG}={count}", "JAX_PLATFORMS": "cpu"}


def _progress(name: str, run: dict) -> None:
    """One finished measurement on stderr (the figures survive a later crash in the log)."""
    print(
        f"  {name}: {run['env_steps_per_second']:,.0f} env steps/s, "
        f"compile {run['compile_seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def reference_comparison(clients: int, seconds: float) -> dict:
    """jfedrl on one device, jfedrl on the default layout, the plain reference: alternating."""
    from jfedrl.run.devices import default_host_devices, usable_cores

    layout = default_host_devices(clients, usable_cores())
    args = ["--one", str(clients), "--seconds", str(seconds), "--federated-only"]
    ref = ["--clients", str(clients), "--seconds", str(seconds)]
    runs = {}
    for name, devices in (("jfedrl_1_device", 1), (f"jfedrl_{layout}_devices", layout)):
        # A cold compilation cache: the reference compiles without one.
        cold = {"JFEDRL_COMPILATION_CACHE": tempfile.mkdtemp(prefix="jfedrl-bench-cache-")}
        runs[name] = _subprocess(args, {**_host_devices_env(devices), **cold})["federated"]
        _progress(name, runs[name])
        after = f"reference_after_{name}"
        runs[after] = _subprocess(ref, _host_devices_env(1), module="scripts.reference_ppo")
        _progress(after, runs[after])
    return {"clients": clients, "default_host_devices": layout, "runs": runs}


def ppo_settings(clients: int) -> dict[str, int]:
    """jfedrl's config overrides for the PPO shape of `scripts/reference_ppo.py`."""
    from scripts import reference_ppo as ref  # not at the top: it imports this module

    return {
        "federation.num_clients": clients,
        "federation.local_updates": ref.LOCAL_UPDATES,
        "algo.ppo.num_envs": ref.NUM_ENVS,
        "algo.ppo.num_steps": ref.NUM_STEPS,
        "algo.ppo.update_epochs": ref.EPOCHS,
        "algo.ppo.num_minibatches": ref.MINIBATCHES,
    }


@dataclass
class _Side:
    """One compiled program of the interleaved comparison and its timing so far."""

    compiled: Any
    state: Any
    steps_per_call: int
    seconds: float = 0.0
    calls: int = 0

    def call(self) -> None:
        import jax

        self.state, out = self.compiled(self.state)
        jax.block_until_ready(out)


def interleaved_one(clients: int, seconds: float, rounds_per_block: int) -> dict:
    """Runs in a subprocess: the reference's round and jfedrl's block, timed in turns.

    The reference is compiled before jfedrl is imported, so it keeps JAX's own CPU
    lowerings (jfedrl registers its own at import, `jfedrl/round/xla_cpu.py`); it runs on
    the first device, as a user's one-device program would. Each side is called
    alternately until both have run `seconds`.
    """
    import jax

    from scripts import reference_ppo

    plain = "jfedrl.round.simulator" not in sys.modules  # else the reference got jfedrl's lowerings
    init, fed_round = reference_ppo.make_round(clients)
    ref_state = jax.jit(init)(jax.random.PRNGKey(0))
    start = time.perf_counter()
    reference = jax.jit(fed_round, donate_argnums=0).lower(ref_state).compile()
    ref_compile = time.perf_counter() - start

    from jfedrl.config import Config
    from jfedrl.round.simulator import Simulator, make_simulator
    from jfedrl.schema.convert import override

    sim = make_simulator(override(Config(), ppo_settings(clients)))
    state = sim.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    ours = Simulator.run_block.lower(sim, state, rounds_per_block).compile()
    our_compile = time.perf_counter() - start

    per_client = reference_ppo.LOCAL_UPDATES * reference_ppo.NUM_ENVS * reference_ppo.NUM_STEPS
    sides = {
        "jfedrl": _Side(ours, state, sim.env_steps_per_round * rounds_per_block),
        "reference": _Side(reference, ref_state, clients * per_client),
    }
    for side in sides.values():
        side.call()  # untimed warm-up
    while any(side.seconds < seconds or side.calls < 3 for side in sides.values()):
        for side in sides.values():
            start = time.perf_counter()
            side.call()
            side.seconds += time.perf_counter() - start
            side.calls += 1
    return {
        "clients": clients,
        "devices": jax.device_count(),
        "calls": {name: side.calls for name, side in sides.items()},
        "run_seconds": {name: side.seconds for name, side in sides.items()},
        "env_steps_per_second": {
            name: side.steps_per_call * side.calls / side.seconds for name, side in sides.items()
        },
        "compile_seconds": {"jfedrl": our_compile, "reference": ref_compile},
        "hlo_ops": {"jfedrl": hlo_op_counts(ours), "reference": hlo_op_counts(reference)},
        "reference_with_jax_lowerings": plain,
    }


def interleaved_main(clients: list[int], seconds: float, rounds_per_block: int) -> None:
    from jfedrl.run.devices import default_host_devices, usable_cores

    facts = benchlib.machine()
    rows = []
    for count in clients:
        for devices in sorted({1, default_host_devices(count, usable_cores())}):
            args = ["--interleaved-one", str(count), "--seconds", str(seconds)]
            args += ["--rounds-per-block", str(rounds_per_block)]
            row = _subprocess(args, _host_devices_env(devices))
            assert row["reference_with_jax_lowerings"], "the reference must be compiled first"
            speed = row["env_steps_per_second"]
            print(
                f"  {count} clients, {devices} device(s): jfedrl {speed['jfedrl']:,.0f} vs "
                f"reference {speed['reference']:,.0f} env steps/s",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    report = {"machine": benchlib.finish(facts), "rows": rows}
    markdown = render_interleaved(report)
    benchlib.write_report(benchlib.BENCH / "throughput_interleaved", report, markdown)
    print(markdown)


def render_interleaved(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Throughput, interleaved: jfedrl and the plain reference in one process",
        "",
        f"{m['date'][:10]}, {benchlib.describe(m)}; load average "
        f"{m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end. "
        "Per row one process holds both compiled programs (the reference compiled "
        "first, with JAX's own lowerings, on the first device) and calls them in "
        "turns, so the ratio is immune to the machine's slow and fast spells. Same "
        "PPO shape as bench/throughput_reference.md. "
        "`python -m scripts.bench_throughput --interleaved`.",
        "",
    ]
    rows = []
    for r in report["rows"]:
        speed, compile_s = r["env_steps_per_second"], r["compile_seconds"]
        rows.append(
            [
                r["clients"],
                r["devices"],
                f"{speed['jfedrl']:,.0f}",
                f"{speed['reference']:,.0f}",
                f"{speed['jfedrl'] / speed['reference']:.2f}x",
                f"{compile_s['jfedrl']:.1f} / {compile_s['reference']:.1f}",
                f"{r['calls']['jfedrl']} / {r['calls']['reference']}",
            ]
        )
    lines += benchlib.table(
        [
            "clients",
            "jfedrl devices",
            "jfedrl env steps/s",
            "reference env steps/s (1 device)",
            "jfedrl / reference",
            "compile s (jfedrl / reference)",
            "timed calls (jfedrl / reference)",
        ],
        rows,
    )
    return "\n".join(lines) + "\n"


def cache_check(clients: int) -> dict:
    """Compile the same config in two fresh processes sharing one cache folder."""
    cache = tempfile.mkdtemp(prefix="jfedrl-bench-cache-")
    env = {"JFEDRL_COMPILATION_CACHE": cache}
    args = ["--one", str(clients), "--seconds", "0.5", "--rounds-per-block", "1"]
    cold = _subprocess(args, env)
    warm = _subprocess(args, env)
    return {
        "clients": clients,
        "cold_compile_seconds": cold["federated"]["compile_seconds"],
        "warm_compile_seconds": warm["federated"]["compile_seconds"],
    }


def default_train_wall() -> dict:
    """The README's `jfedrl train`, cold cache, timed end to end."""
    cache = tempfile.mkdtemp(prefix="jfedrl-bench-cache-")
    run_dir = tempfile.mkdtemp(prefix="jfedrl-bench-run-")
    command = ["-m", "jfedrl.cli", "train", "--run-dir", run_dir, "--no-progress", "--quiet"]
    wall = _wall(command, {"JFEDRL_COMPILATION_CACHE": cache})
    records = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_return"] for r in records if r.get("eval_return") is not None]
    return {"wall_seconds": wall, "final_eval_return": evals[-1], "rounds": len(records)}


def _wall(args: list[str], env: dict | None = None) -> float:
    """Seconds `_run(args, env)` takes."""
    start = time.perf_counter()
    _run(args, env)
    return time.perf_counter() - start


def start_up() -> dict:
    """Import cost of a run, and `jfedrl train` to its first finished round, cold and warm."""
    python = _wall(["-c", "pass"])
    imports = _wall(["-c", "import jfedrl.run.runner"]) - python
    cache = tempfile.mkdtemp(prefix="jfedrl-bench-cache-")
    first_round = {}
    for label in ("cold", "warm"):  # the second run reuses the first one's cache
        run_dir = tempfile.mkdtemp(prefix="jfedrl-bench-run-")
        command = ["-m", "jfedrl.cli", "train", "--rounds", "1", "--log.rounds-per-block", "1"]
        command += ["--run-dir", run_dir, "--no-progress", "--quiet"]
        first_round[label] = _wall(command, {"JFEDRL_COMPILATION_CACHE": cache})
    return {
        "python_seconds": python,
        "import_runner_seconds": imports,
        "first_round_cold_seconds": first_round["cold"],
        "first_round_warm_seconds": first_round["warm"],
    }


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Throughput: federated PPO on CartPole-v1",
        "",
        f"{m['date'][:10]}, {m['cpu']}, {m['cores']} cores, jax {m['jax']}. "
        "PPO: 4 envs x 128 steps per local update, 4 local updates per round, "
        "4 epochs x 4 minibatches, MLP 2x64. `python -m scripts.bench_throughput`.",
        "",
        "| clients | env steps/s | local-only steps/s | federation cost | compile s "
        "| GFLOP/s (round) | matmul GFLOP/s | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        fed, loc = r["federated"], r["local_only"]
        cost = loc["env_steps_per_second"] / fed["env_steps_per_second"] - 1
        lines.append(
            f"| {r['clients']} | {fed['env_steps_per_second']:,.0f} "
            f"| {loc['env_steps_per_second']:,.0f} | {cost:+.1%} "
            f"| {fed['compile_seconds']:.1f} | {fed['gflops_per_second']:.1f} "
            f"| {r['matmul_gflops_per_second']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    if report.get("cache"):
        c = report["cache"]
        lines += [
            "",
            f"Persistent compilation cache ({c['clients']} clients): compile "
            f"{c['cold_compile_seconds']:.1f} s cold, {c['warm_compile_seconds']:.2f} s in a "
            "second process reusing the cache.",
        ]
    if report.get("default_train"):
        d = report["default_train"]
        lines += [
            "",
            f"Default `jfedrl train` (cold cache, end to end): {d['wall_seconds']:.0f} s wall, "
            f"{d['rounds']} rounds, final global eval return {d['final_eval_return']:.1f}.",
        ]
    lines += [
        "",
        "Federation cost = local-only steps/s / federated steps/s - 1: the price of "
        "broadcast, validation, FedAvg and scatter inside the jitted round.",
    ]
    return "\n".join(lines) + "\n"


#: Where the round's work went (issue 15), measured in session 4 (2026-11-30) on the
#: 2-core machine at load average 8-16, 64 clients, one round per block, one device.
FINDINGS = """\
Where the work goes (64 clients, one round, one device; compiled HLO of both programs,
counted by `hlo_op_counts` and by loop body; compile seconds from one process at load ~11):

- The inner loops were already alike: per rollout step 53 fusions (jfedrl) vs 46 (reference:
  jfedrl also stores the behaviour logits, the final observation and the truncation flag, and
  tracks episode returns); per minibatch 135 vs 125 (clipped value loss, the approx_kl metric);
  per epoch 37 vs 34. The time-limit bootstrap is one batched critic pass per local update
  (about 2% of the update's matmul flops), not a per-step one.
- Outside the loops jfedrl had 609 instructions, the reference 176. With every client
  participating, the gather of the participants' states and their scatter back were identities
  on every leaf of the client state (46 gather and 47 scatter fusions; in the whole program 698
  fusions, 67 gathers, 48 scatters vs the reference's 308, 7, 1); the rest is the
  finite-update guard (a select per leaf), the update norms and the metrics. The round now
  skips the gather and scatter at trace time when every client trains every round
  (`Simulator.everyone`): 479 instructions outside the loops (259 fusions), 605 fusions,
  9 gathers, 1 scatter in all. The guard, the norms and the metrics are features and stay.
- The PPO loss computed both KL directions every minibatch; KL[pi || pi_old] is now traced only
  for `mdpo`. Rewards and dones no longer ride through the per-epoch shuffle.
- Compile, same process, sequentially (load ~11): jfedrl's local training alone 59.5 s, the
  whole round 86.7 s, the reference's round 61.9 s. The local training compiles about as
  fast as the reference; the round's own part (sampling, broadcast, guard, aggregation,
  metrics) is the rest.
- Before these changes, one process alternating the two compiled rounds (load 16):
  jfedrl 0.79x the reference's env steps/s.
- Since then: `jax.random`'s Threefry hash is lowered unrolled on CPU (`jfedrl/round/xla_cpu.py`;
  the round's `while` loops 19 -> 5, hence the lower fusion counts above) and local training
  runs per device under `shard_map` on a mesh. On this VM, consecutive processes see slow and
  fast spells of tens of percent, so the ratios above swing from run to run (docs/benchmarks.md
  lists three runs); `--interleaved` (bench/throughput_interleaved.md) times both programs in
  turns in one process and is the figure to quote.
"""


def _ops(run: dict) -> str:
    ops = run.get("hlo_ops")
    return f"{ops['fusion']}, {ops['gather']}, {ops['scatter']}" if ops else "-"


def render_reference(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Throughput: jfedrl against a plain one-file federated PPO",
        "",
        f"{m['date'][:10]}, {benchlib.describe(m)}; load average "
        f"{m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end "
        f"({m['cores']} cores: the machine was shared, so only the ratios within one "
        "row mean anything). Same PPO shape on both sides (4 envs x 128 steps, 4 local "
        "updates, 4 epochs x 4 minibatches, MLP 2x64, FedAvg each round, CartPole-v1); "
        "the reference (`scripts/reference_ppo.py`) runs on one device and is measured "
        "right after each jfedrl run. `python -m scripts.bench_throughput --reference`.",
        "",
    ]
    rows = []
    for c in report["comparisons"]:
        for name, run in c["runs"].items():
            if name.startswith("reference_after_"):
                continue
            ref = c["runs"][f"reference_after_{name}"]
            ratio = run["env_steps_per_second"] / ref["env_steps_per_second"]
            rows.append(
                [
                    c["clients"],
                    name.replace("jfedrl_", "").replace("_", " "),
                    f"{run['env_steps_per_second']:,.0f}",
                    f"{ref['env_steps_per_second']:,.0f}",
                    f"{ratio:.2f}x",
                    f"{run['compile_seconds']:.1f} / {ref['compile_seconds']:.1f}",
                    f"{_ops(run)} / {_ops(ref)}",
                ]
            )
    lines += benchlib.table(
        [
            "clients",
            "jfedrl layout",
            "jfedrl env steps/s",
            "reference env steps/s",
            "jfedrl / reference",
            "compile s (jfedrl / reference)",
            "HLO fusions, gathers, scatters (jfedrl / reference)",
        ],
        rows,
    )
    lines += ["", FINDINGS.rstrip()]
    if report.get("start_up"):
        u = report["start_up"]
        lines += [
            "",
            f"Start-up: `import jfedrl.run.runner` {u['import_runner_seconds']:.1f} s (beyond "
            f"{u['python_seconds']:.2f} s of bare Python); `jfedrl train --rounds 1 "
            "--log.rounds-per-block 1` (the default config, one round), process start to "
            f"exit: {u['first_round_cold_seconds']:.1f} s with a cold compilation cache, "
            f"{u['first_round_warm_seconds']:.1f} s warm.",
        ]
    return "\n".join(lines) + "\n"


def reference_main(clients: list[int], seconds: float) -> None:
    facts = benchlib.machine()
    comparisons = []
    for count in clients:
        print(f"{count} clients:", file=sys.stderr, flush=True)
        comparisons.append(reference_comparison(count, seconds))
    print("start-up ...", file=sys.stderr, flush=True)
    up = start_up()
    report = {"machine": benchlib.finish(facts), "comparisons": comparisons, "start_up": up}
    markdown = render_reference(report)
    benchlib.write_report(benchlib.BENCH / "throughput_reference", report, markdown)
    print(markdown)


def main() -> None:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds-per-block", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 and 16 clients, short runs")
    parser.add_argument("--skip-default-train", action="store_true")
    parser.add_argument(
        "--reference", action="store_true", help="jfedrl vs scripts/reference_ppo.py only"
    )
    parser.add_argument(
        "--interleaved", action="store_true", help="jfedrl and the reference in one process"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--interleaved-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--federated-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        result = measure_one(args.one, args.seconds, args.rounds_per_block, args.federated_only)
        print(json.dumps(result))
        return
    if args.interleaved_one is not None:
        result = interleaved_one(args.interleaved_one, args.seconds, args.rounds_per_block)
        print(json.dumps(result))
        return
    if args.reference:
        reference_main(args.clients, args.seconds)
        return
    if args.interleaved:
        interleaved_main(args.clients, args.seconds, args.rounds_per_block)
        return
    if args.quick:
        args.clients, args.seconds = [1, 16], 1.0
    runs = []
    for clients in args.clients:
        print(f"measuring {clients} clients ...", file=sys.stderr)
        runs.append(
            _subprocess(
                [
                    "--one",
                    str(clients),
                    "--seconds",
                    str(args.seconds),
                    "--rounds-per-block",
                    str(args.rounds_per_block),
                ]
            )
        )
    report = {"machine": benchlib.machine(), "runs": runs}
    print("persistent cache check ...", file=sys.stderr)
    report["cache"] = cache_check(16)
    if not (args.quick or args.skip_default_train):
        print("default jfedrl train ...", file=sys.stderr)
        report["default_train"] = default_train_wall()
    benchlib.write_report(benchlib.BENCH / "throughput", report, render(report))
    print(render(report))


if __name__ == "__main__":
    main()
