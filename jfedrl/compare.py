"""`jfedrl compare`: multi-seed statistics over run folders, as a table and plots.

Runs are grouped by setup (their config with the seed and the logging fields
left out) and each group's final eval returns are summarised by the
interquartile mean (IQM) and the mean, each with a stratified-bootstrap 95 %
confidence interval. The definitions are those of `rliable` (Agarwal et al.
2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"):
IQM is `scipy.stats.trim_mean(scores, 0.25)` over every run of every task, and
the bootstrap resamples runs with replacement within each task and takes the
percentile interval. `rliable` itself is not a dependency: its 1.2.0 release
imports `arch`, whose current release fails to import with the pandas 3 in
this environment, so the two estimators it would provide are computed here.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfedrl.config import Config, load_yaml
from jfedrl.outputs import new_figure, read_metrics
from jfedrl.schema import to_dict

log = logging.getLogger("jfedrl")

CONFIG_FILE = "config.yaml"
#: Config paths that do not define a setup: runs differing only here are seeds of one setup.
NOT_SETUP = ("seed", "log.", "offload.")


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over every entry: the mean of the middle 50 % (rliable's IQM).

    Cuts `int(0.25 * n)` entries from each end of the sorted scores, as
    `scipy.stats.trim_mean(scores, 0.25, axis=None)` does.
    """
    return float(_iqm_rows(np.asarray(scores, float).reshape(1, -1))[0])


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    """IQM of each row of `[reps, n]`."""
    n = samples.shape[1]
    cut = int(0.25 * n)
    return np.sort(samples, axis=1)[:, cut : n - cut].mean(axis=1)


def _mean_rows(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1)


#: The aggregate statistics of the table: name -> function of `[reps, runs * tasks]`.
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"iqm": _iqm_rows, "mean": _mean_rows}


def bootstrap_samples(scores: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """Stratified bootstrap resamples of `scores [runs, tasks]`: `[reps, runs * tasks]`.

    Each task's runs are drawn with replacement from that task's runs only
    (the strata), so every resample keeps the number of runs per task.
    """
    scores = np.asarray(scores, float)
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(scores[None], index, axis=1).reshape(reps, runs * tasks)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float


def estimate(
    scores: np.ndarray, statistic: str, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """`statistic` (a key of `STATISTICS`) of `scores [runs, tasks]` with its percentile CI."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic: unknown {statistic!r}; one of {sorted(STATISTICS)}")
    scores = np.asarray(scores, float)
    function = STATISTICS[statistic]
    value = float(function(scores.reshape(1, -1))[0])
    resampled = function(bootstrap_samples(scores, reps, seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled, [100 * alpha, 100 * (1 - alpha)])
    return Interval(value, float(low), float(high))


def eval_curve(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """`(env_steps, eval_return)` at the rounds that were evaluated."""
    points = [
        (r["env_steps"], r["eval_return"]) for r in records if r.get("eval_return") is not None
    ]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, returns = zip(*points, strict=True)
    return np.asarray(steps, float), np.asarray(returns, float)


def run_summary(records: list[dict[str, Any]], threshold: float | None) -> dict[str, Any]:
    """One run's scores: final and best eval return, steps and seconds to `threshold`, AUC.

    AUC is the trapezoid area under eval return vs env steps divided by the
    steps covered (a step-weighted mean return, comparable across budgets).
    Steps and seconds to the threshold are None when it is not reached.
    """
    steps, returns = eval_curve(records)
    summary: dict[str, Any] = {
        "final_eval_return": float(returns[-1]) if len(returns) else None,
        "best_eval_return": float(returns.max()) if len(returns) else None,
        "env_steps": records[-1]["env_steps"] if records else 0,
        "wall_seconds": records[-1]["wall_seconds"] if records else 0.0,
        "steps_to_threshold": None,
        "seconds_to_threshold": None,
        "auc": None,
    }
    if len(returns) > 1:
        summary["auc"] = float(np.trapezoid(returns, steps) / (steps[-1] - steps[0]))
    elif len(returns) == 1:
        summary["auc"] = float(returns[0])
    if threshold is not None:
        evaluated = [r for r in records if r.get("eval_return") is not None]
        reached = [r for r in evaluated if r["eval_return"] >= threshold]
        if reached:
            summary["steps_to_threshold"] = reached[0]["env_steps"]
            summary["seconds_to_threshold"] = reached[0]["wall_seconds"]
    return summary


@dataclass(frozen=True)
class RunInfo:
    """One run folder: its config (flattened), its records."""

    run_dir: Path
    config: Config
    flat: dict[str, Any]
    records: list[dict[str, Any]]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value
    return flat


def find_runs(paths: Sequence[str | Path]) -> list[RunInfo]:
    """Every run folder (one holding config.yaml and metrics.jsonl) at or under `paths`.

    Raises:
        ValueError: a path does not exist or holds no run folder.
    """
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ValueError(f"compare: {str(path)!r} does not exist")
        candidates = sorted(p.parent for p in path.rglob(CONFIG_FILE))
        found = [p for p in candidates if (p / "metrics.jsonl").is_file()]
        if not found:
            raise ValueError(
                f"compare: {str(path)!r} holds no run folder (config.yaml + metrics.jsonl)"
            )
        for run_dir in candidates:
            run = _read_run(run_dir)
            if run is not None:
                runs.append(run)
    if not runs:
        shown = ", ".join(repr(str(p)) for p in paths)
        raise ValueError(f"compare: no run under {shown} has eval returns to compare")
    return runs


def _read_run(run_dir: Path) -> RunInfo | None:
    """One run folder, or None with a warning naming why it is left out of the comparison.

    An unreadable folder (a damaged config.yaml, no permission) or one without
    eval returns (killed before its first block, metrics.jsonl missing) is
    skipped so the other runs are still compared.
    """
    if not (run_dir / "metrics.jsonl").is_file():
        log.warning("compare: skipping %r: it has no metrics.jsonl", str(run_dir))
        return None
    try:
        config = load_yaml(run_dir / CONFIG_FILE)
        records = read_metrics(run_dir)
    except (OSError, ValueError) as error:  # ConfigError, UnicodeDecodeError, ...
        reason = getattr(error, "strerror", None) or str(error)
        log.warning("compare: skipping %r: %s", str(run_dir), reason)
        return None
    if not any(r.get("eval_return") is not None for r in records):
        log.warning("compare: skipping %r: metrics.jsonl has no eval_return", str(run_dir))
        return None
    return RunInfo(run_dir, config, _flatten(to_dict(config)), records)


def group_by_setup(runs: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """Runs grouped by setup, labelled by the config fields that differ between setups.

    Fields in `NOT_SETUP` (the seed, logging, offload) never make a setup.
    """

    def setup_key(run: RunInfo) -> tuple:
        return tuple(sorted((k, v) for k, v in run.flat.items() if not k.startswith(NOT_SETUP)))

    groups: dict[tuple, list[RunInfo]] = {}
    for run in runs:
        groups.setdefault(setup_key(run), []).append(run)
    varying = sorted(
        {k for key in groups for k, v in key if any(dict(other).get(k) != v for other in groups)}
    )
    labelled = {}
    for key, members in groups.items():
        values = dict(key)
        label = ", ".join(f"{k}={values[k]}" for k in varying)
        labelled[label or f"{members[0].config.env.name} {members[0].config.strategy.name}"] = (
            members
        )
    return labelled


@dataclass(frozen=True)
class SetupStats:
    """One setup's row of the comparison table."""

    setup: str
    runs: int
    env: str
    iqm: Interval
    mean: Interval


def setup_stats(
    groups: dict[str, list[RunInfo]], reps: int = 2000, seed: int = 0
) -> list[SetupStats]:
    """IQM and mean of the final eval returns, per setup, stratified over environments."""
    rows = []
    for label, members in groups.items():
        finals = [run_summary(run.records, None)["final_eval_return"] for run in members]
        if any(value is None for value in finals):
            missing = [str(r.run_dir) for r, v in zip(members, finals, strict=True) if v is None]
            raise ValueError(f"compare: no eval_return in {missing}")
        envs = sorted({run.config.env.name for run in members})
        # One column per environment (the strata); every env holds the same number of runs.
        by_env = [
            [f for r, f in zip(members, finals, strict=True) if r.config.env.name == e]
            for e in envs
        ]
        if len({len(column) for column in by_env}) > 1:
            raise ValueError(f"compare: setup {label!r} has unequal runs per environment")
        scores = np.asarray(by_env, float).T
        rows.append(
            SetupStats(
                label,
                len(members),
                "+".join(envs),
                estimate(scores, "iqm", reps, seed),
                estimate(scores, "mean", reps, seed),
            )
        )
    return rows


def _cell(interval: Interval) -> str:
    return f"{interval.value:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def markdown_table(rows: list[SetupStats]) -> str:
    lines = [
        "| setup | runs | env | IQM final eval return [95% CI] | mean [95% CI] |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.setup} | {r.runs} | {r.env} | {_cell(r.iqm)} | {_cell(r.mean)} |" for r in rows
    ]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[SetupStats], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["setup", "runs", "env", "iqm", "iqm_low", "iqm_high", "mean", "mean_low", "mean_high"]
        )
        for r in rows:
            writer.writerow(
                [r.setup, r.runs, r.env, r.iqm.value, r.iqm.low, r.iqm.high]
                + [r.mean.value, r.mean.low, r.mean.high]
            )


def plot(
    groups: dict[str, list[RunInfo]], rows: list[SetupStats], out: Path, reps: int, seed: int
) -> list[Path]:
    """Writes curves.png (IQM eval return vs env steps, 95 % CI band) and final_scores.png."""
    fig, ax = new_figure(figsize=(7, 4.2), dpi=110)
    for label, members in groups.items():
        curves = [eval_curve(run.records) for run in members]
        length = min(len(steps) for steps, _ in curves)
        if length == 0:
            continue
        steps = curves[0][0][:length]
        returns = np.stack([r[:length] for _, r in curves])  # [runs, points]
        points = [estimate(returns[:, [i]], "iqm", reps, seed) for i in range(length)]
        ax.plot(steps, [p.value for p in points], label=label or "runs")
        ax.fill_between(steps, [p.low for p in points], [p.high for p in points], alpha=0.2)
    ax.set_xlabel("environment steps (all clients)")
    ax.set_ylabel("global policy eval return (IQM, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    curves_path = out / "curves.png"
    fig.savefig(curves_path)

    fig, axes = new_figure(figsize=(9, 0.6 + 0.45 * len(rows)), ncols=2, sharey=True)
    for ax, name in zip(axes, ("iqm", "mean"), strict=True):
        for i, row in enumerate(rows):
            interval = getattr(row, name)
            ax.plot([interval.low, interval.high], [i, i], lw=6, alpha=0.5)
            ax.plot([interval.value], [i], "k|", ms=12)
        ax.set_title(f"final eval return: {name.upper() if name == 'iqm' else name}", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(rows)), [r.setup or "runs" for r in rows], fontsize=7)
    fig.tight_layout()
    scores_path = out / "final_scores.png"
    fig.savefig(scores_path)
    return [curves_path, scores_path]


def compare(
    paths: Sequence[str | Path],
    out: str | Path,
    reps: int = 2000,
    seed: int = 0,
    plots: bool = True,
) -> list[SetupStats]:
    """Finds the runs under `paths`, writes comparison.{md,csv} (and plots) to `out`.

    Returns:
        One row per setup, in the order the setups were first found.
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"--reps: must be a whole number >= 1 (bootstrap resamples), got {reps!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a file, not a folder; choose another --out")
    groups = group_by_setup(find_runs(paths))
    rows = setup_stats(groups, reps, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(markdown_table(rows))
    write_csv(rows, out / "comparison.csv")
    if plots:
        plot(groups, rows, out, reps, seed)
    return rows
