"""A bit-level snapshot of two federated rounds per algorithm, to prove a refactor changes nothing.

Builds tiny configs (2 clients, hidden layers of 8, small replay buffers, short rollouts)
for ppo, a2c, dqn, td3 and ddpg, one fedadam strategy case on ppo, and a two-run sweep
group (two PPO learning rates vmapped in one program, `jfedrl.experiments.sweep.VmappedRunner`).
Each case runs `init` and one block of 2 rounds, then one evaluation; every leaf of the
final state, the metrics and the evaluation returns is stored under
`<case>/<kind><jax key path>`. Metadata (`meta/jax_version`, `meta/cpu_key`) says where
the snapshot was made: bit-identical results are only expected from the same jax
version on the same kind of CPU.

Usage:
    python scripts/snapshot.py --write tests/fixtures/snapshot-v0.npz   # write
    python scripts/snapshot.py [PATH]                                    # compare
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jfedrl.config import Config
from jfedrl.experiments import sweep
from jfedrl.round import simulator as federated
from jfedrl.run import runner
from jfedrl.schema.convert import override

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "snapshot-v0.npz"

#: Settings every case shares: 2 clients, one block of 2 rounds, 2 evaluation episodes.
BASE: dict[str, Any] = {
    "federation.num_clients": 2,
    "federation.rounds": 2,
    "federation.local_updates": 2,
    "log.rounds_per_block": 2,
    "log.eval_episodes": 2,
    "log.tensorboard": False,
    "log.plot": False,
    "log.progress": False,
}

PPO: dict[str, Any] = {
    "algo.name": "ppo",
    "algo.ppo.num_envs": 2,
    "algo.ppo.num_steps": 16,
    "algo.ppo.num_minibatches": 2,
    "algo.ppo.update_epochs": 2,
    "algo.ppo.hidden_sizes": [8],
}

#: Pendulum-v1 episodes are 200 steps; 50 keeps the TD3/DDPG evaluations short.
TD3: dict[str, Any] = {
    "algo.name": "td3",
    "env.name": "Pendulum-v1",
    "env.max_episode_steps": 50,
    "algo.td3.num_envs": 2,
    "algo.td3.num_steps": 8,
    "algo.td3.gradient_steps": 4,
    "algo.td3.batch_size": 16,
    "algo.td3.buffer_size": 256,
    "algo.td3.learning_starts": 16,
    "algo.td3.hidden_sizes": [8],
}

#: name -> config changes over BASE.
CASES: dict[str, dict[str, Any]] = {
    "ppo": PPO,
    "a2c": {
        "algo.name": "a2c",
        "algo.a2c.num_envs": 2,
        "algo.a2c.num_steps": 8,
        "algo.a2c.hidden_sizes": [8],
    },
    "dqn": {
        "algo.name": "dqn",
        "algo.dqn.num_envs": 2,
        "algo.dqn.num_steps": 8,
        "algo.dqn.gradient_steps": 4,
        "algo.dqn.batch_size": 16,
        "algo.dqn.buffer_size": 256,
        "algo.dqn.learning_starts": 16,
        "algo.dqn.target_update_interval": 4,
        "algo.dqn.hidden_sizes": [8],
    },
    "td3": TD3,
    "ddpg": {**TD3, "algo.td3.ddpg": True},
    "ppo_fedadam": {**PPO, "strategy.name": "fedadam", "strategy.fedadam.lr": 0.01},
}

#: The sweep group: two PPO learning rates, one program.
SWEEP_FIELD = "algo.ppo.learning_rate"
SWEEP_VALUES = (2.5e-3, 1e-3)
SWEEP_SEEDS = (0, 1)


def config_of(changes: dict[str, Any]) -> Config:
    """The default `Config` with `BASE` and `changes` applied."""
    return override(Config(), {**BASE, **changes})


def _leaves(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in flat}


def _key_data(tree: Any) -> Any:
    """Typed PRNG keys as their raw uint32 data (NumPy cannot hold a key array)."""

    def raw(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(raw, tree)


def _case(name: str, changes: dict[str, Any]) -> dict[str, np.ndarray]:
    config = config_of(changes)
    sim = federated.make_simulator(config)
    state = sim.init(jax.random.PRNGKey(0))
    state, metrics = sim.run_block(state, 2)
    returns = sim.evaluate(state, jax.random.PRNGKey(1))
    out = _leaves(f"{name}/state", _key_data(state))
    out.update(_leaves(f"{name}/metrics", metrics))
    out[f"{name}/eval"] = np.asarray(returns)
    return out


def _sweep_case() -> dict[str, np.ndarray]:
    """Two learning rates vmapped in one program, as `jfedrl sweep` runs a group."""
    sim = federated.make_simulator(config_of(PPO))
    group = sweep.VmappedRunner(sim, {SWEEP_FIELD: np.asarray(SWEEP_VALUES)})
    try:
        keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in SWEEP_SEEDS])
        states = group.init(keys)
        states, metrics = group.run_block(states, 2)
    finally:
        group.close()
    out = _leaves("sweep/state", _key_data(states))
    out.update(_leaves("sweep/metrics", metrics))
    return out


def metadata() -> dict[str, np.ndarray]:
    """Where a snapshot is made: the jax version and `jfedrl.run.runner.cpu_key()`."""
    return {
        "meta/jax_version": np.asarray(jax.__version__),
        "meta/cpu_key": np.asarray(runner.cpu_key()),
    }


def snapshot(cases: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The final state, metrics and evaluation leaves of `cases`, plus `metadata()`.

    Args:
        cases: names from `CASES` and/or `"sweep"` (default: all of them); a subset
            gives the same arrays as the full snapshot's keys with those prefixes.
    """
    names = (*CASES, "sweep") if cases is None else cases
    unknown = [n for n in names if n != "sweep" and n not in CASES]
    if unknown:
        raise ValueError(f"unknown snapshot cases {unknown}; known: {[*CASES, 'sweep']}")
    out = metadata()
    for name in names:
        out.update(_sweep_case() if name == "sweep" else _case(name, CASES[name]))
    return out


def load(path: str | Path) -> dict[str, np.ndarray]:
    """A snapshot written by `--write`."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def differences(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> tuple[bool, list[str]]:
    """`(exact, problems)`: bit-for-bit comparison when the metadata match, else allclose.

    Returns whether the comparison was exact and one line per missing, extra or
    differing key (empty when the snapshots agree).
    """
    exact = all(str(old.get(k)) == str(new.get(k)) for k in metadata())
    problems = [f"missing: {k}" for k in sorted(old.keys() - new.keys())]
    problems += [f"new: {k}" for k in sorted(new.keys() - old.keys())]
    for key in sorted(old.keys() & new.keys()):
        if key.startswith("meta/"):
            continue
        a, b = old[key], new[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: {a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}")
        elif exact and not np.array_equal(a, b, equal_nan=True):
            problems.append(f"{key}: not bit-identical")
        elif not exact and not _close(a, b):
            problems.append(f"{key}: not allclose(rtol=1e-5, atol=1e-6)")
    return exact, problems


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.issubdtype(a.dtype, np.inexact):
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))


def main(argv: list[str] | None = None) -> int:
    from jfedrl.run.startup import prepare_process

    prepare_process()  # as `jfedrl train` runs: the fast CPU lowering

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="snapshot to compare")
    parser.add_argument("--write", metavar="PATH", help="write the snapshot to PATH instead")
    args = parser.parse_args(argv)
    new = snapshot()
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.write, **new)
        print(f"wrote {len(new)} arrays to {args.write}")
        return 0
    exact, problems = differences(load(args.path), new)
    how = "bit for bit" if exact else "allclose (other jax version or CPU)"
    for line in problems:
        print(line)
    print(f"{len(new)} arrays compared {how}: {len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
