"""`jfedrl compare`: multi-seed statistics over run folders, as a table and plots.

Runs are grouped by setup (their config with the seed and the logging fields
left out) and each group's final eval returns are summarised by the
interquartile mean (IQM), the mean and the optimality gap, each with a
stratified-bootstrap 95 % confidence interval; each pair of setups by the
probability of improvement P(A > B) with its CI; and performance profiles are
plotted. The definitions are those of `rliable` (Agarwal et al.
2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"):
IQM is `scipy.stats.trim_mean(scores, 0.25)` over every run of every task, and
the bootstrap resamples runs with replacement within each task and takes the
percentile interval. `rliable` itself is not a dependency: its 1.2.0 release
imports `arch`, whose current release fails to import with the pandas 3 in
this environment, so the estimators it would provide are computed here.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfedrl.config import FACTS, Config, load_yaml
from jfedrl.run.outputs import new_figure, read_metrics
from jfedrl.schema.convert import to_dict
from jfedrl.schema.fields import NONE

log = logging.getLogger("jfedrl")

CONFIG_FILE = "config.yaml"


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


def _resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap resamples of `scores [runs, tasks]`, kept as `[reps, runs, tasks]`."""
    runs, tasks = scores.shape
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(scores[None], index, axis=1)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float


def _percentile_interval(value: float, resampled: np.ndarray, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled, [100 * alpha, 100 * (1 - alpha)])
    return Interval(float(value), float(low), float(high))


def optimality_gap(scores: np.ndarray, gamma: float) -> float:
    """The optimality gap (rliable's): the mean of `max(gamma - score, 0)` over every run and task.

    It is how far the scores fall short of the target `gamma`, where scores
    above `gamma` count as reaching it (no credit for overshooting); lower is
    better. `gamma` is 1.0 for normalised scores; `jfedrl compare --gamma`.
    """
    return float(np.maximum(gamma - np.asarray(scores, float), 0.0).mean())


def _improvement_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) of each resample: `x [reps, runs_x, tasks]`, `y [reps, runs_y, tasks]`."""
    a, b = x[:, :, None, :], y[:, None, :, :]
    per_task = ((a > b) + 0.5 * (a == b)).mean(axis=(1, 2))  # [reps, tasks]
    return per_task.mean(axis=1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) of `x [runs_x, tasks]` over `y [runs_y, tasks]` (rliable's).

    Per task, the Mann-Whitney U statistic normalised by `runs_x * runs_y`: the
    chance that a random run of X scores above a random run of Y, ties counting
    1/2; then the mean over tasks. 0.5 means neither is better.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(_improvement_rows(x[None], y[None])[0])


def improvement_interval(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """`probability_of_improvement(x, y)` with its stratified-bootstrap percentile CI.

    X's and Y's runs are resampled independently, each within each task
    (rliable's `StratifiedIndependentBootstrap`).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    resampled = _improvement_rows(_resample(x, reps, rng), _resample(y, reps, rng))
    return _percentile_interval(probability_of_improvement(x, y), resampled, confidence)


def performance_profile(
    scores: np.ndarray,
    taus: np.ndarray,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A performance profile: the fraction of runs scoring above each `tau`.

    rliable's run-score distribution: for `scores [runs, tasks]`, the fraction
    of runs with a score > tau per task, averaged over tasks;
    with stratified-bootstrap percentile bands.

    Returns:
        `(profile, low, high)`, each `[len(taus)]`.
    """
    scores, taus = np.asarray(scores, float), np.asarray(taus, float)

    def profile(samples: np.ndarray) -> np.ndarray:  # [reps, runs, tasks] -> [reps, taus]
        return (samples[..., None] > taus).mean(axis=1).mean(axis=1)

    resampled = profile(_resample(scores, reps, np.random.default_rng(seed)))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return profile(scores[None])[0], low, high


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
    return _percentile_interval(value, resampled, confidence)


def gap_interval(
    scores: np.ndarray, gamma: float, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """`optimality_gap(scores, gamma)` with its stratified-bootstrap percentile CI."""
    scores = np.asarray(scores, float)
    resampled = np.maximum(gamma - bootstrap_samples(scores, reps, seed), 0.0).mean(axis=1)
    return _percentile_interval(optimality_gap(scores, gamma), resampled, confidence)


def eval_curve(
    records: list[dict[str, Any]], metric: str = "eval_return"
) -> tuple[np.ndarray, np.ndarray]:
    """`(env_steps, metric)` at the rounds that were evaluated (that hold `metric`)."""
    points = [(r["env_steps"], r[metric]) for r in records if r.get(metric) is not None]
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


def strategy_fields_read(config: Config) -> set[str]:
    """The `strategy.*` fields that `config`'s strategy reads (its name aside).

    A rule reads its own section `strategy.<name>` and the fields every rule
    reads (`strategy.clip_update_norm`); another rule's section never reaches
    its maths.
    """
    own = f"strategy.{config.strategy.name}."
    return {
        path
        for path in FACTS
        if path.startswith(own) or (path.count(".") == 1 and path.startswith("strategy."))
    } - {"strategy.name"}


def _read_by_setup(config: Config) -> Callable[[str], bool]:
    """Whether the setup of `config` reads a (flattened) config field.

    The algorithm reads only its own section `algo.<algo.name>`, and under
    `fedprox` not that section's `prox_mu` (`algorithms.with_fedprox` overwrites
    it); the strategy reads what `strategy_fields_read` finds; every other
    field (env, federation, ...) is read by every setup.
    """
    strategy_reads = strategy_fields_read(config)
    overwritten = (
        {f"algo.{config.algo.name}.prox_mu"} if config.strategy.name == "fedprox" else set()
    )

    def reads(field: str) -> bool:
        parts = field.split(".")
        if parts[0] == "algo" and len(parts) > 2:
            return parts[1] == config.algo.name and field not in overwritten
        if parts[0] == "strategy" and field != "strategy.name":
            return field in strategy_reads
        return True

    return reads


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

    A setup's label names only the differing fields its algorithm, strategy and
    environment read (`_read_by_setup`): FedAvg is not labelled by FedProx's
    `prox_mu`. Where that leaves two setups with one label, those two are
    labelled by every differing field. Fields declared `setup=False` (the seed,
    logging, offload, the process layout) never make a setup.
    """

    def setup_key(run: RunInfo) -> tuple:
        return tuple(sorted((k, v) for k, v in run.flat.items() if FACTS.get(k, NONE).setup))

    groups: dict[tuple, list[RunInfo]] = {}
    for run in runs:
        groups.setdefault(setup_key(run), []).append(run)
    varying = sorted(
        {k for key in groups for k, v in key if any(dict(other).get(k) != v for other in groups)}
    )
    short, full = [], []
    for key, members in groups.items():
        values = dict(key)
        reads = _read_by_setup(members[0].config)
        short.append(", ".join(f"{k}={values[k]}" for k in varying if reads(k)))
        full.append(", ".join(f"{k}={values[k]}" for k in varying))
    labelled = {}
    for members, label, fallback in zip(groups.values(), short, full, strict=True):
        label = label if short.count(label) == 1 else fallback
        labelled[label or f"{members[0].config.env.name} {members[0].config.strategy.name}"] = (
            members
        )
    return labelled


#: Fewer runs than this per setup draw a warning: the IQM of 4 runs is the mean of
#: the middle 2 (of 3 or fewer, the mean), and bootstrap CIs of few runs are often degenerate.
MIN_RUNS = 5


@dataclass(frozen=True)
class SetupStats:
    """One setup's row of the comparison table."""

    setup: str
    runs: int
    env: str
    iqm: Interval
    mean: Interval
    optimality_gap: Interval | None = None
    scores: np.ndarray | None = None
    """The final scores `[runs, tasks]` (one column per environment, in `env`'s order)."""


@dataclass(frozen=True)
class PairStats:
    """P(A > B) of two setups with its CI, and the verdict the table prints."""

    a: str
    b: str
    probability: Interval

    def verdict(self) -> str:
        """`A > B with P = ...` when the CI excludes 0.5, else `no clear difference`."""
        p = self.probability
        if p.low > 0.5:
            return f"{self.a} > {self.b} with P = {p.value:.2f} [{p.low:.2f}, {p.high:.2f}]"
        if p.high < 0.5:
            return (
                f"{self.b} > {self.a} with P = {1 - p.value:.2f} "
                f"[{1 - p.high:.2f}, {1 - p.low:.2f}]"
            )
        return (
            f"no clear difference: P({self.a} > {self.b}) = {p.value:.2f} "
            f"[{p.low:.2f}, {p.high:.2f}] contains 0.5"
        )


def setup_scores(
    groups: dict[str, list[RunInfo]], metric: str = "eval_return"
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each setup's environments and final `metric` per run, `[runs, envs]`.

    The environments are the strata (rliable's tasks); each must hold the same
    number of runs of the setup.

    Raises:
        ValueError: a run has no `metric`, or a setup has unequal runs per environment.
    """
    result = {}
    for label, members in groups.items():
        finals = []
        for run in members:
            _, values = eval_curve(run.records, metric)
            finals.append(float(values[-1]) if len(values) else None)
        if any(value is None for value in finals):
            missing = [str(r.run_dir) for r, v in zip(members, finals, strict=True) if v is None]
            raise ValueError(f"--metric: no {metric!r} in the records of {missing}")
        envs = sorted({run.config.env.name for run in members})
        by_env = [
            [f for r, f in zip(members, finals, strict=True) if r.config.env.name == e]
            for e in envs
        ]
        if len({len(column) for column in by_env}) > 1:
            raise ValueError(f"compare: setup {label!r} has unequal runs per environment")
        result[label] = (envs, np.asarray(by_env, float).T)
    return result


def default_gamma(scores: dict[str, tuple[list[str], np.ndarray]]) -> float:
    """The optimality gap's default target on raw returns: the best final score of any run."""
    return float(max(values.max() for _, values in scores.values()))


def setup_stats(
    groups: dict[str, list[RunInfo]],
    reps: int = 2000,
    seed: int = 0,
    gamma: float | None = None,
    metric: str = "eval_return",
) -> list[SetupStats]:
    """IQM, mean and optimality gap (to `gamma`, default `default_gamma`) of the final
    `metric`, per setup, stratified over environments.
    """
    scores = setup_scores(groups, metric)
    gamma = default_gamma(scores) if gamma is None else gamma
    rows = []
    for label, (envs, values) in scores.items():
        rows.append(
            SetupStats(
                label,
                len(groups[label]),
                "+".join(envs),
                estimate(values, "iqm", reps, seed),
                estimate(values, "mean", reps, seed),
                gap_interval(values, gamma, reps, seed),
                values,
            )
        )
    return rows


def pair_stats(rows: list[SetupStats], reps: int = 2000, seed: int = 0) -> list[PairStats]:
    """P(A > B) of every pair of setups run on the same environments, in table order."""
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if a.env == b.env and a.scores is not None and b.scores is not None:
                interval = improvement_interval(a.scores, b.scores, reps, seed)
                pairs.append(PairStats(a.setup, b.setup, interval))
    return pairs


def few_runs_warnings(rows: list[SetupStats]) -> list[str]:
    """One line per setup with fewer than `MIN_RUNS` runs per environment."""
    lines = []
    for row in rows:
        runs = row.runs if row.scores is None else row.scores.shape[0]
        if runs < MIN_RUNS:
            lines.append(
                f"setup {row.setup!r} has {runs} run(s) per environment (< {MIN_RUNS}): its IQM "
                "is (nearly) its mean and its bootstrap CIs can be degenerate; add seeds"
            )
    return lines


def _cell(interval: Interval) -> str:
    return f"{interval.value:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def markdown_table(
    rows: list[SetupStats],
    pairs: Sequence[PairStats] = (),
    metric: str = "eval_return",
    gamma: float | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The comparison: a row per setup, then P(A > B) per pair of setups, then notes."""
    gap = any(r.optimality_gap is not None for r in rows)
    head = f"| setup | runs | env | IQM final {metric} [95% CI] | mean [95% CI] |"
    if gap:
        target = "" if gamma is None else f", gamma = {gamma:g}"
        head += f" optimality gap{target} [95% CI] |"
    lines = [head, "|---" * (6 if gap else 5) + "|"]
    for r in rows:
        line = f"| {r.setup} | {r.runs} | {r.env} | {_cell(r.iqm)} | {_cell(r.mean)} |"
        if gap:
            line += f" {_cell(r.optimality_gap) if r.optimality_gap else ''} |"
        lines.append(line)
    if pairs:
        lines += ["", "| A | B | P(A > B) [95% CI] | verdict |", "|---|---|---|---|"]
        lines += [f"| {p.a} | {p.b} | {_cell(p.probability)} | {p.verdict()} |" for p in pairs]
    if notes:
        lines += [""] + [f"warning: {note}" for note in notes]
    return "\n".join(lines) + "\n"


#: The evaluation protocols' metrics (`jfedrl.round.evaluation`), in table order.
PROTOCOL_METRICS = (
    "eval/global/mean",
    "eval/global/worst",
    "eval/global/p10",
    "eval/personal/mean",
    "eval/personal/worst",
    "eval/personal/p10",
    "eval/gap",
    "eval/holdout/mean",
    "eval/holdout/worst",
    "eval/holdout/p10",
    "eval/holdout/personal/mean",
)


def protocol_stats(
    groups: dict[str, list[RunInfo]], reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, Interval]]:
    """Per setup, the IQM [95 % CI] of each protocol metric's final value over its runs.

    A metric appears for a setup only where every one of its runs logged it (the
    personalized pass is optional, held-out clients may be none); stratified over
    environments as the main table is.
    """
    out: dict[str, dict[str, Interval]] = {}
    for label, members in groups.items():
        cells: dict[str, Interval] = {}
        for metric in PROTOCOL_METRICS:
            if all(len(eval_curve(run.records, metric)[1]) for run in members):
                _, values = setup_scores({label: members}, metric)[label]
                cells[metric] = estimate(values, "iqm", reps, seed)
        if cells:
            out[label] = cells
    return out


def protocol_table(stats: dict[str, dict[str, Interval]]) -> str:
    """A markdown table: a row per setup, a column per protocol metric any setup logged."""
    metrics = [m for m in PROTOCOL_METRICS if any(m in cells for cells in stats.values())]
    if not metrics:
        return ""
    lines = [
        "| setup | " + " | ".join(f"{m} IQM [95% CI]" for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for label, cells in stats.items():
        row = [_cell(cells[m]) if m in cells else "" for m in metrics]
        lines.append(f"| {label or 'runs'} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[SetupStats], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["setup", "runs", "env", "iqm", "iqm_low", "iqm_high", "mean", "mean_low", "mean_high"]
            + ["optimality_gap", "optimality_gap_low", "optimality_gap_high"]
        )
        for r in rows:
            gap = r.optimality_gap
            writer.writerow(
                [r.setup, r.runs, r.env, r.iqm.value, r.iqm.low, r.iqm.high]
                + [r.mean.value, r.mean.low, r.mean.high]
                + ([gap.value, gap.low, gap.high] if gap else ["", "", ""])
            )


def write_pairs_csv(pairs: Sequence[PairStats], path: Path) -> None:
    """comparison_pairs.csv: P(A > B) and its CI per pair of setups."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "p_a_gt_b", "p_low", "p_high", "verdict"])
        for p in pairs:
            i = p.probability
            writer.writerow([p.a, p.b, i.value, i.low, i.high, p.verdict()])


def plot(
    groups: dict[str, list[RunInfo]],
    rows: list[SetupStats],
    out: Path,
    reps: int,
    seed: int,
    metric: str = "eval_return",
) -> list[Path]:
    """Writes curves.png (IQM `metric` vs env steps, 95 % CI band), final_scores.png and
    performance_profiles.png (fraction of runs above each score, 95 % CI band).
    """
    fig, ax = new_figure(figsize=(7, 4.2), dpi=110)
    for label, members in groups.items():
        curves = [eval_curve(run.records, metric) for run in members]
        length = min(len(steps) for steps, _ in curves)
        if length == 0:
            continue
        steps = curves[0][0][:length]
        returns = np.stack([r[:length] for _, r in curves])  # [runs, points]
        points = [estimate(returns[:, [i]], "iqm", reps, seed) for i in range(length)]
        ax.plot(steps, [p.value for p in points], label=label or "runs")
        ax.fill_between(steps, [p.low for p in points], [p.high for p in points], alpha=0.2)
    ax.set_xlabel("environment steps (all clients)")
    ax.set_ylabel(f"global policy {metric} (IQM, 95% CI)")
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
        ax.set_title(f"final {metric}: {name.upper() if name == 'iqm' else name}", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(rows)), [r.setup or "runs" for r in rows], fontsize=7)
    fig.tight_layout()
    scores_path = out / "final_scores.png"
    fig.savefig(scores_path)
    paths = [curves_path, scores_path]

    scored = [r for r in rows if r.scores is not None]
    if scored:
        everything = np.concatenate([r.scores.ravel() for r in scored])
        taus = np.linspace(everything.min(), everything.max(), 101)
        fig, ax = new_figure(figsize=(7, 4.2), dpi=110)
        for row in scored:
            profile, low, high = performance_profile(row.scores, taus, reps, seed)
            ax.plot(taus, profile, label=row.setup or "runs")
            ax.fill_between(taus, low, high, alpha=0.2)
        ax.set_xlabel(f"final {metric} threshold tau")
        ax.set_ylabel(f"fraction of runs with {metric} > tau (95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
        fig.tight_layout()
        profiles_path = out / "performance_profiles.png"
        fig.savefig(profiles_path)
        paths.append(profiles_path)
    return paths


def compare(
    paths: Sequence[str | Path],
    out: str | Path,
    reps: int = 2000,
    seed: int = 0,
    plots: bool = True,
    gamma: float | None = None,
    metric: str = "eval_return",
) -> list[SetupStats]:
    """Finds the runs under `paths`, writes comparison.{md,csv}, comparison_pairs.csv (and
    plots) to `out`.

    Args:
        paths: run folders, or folders holding run folders at any depth.
        out: the folder to write to (created).
        reps: bootstrap resamples of every CI.
        seed: the bootstrap's seed.
        plots: also write curves.png, final_scores.png, performance_profiles.png.
        gamma: the optimality gap's target (default `default_gamma`: the best final
            score of any run compared).
        metric: the per-round record compared (`eval_return`, `eval_return_p10`, ...).

    Returns:
        One row per setup, in the order the setups were first found.
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"--reps: must be a whole number >= 1 (bootstrap resamples), got {reps!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a file, not a folder; choose another --out")
    groups = group_by_setup(find_runs(paths))
    scores = setup_scores(groups, metric)
    gamma = default_gamma(scores) if gamma is None else float(gamma)
    rows = setup_stats(groups, reps, seed, gamma, metric)
    pairs = pair_stats(rows, reps, seed)
    notes = few_runs_warnings(rows)
    for note in notes:
        log.warning("%s", note)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, pairs, metric, gamma, notes)
    protocols = protocol_table(protocol_stats(groups, reps, seed))
    if protocols:  # global / personalized / held-out clients (jfedrl.round.evaluation)
        table += "\nFinal values of the evaluation protocols (docs/personalization.md):\n\n"
        table += protocols
    (out / "comparison.md").write_text(table)
    write_csv(rows, out / "comparison.csv")
    write_pairs_csv(pairs, out / "comparison_pairs.csv")
    if plots:
        plot(groups, rows, out, reps, seed, metric)
    return rows
