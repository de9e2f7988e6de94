"""Side-by-side benchmark: jfedrl vs what users would pick instead.

The same task -- federated PPO on CartPole-v1, C clients, R rounds, the same
env steps per client per round, the same network and PPO hyperparameters, the
same evaluation protocol -- run by

  (a) jfedrl: vmapped clients, one jitted round (`jfedrl.round.simulator`);
  (b) an SB3 loop: one stable-baselines3 PPO per client trained one after
      another, FedAvg of the policies' parameters between rounds (seed 000's
      design, without its bugs);
  (c) Flower's simulation (Ray) with the same SB3 clients, if flwr is
      importable by `--flower-python`.

Every system runs in its own subprocess (peak memory and imports do not mix).
Writes `<out>.json`, `<out>.md` and `<out>.png`; docs/benchmarks.md explains
what is measured and why it is fair.

    python -m scripts.bench_vs_peers --clients 4 16 64 --rounds 16
    python -m scripts.bench_vs_peers --quick        # ~2 minute smoke check
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from scripts import benchlib  # noqa: E402
from scripts.peers.common import BenchSpec  # noqa: E402

SYSTEMS = ("jfedrl", "sb3_loop", "flower")


# ------------------------------------------------------------------ worker side


def worker_main(args: argparse.Namespace) -> None:
    spec = BenchSpec.from_dict(json.loads(args.spec))
    if args.worker == "jfedrl":
        from scripts.peers import jfedrl_side

        result = jfedrl_side.run(spec, _PROCESS_START, args.cache_dir, args.cache_state)
    elif args.worker == "sb3_loop":
        from scripts.peers import sb3_loop

        result = sb3_loop.run(spec, _PROCESS_START)
    elif args.worker == "flower":
        from scripts.peers import flower_sim

        result = flower_sim.run(spec, _PROCESS_START)
    else:
        raise SystemExit(f"--worker: unknown system {args.worker!r}; allowed: {SYSTEMS}")
    result["python"] = sys.executable
    Path(args.result).write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------ driver side


def _kill_tree(pid: int) -> None:
    """Kills the worker we started and every process it started, by pid."""
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def run_worker(
    python: str,
    system: str,
    spec: BenchSpec,
    timeout: float | None,
    log_dir: Path,
    extra: tuple[str, ...] = (),
) -> tuple[dict | None, str]:
    """Runs one system in a fresh process; returns (result or None, status)."""
    result_path = log_dir / f"{system}-C{spec.clients}-{len(list(log_dir.iterdir()))}.json"
    log_path = result_path.with_suffix(".log")
    cmd = [
        python,
        "-m",
        "scripts.bench_vs_peers",
        "--worker",
        system,
        "--spec",
        json.dumps(spec.to_dict()),
        "--result",
        str(result_path),
        *extra,
    ]
    env = dict(os.environ)
    # The worker may be another interpreter (--flower-python): it finds `scripts` here.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(benchlib.ROOT), env.get("PYTHONPATH")]))
    print(f"  running {system} C={spec.clients} ...", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            return None, f"timeout after {timeout:.0f} s"
    if code != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        print(f"  {system} C={spec.clients} failed (exit {code}):\n{tail}", flush=True)
        return None, f"failed (exit {code}); see {log_path}"
    result = json.loads(result_path.read_text())
    print(
        f"  {system:<8} C={spec.clients:<3} wall {result['wall_s']:7.1f} s "
        f"(setup {result['setup_s']:.1f}, compile {result['compile_s']:.1f}, "
        f"train {result['train_s']:.1f}; eval {result['eval_s']:.1f} apart)  "
        f"{result['steps_per_s']:,.0f} steps/s  peak {result['peak_rss_mb']:.0f} MB  "
        f"final return {result['final_eval_return']:.1f}",
        flush=True,
    )
    return result, "measured"


def flower_available(python: str) -> tuple[bool, str]:
    probe = "import flwr, ray, stable_baselines3, torch, psutil; print(flwr.__version__)"
    try:
        out = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"{python}: {error}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"{python} cannot import flwr[simulation] + SB3: {last}"
    return True, f"flwr {out.stdout.strip()} via {python}"


def extrapolate(base: dict, clients: int, status: str) -> dict:
    """A peer's result at `clients`, scaled linearly from a measured smaller run.

    The SB3 loop trains clients one after another, so its setup and training
    time grow linearly in C; memory is extrapolated linearly too (from two
    measured points when there are two). No learning curve is invented.
    """
    scale = clients / base["clients"]
    setup = base["setup_s"] * scale
    train = base["train_s"] * scale
    steps = base["env_steps_total"] * scale
    memory = base["peak_rss_mb"]
    if base.get("_previous") is not None:
        prev = base["_previous"]
        slope = (base["peak_rss_mb"] - prev["peak_rss_mb"]) / (base["clients"] - prev["clients"])
        memory = base["peak_rss_mb"] + slope * (clients - base["clients"])
    return {
        "system": base["system"],
        "clients": clients,
        "rounds": base["rounds"],
        "local_updates": base["local_updates"],
        "env_steps_per_client_round": base["env_steps_per_client_round"],
        "env_steps_total": int(steps),
        "setup_s": setup,
        "compile_s": 0.0,
        "train_s": train,
        "wall_s": setup + train,
        "eval_s": None,
        "steps_per_s": steps / train,
        "steps_per_s_wall": steps / (setup + train),
        "time_to_475_s": None,
        "round_to_475": None,
        "final_eval_return": None,
        "per_round": [],
        "peak_rss_mb": memory,
        "cpu_s": base["cpu_s"] * scale if base.get("cpu_s") else None,
        "steps_per_cpu_s": base.get("steps_per_cpu_s"),
        "extrapolated": True,
        "extrapolated_from_clients": base["clients"],
        "status": status,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument(
        "--local-updates",
        type=int,
        default=4,
        help="PPO updates (4 envs x 128 steps each) per client per round",
    )
    parser.add_argument("--eval-episodes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check (~2 min): C=4, 2 rounds of 1 update, 2 eval episodes",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="seconds an SB3 / Flower run may take; larger C are extrapolated",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads per SB3 process / Flower actor (0: torch's default, one per core)",
    )
    parser.add_argument("--flower-actors", type=int, default=2)
    parser.add_argument(
        "--flower-python",
        default=os.environ.get("JFEDRL_BENCH_FLOWER_PYTHON", sys.executable),
        help="interpreter with flwr[simulation], SB3 and torch (flwr may need its own venv)",
    )
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-cache jfedrl run")
    parser.add_argument(
        "--out",
        default=None,
        help="output prefix (default bench/peers; with --quick a temp folder)",
    )
    # Worker mode (internal).
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-state", default="cold", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.local_updates, args.eval_episodes = [4], 2, 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    from scripts.peers import report

    if args.out:
        out = Path(args.out)
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="jfedrl-bench-quick-")) / "peers"
    else:
        out = benchlib.BENCH / "peers"
    log_dir = Path(tempfile.mkdtemp(prefix="jfedrl-bench-logs-"))
    machine = benchlib.machine(with_jax=False)  # this driver process never imports jax
    print(f"machine: {machine['cpu']} x{machine['cores']}, {machine['memory_gib']:.1f} GiB")
    print(f"worker logs: {log_dir}")

    systems = list(args.systems)
    notes: dict[str, str] = {}
    if "flower" in systems:
        ok, why = flower_available(args.flower_python)
        notes["flower"] = why
        if not ok:
            print(f"Flower skipped: {why}")
            systems.remove("flower")

    results: list[dict] = []
    skipped: list[dict] = []
    last_measured: dict[str, dict] = {}
    for clients in sorted(args.clients):
        spec = BenchSpec(
            clients=clients,
            rounds=args.rounds,
            local_updates=args.local_updates,
            eval_episodes=args.eval_episodes,
            seed=args.seed,
            torch_threads=args.torch_threads,
            flower_actors=args.flower_actors,
        )
        print(f"C={clients}: {spec.steps_per_round * spec.rounds:,} env steps in total")
        if "jfedrl" in systems:
            cache = tempfile.mkdtemp(prefix="jfedrl-bench-xla-")
            for state in ("cold",) if args.no_warm else ("cold", "warm"):
                extra = ("--cache-dir", cache, "--cache-state", state)
                result, status = run_worker(sys.executable, "jfedrl", spec, None, log_dir, extra)
                if result is None:
                    skipped.append({"system": "jfedrl", "clients": clients, "status": status})
                    continue
                result["system"] = f"jfedrl ({state} cache)"
                result["status"] = status
                results.append(result)
            shutil.rmtree(cache, ignore_errors=True)
        for system in ("sb3_loop", "flower"):
            if system not in systems:
                continue
            python = args.flower_python if system == "flower" else sys.executable
            base = last_measured.get(system)
            if base is not None:
                scale = clients / base["clients"]
                projected = (base["setup_s"] + base["train_s"] + (base["eval_s"] or 0)) * scale
                if projected > args.budget:
                    status = (
                        f"not run: projected {projected:.0f} s > budget {args.budget:.0f} s; "
                        f"extrapolated from C={base['clients']}"
                    )
                    print(f"  {system} C={clients} {status}")
                    results.append(extrapolate(base, clients, status))
                    continue
            result, status = run_worker(python, system, spec, args.budget, log_dir)
            if result is None:
                if base is not None:
                    status = f"{status}; extrapolated from C={base['clients']}"
                    results.append(extrapolate(base, clients, status))
                else:
                    skipped.append({"system": system, "clients": clients, "status": status})
                continue
            result["status"] = status
            results.append(result)
            result_copy = dict(result)
            result_copy["_previous"] = last_measured.get(system)
            if result_copy["_previous"] is not None:
                result_copy["_previous"] = {
                    k: result_copy["_previous"][k] for k in ("clients", "peak_rss_mb")
                }
            last_measured[system] = result_copy

    data = report.build(args, results, skipped, notes, machine)
    report.write(data, out)
    print(f"\nwrote {out}.json, {out}.md, {out}.png\n")
    print(Path(f"{out}.md").read_text())


if __name__ == "__main__":
    main()
