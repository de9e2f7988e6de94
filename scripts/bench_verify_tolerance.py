"""How far two XLA:CPU targets' results of the same round drift apart (verify_tolerance).

`offload.golem.verify_fraction` compares two providers' results of one task.
Where both run the same CPU the results are bit-identical; across CPUs, XLA
may emit other instructions (vector width, FMA) and the floats differ. Real
providers' CPUs cannot be had here, so this emulates two CPU targets on one
machine by capping XLA's instruction set (`--xla_cpu_max_isa`) in separate
processes, trains the same tiny federation for a few rounds in each, and
prints the largest |a - b| / (1 + |b|) over every param and client state leaf,
per round count: the figure `offload.golem.verify_tolerance` must exceed.

    python -m scripts.bench_verify_tolerance [--rounds 1 3] [--isa AVX2 SSE4_2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _train(rounds: int, out: str) -> None:
    import jax

    from jfedrl.config import Config
    from jfedrl.round.simulator import make_simulator
    from jfedrl.schema.convert import override

    config = override(
        Config(),
        {
            "federation.num_clients": 4,
            "federation.local_updates": 2,
            "algo.ppo.num_envs": 2,
            "algo.ppo.num_steps": 32,
            "algo.ppo.hidden_sizes": [32, 32],
            "log.tensorboard": False,
            "log.plot": False,
            "log.progress": False,
        },
    )
    simulator = make_simulator(config)
    state = simulator.init(jax.random.PRNGKey(0))
    state, _ = simulator.run_block(state, rounds)
    leaves = jax.tree.leaves((state.global_params, state.clients))
    np.savez(
        out, *[np.asarray(x) for x in leaves if np.issubdtype(np.asarray(x).dtype, np.floating)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--isa", nargs="+", default=["AVX2", "SSE4_2"])
    parser.add_argument("--train", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        _train(int(args.train[0]), args.train[1])
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rounds in args.rounds:
            files = {}
            for isa in ["native", *args.isa]:
                env = dict(os.environ)
                if isa != "native":
                    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}"
                out = str(Path(tmp) / f"{isa}-{rounds}.npz")
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "scripts.bench_verify_tolerance",
                        "--train",
                        str(rounds),
                        out,
                    ],
                    env=env,
                    check=True,
                    stderr=subprocess.DEVNULL,
                )
                files[isa] = np.load(out)
            base = files["native"]
            for isa in args.isa:
                other = files[isa]
                worst = max(
                    float(np.max(np.abs(other[k] - base[k]) / (1 + np.abs(base[k])), initial=0))
                    for k in base.files
                )
                identical = all(np.array_equal(other[k], base[k]) for k in base.files)
                results[f"native vs {isa}, {rounds} round(s)"] = {
                    "bit_identical": identical,
                    "max_rel_diff": worst,
                }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
