"""Throughput, memory and time split of the federated round on an accelerator.

One invocation measures one environment at some client counts and merges its
points into `<out>.json` / `<out>.md` (so `scripts/gpu_check.sh` can run each
stage in its own process under its own time limit, and a report is on disk
after every point). Per (environment, client count): compile seconds, env
steps/s of the whole round (rollout, learning, aggregation), XLA's memory
analysis of the compiled round (`jfedrl.run.devices.memory_estimate`) and bytes
per client; with `--reference`, `scripts/reference_ppo.py` at the same shapes
on the same device; at `--phases-at` counts, where a round's time goes, from
separately jitted phases: the env steps alone (random actions), local training
without aggregation (`bench_throughput.local_only_block`), the whole round. From
the two smallest counts of an environment: the bytes per client and the largest
client count that fits. A count that fails (out of memory) is recorded with its
error and the next one still runs.

Uses only APIs present in jax 0.9 through 0.11 (`jit(...).lower().compile()`,
`Compiled.memory_analysis()`, `Device.memory_stats()`).

Usage:
    python -m scripts.bench_gpu --env CartPole-v1 --clients 256 1024 --reference --phases-at 1024
    python -m scripts.bench_gpu --tiny --env CartPole-v1 --clients 2 4 --reference  # CPU, CI
    python -m scripts.bench_gpu --stage NAME --status ok --seconds 12   # record a stage
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from scripts import benchlib
from scripts.bench_throughput import local_only_block, ppo_settings, time_blocks

#: The issue's targets on one GPU (recorded against the measurements, not asserted).
TARGET_STEPS_PER_SECOND = 1e8  # CartPole, at >= 1024 clients, training included
TARGET_STEPS_AT_CLIENTS = 1024
TARGET_RATIO = 1.2  # against scripts/reference_ppo.py at the same shapes
TARGET_CLIENTS = 10_000  # CartPole clients in one round, in device memory
#: The tiny CPU setting (`--tiny`, CI): the same code at a shape that compiles in seconds.
TINY_SHAPE = {"NUM_ENVS": 2, "NUM_STEPS": 8, "EPOCHS": 1, "MINIBATCHES": 1, "LOCAL_UPDATES": 1}
#: Per-environment overrides (Brax: shorter rollouts, its steps cost far more).
ENV_SETTINGS = {"brax-hopper": {"algo.ppo.num_steps": 64}}


def use_tiny_shape() -> None:
    """Shrinks the PPO shape of both sides (jfedrl reads the reference's constants)."""
    from scripts import reference_ppo

    for name, value in TINY_SHAPE.items():
        setattr(reference_ppo, name, value)


def settings(env: str, clients: int, tiny: bool) -> dict[str, Any]:
    """jfedrl's config overrides: the reference's PPO shape, and the env's own."""
    extra = {} if tiny else ENV_SETTINGS.get(env, {})
    hidden = {"algo.ppo.hidden_sizes": [8, 8]} if tiny and env != "CartPole-v1" else {}
    return {**ppo_settings(clients), **hidden, **extra, "env.name": env}


def env_steps_only(sim, state):
    """A jitted block of just the round's env steps (random actions), and its first carry.

    Same count as the round's: clients x local updates x num_steps x num_envs.
    """
    import jax

    config = sim.config
    env, num_envs = sim.envs.env, config.algo.ppo.num_envs
    steps = config.federation.local_updates * config.algo.ppo.num_steps
    space = env.action_space(sim.envs.default_params)
    env_params = sim.begin_round(state).env_params

    def client(key, params):
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, (0, None))(
            jax.random.split(key_reset, num_envs), params
        )

        def step(env_state, key):
            key_act, key_env = jax.random.split(key)
            actions = jax.vmap(space.sample)(jax.random.split(key_act, num_envs))
            _, env_state, reward, _, _, _ = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(key_env, num_envs), env_state, actions, params
            )
            return env_state, reward.sum()

        _, rewards = jax.lax.scan(step, env_state, jax.random.split(key_steps, steps))
        return rewards.sum()

    def block(carry):
        key, params = carry
        key, sub = jax.random.split(key)
        total = jax.vmap(client)(jax.random.split(sub, sim.num_participants), params)
        return (key, params), total.sum()

    return jax.jit(block), (jax.random.PRNGKey(1), env_params)


def _seconds_per_call(compiled, state, seconds: float) -> float:
    _, calls, run_seconds = time_blocks(compiled, state, seconds)
    return run_seconds / calls


def phases(sim, seconds: float) -> dict[str, float]:
    """Seconds per round: env steps alone, local training, aggregation (the rest)."""
    import jax

    state = sim.init(jax.random.PRNGKey(0))
    local = jax.jit(local_only_block(sim, 1), donate_argnums=0).lower(state).compile()
    local_s = _seconds_per_call(local, state, seconds)
    block, carry = env_steps_only(sim, sim.init(jax.random.PRNGKey(0)))
    env_s = _seconds_per_call(block.lower(carry).compile(), carry, seconds)
    return {"env_steps_s": env_s, "local_training_s": local_s}


def measure(sim, clients: int, seconds: float) -> dict:
    """One (env, clients) point of `sim`: compile, warm-up block, then timed blocks."""
    import jax

    from jfedrl.round.simulator import Simulator
    from jfedrl.run import devices

    state = sim.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = Simulator.run_block.lower(sim, state, 1).compile()
    compile_seconds = time.perf_counter() - start
    estimate = devices.memory_estimate(compiled)
    round_s = _seconds_per_call(compiled, state, seconds)
    memory = None if estimate is None else estimate.total * jax.device_count()
    return {
        "env": sim.config.env.name,
        "clients": clients,
        "compile_seconds": compile_seconds,
        "env_steps_per_second": sim.env_steps_per_round / round_s,
        "round_seconds": round_s,
        "memory_bytes": memory,
        "memory_bytes_per_client": None if memory is None else memory / clients,
        "phases": None,
    }


def split_round(sim, round_s: float, seconds: float) -> dict[str, float]:
    """Where a round of `round_s` seconds goes: env steps, learning, aggregation."""
    split = phases(sim, seconds)
    return {
        "env_steps_s": split["env_steps_s"],
        "learning_s": max(split["local_training_s"] - split["env_steps_s"], 0.0),
        "aggregation_s": max(round_s - split["local_training_s"], 0.0),
        "local_training_s": split["local_training_s"],
        "round_s": round_s,
    }


def reference(clients: int, seconds: float) -> dict:
    """`scripts/reference_ppo.py` at `clients` clients (CartPole, the same PPO shape)."""
    from scripts import reference_ppo

    result = reference_ppo.measure(clients, seconds)
    return {k: result[k] for k in ("compile_seconds", "env_steps_per_second")}


def fit(points: list[dict], capacity: int | None) -> dict:
    """Bytes per client and fixed bytes from the two smallest measured counts; what fits."""
    from jfedrl.run.devices import clients_that_fit

    known = sorted((p for p in points if p.get("memory_bytes")), key=lambda p: p["clients"])
    if len(known) < 2 or capacity is None:
        return {"bytes_per_client": None, "largest_clients_that_fit": None}
    a, b = known[0], known[1]
    per_client = (b["memory_bytes"] - a["memory_bytes"]) / (b["clients"] - a["clients"])
    fixed = max(int(a["memory_bytes"] - per_client * a["clients"]), 0)
    largest = clients_that_fit(b["memory_bytes"], b["clients"], capacity, fixed_bytes=fixed)
    return {"bytes_per_client": per_client, "largest_clients_that_fit": largest}


def targets(report: dict) -> list[dict]:
    """The issue's three GPU targets against what the report holds (None: not measured)."""
    cart = [p for p in report["points"] if p["env"] == "CartPole-v1" and "error" not in p]
    big = [p["env_steps_per_second"] for p in cart if p["clients"] >= TARGET_STEPS_AT_CLIENTS]
    ratios = [p["ratio"] for p in cart if p.get("ratio")]
    ran = max((p["clients"] for p in cart), default=None)
    fits = report["fits"].get("CartPole-v1", {}).get("largest_clients_that_fit")
    rows = [
        (
            "CartPole env steps/s at >= 1024 clients, training included",
            max(big, default=None),
            TARGET_STEPS_PER_SECOND,
        ),
        (
            "CartPole speed vs reference_ppo, same shapes (lowest ratio)",
            min(ratios, default=None),
            TARGET_RATIO,
        ),
        ("CartPole clients run in one round", ran, TARGET_CLIENTS),
        ("CartPole clients that fit (memory analysis)", fits, TARGET_CLIENTS),
    ]
    return [
        {"name": n, "measured": m, "target": t, "met": None if m is None else m >= t}
        for n, m, t in rows
    ]


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(report: dict) -> str:
    m = report["machine"]
    tiny = report["tiny"]
    lines = [
        "# Federated PPO on an accelerator",
        "",
        f"{m['date'][:10]}, {benchlib.describe(m)}, {report.get('device_kind', '?')}; device "
        f"memory {(report['capacity_bytes'] or 0) / 2**30:.1f} GiB. "
        f"`scripts/gpu_check.sh`{' (JFEDRL_GPU_CHECK_TINY=1: tiny CPU shapes)' if tiny else ''}. "
        f"PPO shape of `scripts/reference_ppo.py` on both sides: {report['shape']}"
        f"{'' if tiny else '; brax-hopper with 64-step rollouts'}.",
        "",
        "## Targets",
        "",
    ]
    rows = []
    for t in report["targets"]:
        spec = ".2f" if t["target"] < 100 else ",.0f"
        met = {None: "not measured", True: "met", False: "**not met**"}[t["met"]]
        rows.append([t["name"], _fmt(t["measured"], spec), _fmt(t["target"], spec), met])
    lines += benchlib.table(["target", "measured", "target value", ""], rows)
    lines += ["", "## Points", ""]
    rows = []
    for p in report["points"]:
        if "error" in p:
            rows.append([p["env"], p["clients"], "failed: " + p["error"][:80]] + [""] * 6)
            continue
        ref = p.get("reference") or {}
        split = p.get("phases") or {}
        if "error" in split:
            split = {}
            phase_text = "failed: " + p["phases"]["error"][:60]
        else:
            phase_text = ""
        per = p["memory_bytes_per_client"]
        rows.append(
            [
                p["env"],
                p["clients"],
                _fmt(p["env_steps_per_second"]),
                _fmt(TARGET_STEPS_PER_SECOND if p["env"] == "CartPole-v1" else None),
                f"{p['compile_seconds']:.1f}",
                "n/a" if per is None else f"{per / 2**10:.1f}",
                _fmt(ref.get("env_steps_per_second")),
                _fmt(p.get("ratio"), ".2f") + (f" (target {TARGET_RATIO})" if ref else ""),
                " / ".join(
                    f"{split[k] * 1e3:.1f}" for k in ("env_steps_s", "learning_s", "aggregation_s")
                )
                if split
                else phase_text,
            ]
        )
    lines += benchlib.table(
        [
            "env",
            "clients",
            "env steps/s",
            "target steps/s",
            "compile s",
            "KiB per client",
            "reference steps/s",
            "ratio",
            "ms env / learn / aggregate",
        ],
        rows,
    )
    lines.append("")
    for env, f in report["fits"].items():
        per = f["bytes_per_client"]
        lines.append(
            f"- {env}: {'n/a' if per is None else f'{per / 2**10:.1f} KiB'} per client "
            f"(slope of the two smallest counts); largest client count that fits: "
            f"{_fmt(f['largest_clients_that_fit'])}."
        )
    lines += ["", "## Stages", ""]
    lines += benchlib.table(
        ["stage", "status", "seconds", "cap s"],
        [
            [name, s["status"], f"{s['seconds']:.0f}", _fmt(s.get("cap_seconds"), ".0f")]
            for name, s in report["stages"].items()
        ],
    )
    return "\n".join(lines) + "\n"


def load(out: Path) -> dict | None:
    path = Path(f"{out}.json")
    return json.loads(path.read_text()) if path.exists() else None


def new_report(tiny: bool) -> dict:
    import jax

    from jfedrl.run.devices import device_memory_bytes
    from scripts import reference_ppo as ref

    device = jax.devices()[0]
    capacity = device_memory_bytes(device)
    if capacity is not None and device.platform != "cpu":
        capacity *= jax.device_count()
    return {
        "machine": benchlib.machine(),
        "device_kind": device.device_kind,
        "tiny": tiny,
        "shape": {k: getattr(ref, k) for k in TINY_SHAPE},
        "capacity_bytes": capacity,
        "points": [],
        "fits": {},
        "targets": [],
        "stages": {},
    }


def save(out: Path, report: dict) -> None:
    """Recomputes the fits and targets and writes both files (after every point)."""
    envs = dict.fromkeys(p["env"] for p in report["points"])
    report["fits"] = {
        env: fit([p for p in report["points"] if p["env"] == env], report["capacity_bytes"])
        for env in envs
    }
    report["targets"] = targets(report)
    report["machine"] = benchlib.finish(report["machine"])
    benchlib.write_report(out, report, render(report))


def main(argv: list[str] | None = None) -> None:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", help="environment name (envs.names())")
    parser.add_argument("--clients", type=int, nargs="*", default=[], help="client counts")
    parser.add_argument(
        "--reference",
        type=int,
        nargs="*",
        help="also scripts/reference_ppo at these counts (none given: at every count)",
    )
    parser.add_argument("--phases-at", type=int, nargs="*", default=[], help="split these counts")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shapes (CI)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per program")
    parser.add_argument("--out", default=str(benchlib.BENCH / "gpu"), help="output file stem")
    parser.add_argument("--stage", help="record a stage of gpu_check.sh instead of measuring")
    parser.add_argument("--status", default="ok")
    parser.add_argument("--cap-seconds", type=float)
    args = parser.parse_args(argv)
    if not args.stage and not (args.env and args.clients):
        parser.error("--env and --clients are required unless --stage is given")
    if args.reference is not None and args.env != "CartPole-v1":
        parser.error("--reference: scripts/reference_ppo.py runs CartPole-v1 only")
    if args.tiny:
        import jax

        jax.config.update("jax_platforms", "cpu")
        use_tiny_shape()
        if not args.stage:
            args.seconds = min(args.seconds, 0.2)
    out = Path(args.out)
    report = load(out) or new_report(args.tiny)  # imports jax only for a new report
    if args.stage:
        report["stages"][args.stage] = {
            "status": args.status,
            "seconds": args.seconds,
            "cap_seconds": args.cap_seconds,
        }
        save(out, report)
        return
    from jfedrl.config import Config
    from jfedrl.round.simulator import make_simulator
    from jfedrl.schema.convert import override

    def failed(error: Exception) -> dict:
        return {"error": f"{type(error).__name__}: {error}"}

    # Each figure is saved as soon as it is measured: a stage cut short keeps them.
    for clients in args.clients:
        print(f"{args.env}: {clients} clients ...", file=sys.stderr, flush=True)
        try:  # out of memory, say: record it and go on with the next count
            sim = make_simulator(override(Config(), settings(args.env, clients, args.tiny)))
            point = measure(sim, clients, args.seconds)
        except Exception as error:  # noqa: BLE001
            report["points"].append({"env": args.env, "clients": clients, **failed(error)})
            save(out, report)
            continue
        report["points"].append(point)
        save(out, report)
        if clients in args.phases_at:
            try:
                point["phases"] = split_round(sim, point["round_seconds"], args.seconds)
            except Exception as error:  # noqa: BLE001
                point["phases"] = failed(error)
            save(out, report)
        del sim
        if args.reference is not None and (not args.reference or clients in args.reference):
            try:
                point["reference"] = reference(clients, args.seconds)
                point["ratio"] = (
                    point["env_steps_per_second"] / point["reference"]["env_steps_per_second"]
                )
            except Exception as error:  # noqa: BLE001
                point["reference"] = failed(error)
            save(out, report)


if __name__ == "__main__":
    main()
