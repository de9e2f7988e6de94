"""N seeds of the default config: one `jfedrl sweep` vs N separate `jfedrl train` processes.

Both sides are measured as whole processes from a cold JAX compilation cache
(a fresh `$JFEDRL_COMPILATION_CACHE` each): the sweep compiles one program,
vmapped over the N seeds; the N `train` processes run one after another and
share their cache, so from the second one on they load the compiled round
instead of compiling it (what a user running them by hand gets). Wall time
includes process start, compilation, training, evaluation and writing.

`--rates K` measures traced hyperparameters instead: a sweep of 2 seeds x K
learning rates as one program (the rate traced) vs the same sweep with tracing
off, so each rate is its own group, compiled and run one after another (both
in-process sweeps, cold caches, run alternately in the same session).

Writes bench/sweep.json and bench/sweep.md (with `--rates`: bench/sweep_traced.*).

    python -m scripts.bench_sweep                  # 8 seeds x 8 rounds
    python -m scripts.bench_sweep --seeds 4 --rounds 4
    python -m scripts.bench_sweep --rates 4 --rounds 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from scripts import benchlib

JFEDRL = [sys.executable, "-m", "jfedrl.cli"]


def timed(command: list[str], cache: Path, label: str) -> float:
    """Runs `command` with its own compilation cache folder; returns its wall seconds."""
    env = dict(os.environ, JFEDRL_COMPILATION_CACHE=str(cache))
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, cwd=benchlib.ROOT)
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s", flush=True)
    return seconds


#: Runs `jfedrl sweep` with no traceable field, so every setup is its own group.
UNTRACED = (
    "import sys; from jfedrl import cli, config; "
    "config.traceable = lambda: (); "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def bench_traced(args: argparse.Namespace) -> None:
    """2 seeds x `args.rates` learning rates: one traced program vs one group per rate."""
    rates = [round(1e-3 * (i + 1), 6) for i in range(args.rates)]
    facts = benchlib.machine()
    data = {
        "name": "bench-lr",
        "base": {"federation": {"rounds": args.rounds}, "log": {"tensorboard": False}},
        "grid": {"algo.ppo.learning_rate": rates},
        "seeds": 2,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep_file = tmp / "sweep.yaml"
        sweep_file.write_text(yaml.safe_dump(data))
        sides = {
            "one program": [*JFEDRL],
            "one group per rate": [sys.executable, "-c", UNTRACED],
        }
        seconds = {}
        for name, head in sides.items():  # alternate: the traced side first, then the other
            seconds[name] = timed(
                [*head, "sweep", str(sweep_file), "--out", str(tmp / name), "--no-progress"],
                tmp / f"cache-{name}",
                f"2 seeds x {args.rates} rates, {name}",
            )
    facts = benchlib.finish(facts)
    traced_s, grouped_s = seconds["one program"], seconds["one group per rate"]
    report = {
        "machine": facts,
        "rates": rates,
        "seeds": 2,
        "rounds": args.rounds,
        "one_program_seconds": traced_s,
        "groups_seconds": grouped_s,
        "speedup": grouped_s / traced_s,
    }
    load = benchlib.load_averages(facts)
    rows = [
        [f"2 seeds x {args.rates} learning rates: one program (rate traced)", f"{traced_s:.1f}"],
        [f"2 seeds x {args.rates} learning rates: {args.rates} groups", f"{grouped_s:.1f}"],
    ]
    markdown = "\n".join(
        [
            "# Sweep: learning rates traced in one program vs one group per rate",
            "",
            f"{facts['date'][:10]}, {benchlib.describe(facts)}. Default config (CartPole-v1, "
            f"16 clients, FedAvg, PPO), {args.rounds} rounds, 2 seeds x {args.rates} learning "
            f"rates {rates}; cold compilation cache per side; one run each. "
            f"`python -m scripts.bench_sweep --rates {args.rates} --rounds {args.rounds}`.",
            "",
            *benchlib.table(["what", "wall s"], rows),
            "",
            f"Speed-up of one traced program: **{grouped_s / traced_s:.2f}x**.",
            "",
            "Whole processes: start-up, compilation, training, evaluation and writing. "
            + benchlib.load_note(load),
            "",
        ]
    )
    benchlib.write_report(Path(args.out_traced), report, markdown)


def main() -> None:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rates", type=int, default=0, help="measure traced learning rates")
    parser.add_argument("--out", default=str(benchlib.BENCH / "sweep"))
    parser.add_argument("--out-traced", default=str(benchlib.BENCH / "sweep_traced"))
    args = parser.parse_args()
    if args.rates:
        bench_traced(args)
        return
    from jfedrl.config import Config
    from jfedrl.round.simulator import make_simulator
    from jfedrl.schema.convert import override

    config = override(Config(), {"federation.rounds": args.rounds})
    steps_per_run = make_simulator(config).env_steps_per_round * args.rounds
    facts = benchlib.machine()
    common = {"federation": {"rounds": args.rounds}, "log": {"tensorboard": False}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep_file = tmp / "sweep.yaml"
        sweep_file.write_text(
            yaml.safe_dump({"name": "bench", "base": common, "seeds": args.seeds})
        )
        sweep_seconds = timed(
            [*JFEDRL, "sweep", str(sweep_file), "--out", str(tmp / "sweep"), "--no-progress"],
            tmp / "cache-sweep",
            f"jfedrl sweep, {args.seeds} seeds vmapped",
        )
        train_seconds = [
            timed(
                [*JFEDRL, "train", "--rounds", str(args.rounds), "--seed", str(seed)]
                + ["--run-dir", str(tmp / f"train-{seed}"), "--log.tensorboard", "false"]
                + ["--no-progress", "--quiet"],
                tmp / "cache-train",
                f"jfedrl train --seed {seed}",
            )
            for seed in range(args.seeds)
        ]
    facts = benchlib.finish(facts)
    total_steps = steps_per_run * args.seeds
    separate = sum(train_seconds)
    report = {
        "machine": facts,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "env_steps_per_run": steps_per_run,
        "sweep_seconds": sweep_seconds,
        "train_seconds": train_seconds,
        "speedup": separate / sweep_seconds,
    }
    load = benchlib.load_averages(facts)
    rows = [
        [f"one `jfedrl sweep` ({args.seeds} seeds vmapped)", f"{sweep_seconds:.1f}"]
        + [f"{total_steps / sweep_seconds:,.0f}"],
        [f"{args.seeds} `jfedrl train` processes, one after another", f"{separate:.1f}"]
        + [f"{total_steps / separate:,.0f}"],
    ]
    markdown = "\n".join(
        [
            "# Sweep: N seeds in one vmapped program vs N `jfedrl train` processes",
            "",
            f"{facts['date'][:10]}, {benchlib.describe(facts)}. Default config (CartPole-v1, "
            f"16 clients, FedAvg, PPO) with {args.rounds} rounds, {args.seeds} seeds; "
            f"cold compilation cache; one run. `python -m scripts.bench_sweep --seeds "
            f"{args.seeds} --rounds {args.rounds}`.",
            "",
            *benchlib.table(["what", "wall s", "env steps/s"], rows),
            "",
            f"Speed-up of the sweep: **{separate / sweep_seconds:.2f}x** (target: 3x).",
            "",
            "Wall time is whole processes: start-up, compilation, training, evaluation and "
            "writing. The train processes share one compilation cache, so only the first "
            "compiles. Both sides use the default host-device layout (the sweep vmaps over "
            "seeds inside it). " + benchlib.load_note(load),
            "",
        ]
    )
    benchlib.write_report(Path(args.out), report, markdown)


if __name__ == "__main__":
    main()
