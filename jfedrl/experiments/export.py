"""`jfedrl export RUN_DIR --out policy.npz`: a checkpointed policy as plain arrays.

The file is a NumPy `.npz` that needs neither jfedrl nor JAX to act: the
policy's dense layers as `kernel_<i>` / `bias_<i>` (applied in order, `x @ kernel
+ bias`, the activation between layers, none after the last) and a `meta` JSON
string that says how to turn the last layer's output into the env's action:

* `argmax`: a discrete action, the index of the largest output (PPO and A2C
  logits, DQN Q-values; a dueling DQN exports its advantage head, whose argmax
  is the Q-values' argmax),
* `clip`: a Box action, the output clipped to the action bounds (PPO and A2C:
  the Gaussian's mean, the deterministic action `jfedrl eval` takes),
* `tanh`: a Box action, `centre + half_range * tanh(output)`, clipped (TD3).

`meta` also names the algorithm, environment, activation, layer sizes,
observation shape (flattened before the first layer), action space, round and
which params (the global policy, or client C's own). docs/experiments.md holds
the NumPy loader; tests/test_export.py runs it and checks it acts as jfedrl does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfedrl.schema.checks import ConfigError

#: The activations the networks use (`jfedrl.algorithms.networks.ACTIVATIONS`).
ACTIVATIONS = ("tanh", "relu", "gelu", "swish")


@dataclass(frozen=True)
class ExportedPolicy:
    """What `export_policy` wrote: the file, its layers and its description."""

    path: Path
    layers: list[tuple[np.ndarray, np.ndarray]]
    meta: dict[str, Any]


def _dense_layers(tree: dict[str, Any], names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(tree[n]["kernel"]), np.asarray(tree[n]["bias"])) for n in names]


def _numbered(tree: dict[str, Any], prefix: str) -> list[str]:
    """`prefix0, prefix1, ...` of `tree`, in numeric order."""
    names = [n for n in tree if n.startswith(prefix) and n[len(prefix) :].isdigit()]
    return sorted(names, key=lambda n: int(n[len(prefix) :]))


def policy_layers(config: Any, params: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The acting network's dense layers in order, and the output rule (see the module).

    Raises:
        ConfigError: an algorithm whose acting network is not a plain MLP here.
    """
    algo = config.algo.name
    if algo in ("ppo", "a2c"):
        actor = params["params"]["actor"]
        continuous = "log_std" in params["params"]
        return _dense_layers(actor, _numbered(actor, "Dense_")), "clip" if continuous else "argmax"
    if algo == "dqn":
        tree = params["params"]
        head = "advantage_head" if "advantage_head" in tree else "q_head"
        return _dense_layers(tree, _numbered(tree, "torso_") + [head]), "argmax"
    if algo == "td3":
        mlp = params["actor"]["params"]["MLP_0"]
        return _dense_layers(mlp, _numbered(mlp, "Dense_")), "tanh"
    raise ConfigError(f"export: algo.name {algo!r} has no exportable policy (ppo, a2c, dqn, td3)")


def _space(space: Any) -> dict[str, Any]:
    if hasattr(space, "n"):
        return {"type": "discrete", "n": int(space.n)}
    low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape)
    high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape)
    return {
        "type": "box",
        "shape": list(space.shape),
        "low": low.ravel().tolist(),
        "high": high.ravel().tolist(),
    }


def export_policy(
    run_dir: str | Path,
    out: str | Path,
    *,
    round_index: int | None = None,
    client: int | None = None,
    force: bool = False,
) -> ExportedPolicy:
    """Writes a run's policy at a checkpoint to `out` (.npz; see the module).

    Args:
        run_dir: a run folder of `jfedrl train` or `jfedrl sweep`.
        out: the file to write; refused if it exists, unless `force`.
        round_index: the checkpoint (default: the newest).
        client: export this client's own params (its state after its last local
            training) instead of the global policy.
        force: overwrite `out`.

    Raises:
        ConfigError: `out` exists, the client id is out of range, or the algorithm has
            no exportable policy (before anything is restored).
        CheckpointError: no such checkpoint.
    """
    import jax

    from jfedrl.config import load_yaml
    from jfedrl.experiments import evaluate

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not force:
        raise ConfigError(f"--out: {str(out)!r} exists; use --force to overwrite it")
    if out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} is a folder; give a file name (policy.npz)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"export: {str(run_dir)!r} has no config.yaml; not a run folder")
    algo = load_yaml(run_dir / "config.yaml").algo.name
    if algo not in ("ppo", "a2c", "dqn", "td3"):
        raise ConfigError(f"export: algo.name {algo!r} has no exportable policy")
    loaded = evaluate._load(run_dir, None if client is None else [client], None, round_index)
    if client is None:
        params = loaded.state.global_params
    else:
        params = jax.tree.map(lambda x: x[client], evaluate._policy_params(loaded, "local"))
    params = jax.device_get(params)
    config, envs = loaded.config, loaded.simulator.envs
    layers, output = policy_layers(config, params)
    section = getattr(config.algo, config.algo.name)
    meta = {
        "format": "jfedrl-policy/1",
        "algorithm": config.algo.name,
        "env": config.env.name,
        "round": int(loaded.state.round),
        "params": "global" if client is None else f"client {client}",
        "activation": section.activation,
        "layer_sizes": [int(layers[0][0].shape[0])] + [int(b.shape[0]) for _, b in layers],
        "num_layers": len(layers),
        "observation_shape": list(envs.env.observation_space(envs.default_params).shape),
        "action_space": _space(envs.env.action_space(envs.default_params)),
        "output": output,
    }
    arrays = {}
    for i, (kernel, bias) in enumerate(layers):
        arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
    return ExportedPolicy(out, layers, meta)
