"""`jfedrl eval RUN_DIR`: the global policy of a saved checkpoint on chosen clients' envs.

The checkpoint is restored into the run's own config, and the policy runs
deterministically for N episodes on each chosen client's environment variant
(its params at the checkpoint's round, drift included), exactly as the run's
periodic evaluation does: with the default episodes, all clients and the
default key, the mean is the run's `eval_return` at that round.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jfedrl.config import ConfigError

EVAL_DIR = "eval"


@dataclass(frozen=True)
class EvalResult:
    """Returns of the global policy: `returns[i, e]` for client `clients[i]`, episode `e`."""

    run_dir: Path
    round: int
    clients: tuple[int, ...]
    returns: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    def table(self) -> str:
        """Markdown: one row per client (mean, std, min, max), then all of them."""
        lines = [
            f"global policy of {self.run_dir} at round {self.round}, "
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


def evaluate_run(
    run_dir: str | Path,
    *,
    clients: Sequence[int] | None = None,
    episodes: int | None = None,
    round_index: int | None = None,
    seed: int | None = None,
) -> EvalResult:
    """Evaluates the global policy of a run's checkpoint.

    Args:
        run_dir: a run folder written by `jfedrl train` or `jfedrl sweep`.
        clients: client ids whose environments to use (default: all).
        episodes: episodes per client (default: the run's `log.eval_episodes`).
        round_index: the checkpoint to load (default: the newest).
        seed: the evaluation key's seed (default: the run's own evaluation key).

    Raises:
        CheckpointError: no checkpoint, or it does not match the run's config.
        ConfigError: a client id or the episode count is out of range (named).
    """
    import jax

    from jfedrl.checkpoint import Checkpointer
    from jfedrl.federated import make_simulator
    from jfedrl.runner import (
        CHECKPOINT_DIR,
        enable_compilation_cache,
        eval_key_of,
        resume_config,
        sim_eval,
    )

    enable_compilation_cache()
    run_dir = Path(run_dir)
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
        target = simulator.abstract_state(jax.random.PRNGKey(config.seed))  # any layout
        state, _ = checkpointer.restore(target, round_index)
    finally:
        checkpointer.close()
    # The run's evaluation key, so the default reproduces its eval_return.
    eval_key = eval_key_of(config if seed is None else dataclasses.replace(config, seed=seed))
    returns = np.asarray(sim_eval(simulator, state, eval_key))[list(chosen)]
    return EvalResult(run_dir, int(state.round), chosen, returns)


def save(result: EvalResult, out: str | Path | None = None) -> Path:
    """Writes `<out>/round_<r>.{md,csv}` (default `RUN_DIR/eval/`); returns the .md path."""
    folder = Path(out) if out else result.run_dir / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"round_{result.round}"
    md = stem.with_suffix(".md")
    md.write_text(result.table())
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["client", "episode", "return"])
        for client, row in zip(result.clients, result.returns, strict=True):
            writer.writerows([client, e, float(v)] for e, v in enumerate(row))
    return md
