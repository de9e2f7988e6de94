"""`jfedrl eval RUN_DIR`: a saved checkpoint's policies on chosen clients' envs.

The checkpoint is restored into the run's own config, and the policy runs
deterministically for N episodes on each chosen client's environment variant
(its params at the checkpoint's round, drift included), exactly as the run's
periodic evaluation does: with the global policy, the default episodes, all
clients and the default key, the mean is the run's `eval_return` at that round.
`--policy local` runs each chosen client's own params instead (its state after
its last local training, which every checkpoint holds), with the same keys.
`--video` renders one episode per chosen client to a GIF or MP4 (`jfedrl.experiments.video`).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfedrl.schema.checks import ConfigError

EVAL_DIR = "eval"
POLICIES = ("global", "local")


@dataclass(frozen=True)
class EvalResult:
    """Returns of a policy: `returns[i, e]` for client `clients[i]`, episode `e`."""

    run_dir: Path
    round: int
    clients: tuple[int, ...]
    returns: np.ndarray
    policy: str = "global"

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    def table(self) -> str:
        """Markdown: one row per client (mean, std, min, max), then all of them."""
        lines = [
            f"{self.policy} policy of {self.run_dir} at round {self.round}, "
            f"{self.returns.shape[1]} episode(s) per client",
            "",
            "| client | mean return | std | min | max |",
            "|---|---|---|---|---|",
        ]
        for client, row in zip(self.clients, self.returns, strict=True):
            lines.append(
                f"| {client} | {row.mean():.2f} | {row.std():.2f} | {row.min():.2f} "
                f"| {row.max():.2f} |"
            )
        r = self.returns
        lines.append(f"| all | {r.mean():.2f} | {r.std():.2f} | {r.min():.2f} | {r.max():.2f} |")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Loaded:
    config: Any
    simulator: Any
    state: Any
    clients: tuple[int, ...]


def _load(
    run_dir: Path, clients: Sequence[int] | None, episodes: int | None, round_index: int | None
) -> _Loaded:
    """The run's config (with `episodes`), simulator, restored state and chosen clients."""
    import jax

    from jfedrl.round.simulator import make_simulator
    from jfedrl.run.checkpoint import Checkpointer
    from jfedrl.run.runner import CHECKPOINT_DIR, enable_compilation_cache, resume_config

    enable_compilation_cache()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"eval: {str(run_dir)!r} has no config.yaml; not a run folder")
    config = resume_config(run_dir)
    if episodes is not None:
        if episodes < 1:
            raise ConfigError(f"--episodes: must be >= 1, got {episodes}")
        config = dataclasses.replace(
            config, log=dataclasses.replace(config.log, eval_episodes=episodes)
        )
    num_clients = config.federation.num_clients
    chosen = tuple(range(num_clients)) if clients is None else tuple(clients)
    bad = [c for c in chosen if not 0 <= c < num_clients]
    if bad or not chosen:
        raise ConfigError(f"--clients: ids must be in 0..{num_clients - 1}, got {list(chosen)}")
    simulator = make_simulator(config)
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR)
    try:
        saved = checkpointer.rounds()
        if round_index is not None and round_index not in saved:
            raise ConfigError(
                f"--round: no checkpoint of round {round_index} in "
                f"{str(run_dir / CHECKPOINT_DIR)!r}; these exist: "
                + (", ".join(map(str, saved)) or "none")
            )
        target = simulator.abstract_state(jax.random.PRNGKey(config.seed))  # any layout
        state, _ = checkpointer.restore(target, round_index)
    finally:
        checkpointer.close()
    return _Loaded(config, simulator, state, chosen)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"--policy: must be one of {', '.join(POLICIES)}, got {policy!r}")


def _require_local_params(loaded: _Loaded) -> None:
    """Fails naming `--policy local` unless the state holds every client's own params."""
    import jax

    shapes = jax.eval_shape(jax.vmap(loaded.simulator.algorithm.get_params), loaded.state.clients)
    leaves = jax.tree.leaves(shapes)
    if not leaves or leaves[0].shape[0] != loaded.config.federation.num_clients:
        raise ConfigError("--policy local: the checkpoint holds no per-client params")


def _policy_params(loaded: _Loaded, policy: str) -> Any:
    """The params `policy` evaluates: the global ones, or every client's own (stacked)."""
    import jax

    if policy == "global":
        return loaded.state.global_params
    _require_local_params(loaded)
    return jax.vmap(loaded.simulator.algorithm.get_params)(loaded.state.clients)


def evaluate_run(
    run_dir: str | Path,
    *,
    clients: Sequence[int] | None = None,
    episodes: int | None = None,
    round_index: int | None = None,
    seed: int | None = None,
    policy: str = "global",
) -> EvalResult:
    """Evaluates a policy of a run's checkpoint.

    Args:
        run_dir: a run folder written by `jfedrl train` or `jfedrl sweep`.
        clients: client ids whose environments to use (default: all).
        episodes: episodes per client (default: the run's `log.eval_episodes`).
        round_index: the checkpoint to load (default: the newest).
        seed: the evaluation key's seed (default: the run's own evaluation key).
        policy: `global` (the global params on every chosen client) or `local`
            (each chosen client's own params, after its last local training).

    Raises:
        CheckpointError: no checkpoint, or it does not match the run's config.
        ConfigError: a client id, the episode count or the policy is out of range (named).
    """
    from jfedrl.run.runner import eval_key_of, sim_eval

    _check_policy(policy)
    run_dir = Path(run_dir)
    loaded = _load(run_dir, clients, episodes, round_index)
    config, simulator, state, chosen = loaded.config, loaded.simulator, loaded.state, loaded.clients
    # The run's evaluation key, so the default reproduces its eval_return.
    eval_key = eval_key_of(config if seed is None else dataclasses.replace(config, seed=seed))
    if policy == "local":
        _require_local_params(loaded)
    returns = sim_eval(simulator, state, eval_key, local=policy == "local")
    returns = np.asarray(returns)[list(chosen)]
    return EvalResult(run_dir, int(state.round), chosen, returns, policy)


def _rollout(env: Any, act: Any, max_steps: int, key: Any, params: Any, env_params: Any):
    """One deterministic episode: every step's env state and whether it was done before."""
    import jax
    import jax.numpy as jnp

    key_reset, key_steps = jax.random.split(key)
    obs, env_state = env.reset(key_reset, env_params)

    def step(carry, step_key):
        obs, env_state, done = carry
        action = act(params, obs)
        obs, new_state, _, terminated, truncated, _ = env.step(
            step_key, env_state, action, env_params
        )
        ended = jnp.logical_or(done, jnp.logical_or(terminated, truncated))
        return (obs, new_state, ended), (env_state, done)

    init = (obs, env_state, jnp.asarray(False))
    _, (states, done_before) = jax.lax.scan(step, init, jax.random.split(key_steps, max_steps))
    return states, done_before


def record_videos(
    run_dir: str | Path,
    *,
    clients: Sequence[int] | None = None,
    round_index: int | None = None,
    seed: int | None = None,
    policy: str = "global",
    video_format: str = "gif",
    out: str | Path | None = None,
    max_frames: int | None = None,
) -> list[Path]:
    """Renders one episode of `policy` on each chosen client's env to a video file.

    It is the first episode `evaluate_run` runs on that client (same key and policy),
    so its length is that episode's. The episode is jitted (`lax.scan` keeping the
    env states); the frames are drawn on the host afterwards, up to the step that
    ends the episode (or `max_frames`).
    Files: `<out>/video_round<r>_client<c>_<policy>.<format>` (default `RUN_DIR/eval/`).

    Raises:
        ConfigError: the environment has no renderer, the format is unknown, or mp4
            without ffmpeg on PATH (before anything is restored or compiled).
    """
    import jax

    from jfedrl.experiments import video
    from jfedrl.run.runner import eval_key_of, resume_config

    _check_policy(policy)
    video.check_format(video_format)
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        video.renderer_for(resume_config(run_dir).env.name)
    loaded = _load(run_dir, clients, None, round_index)
    config, simulator, state = loaded.config, loaded.simulator, loaded.state
    renderer = video.renderer_for(config.env.name)
    eval_key = eval_key_of(config if seed is None else dataclasses.replace(config, seed=seed))
    # The key of the evaluation's first episode on each client: the video is that episode.
    round_key = jax.random.fold_in(eval_key, state.round)
    client_keys = jax.random.split(round_key, config.federation.num_clients)
    env_params = simulator.current_env_params(state, max(int(state.round) - 1, 0))
    rollout = jax.jit(
        lambda key, params, env_params: _rollout(
            simulator.envs.env,
            simulator.algorithm.act,
            simulator.envs.max_episode_steps,
            key,
            params,
            env_params,
        )
    )
    folder = Path(out) if out else run_dir / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    policy_params = _policy_params(loaded, policy)
    paths = []
    for client in loaded.clients:
        params = policy_params
        if policy == "local":
            params = jax.tree.map(lambda x, c=client: x[c], policy_params)
        client_params = jax.tree.map(lambda x, c=client: x[c], env_params)
        states, done_before = rollout(
            jax.random.split(client_keys[client], config.log.eval_episodes)[0],
            params,
            client_params,
        )
        done_before = np.asarray(done_before)
        length = int(np.argmax(done_before)) if done_before.any() else len(done_before)
        length = length if max_frames is None else min(length, max_frames)
        frames = video.frames_of(renderer, states, jax.device_get(client_params), length)
        stem = folder / f"video_round{int(state.round)}_client{client}_{policy}"
        paths.append(video.write(frames, stem, video_format))
    return paths


def save(result: EvalResult, out: str | Path | None = None) -> Path:
    """Writes `<out>/round_<r>_<policy>.{md,csv}` (default `RUN_DIR/eval/`); returns the .md.

    The policy is in the name, so `--policy local` and `--policy global` of one
    checkpoint keep both tables.
    """
    folder = Path(out) if out else result.run_dir / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"round_{result.round}_{result.policy}"
    md = stem.with_suffix(".md")
    md.write_text(result.table())
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["client", "episode", "return"])
        for client, row in zip(result.clients, result.returns, strict=True):
            writer.writerows([client, e, float(v)] for e, v in enumerate(row))
    return md
