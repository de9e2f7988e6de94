"""What a run writes: metrics.jsonl, TensorBoard events, the learning curve, the log.

All of it happens on the host between jitted blocks.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"

log = logging.getLogger("jfedrl")


def to_jsonable(value: Any) -> Any:
    """Arrays to lists/floats, NaN/inf to None (JSON has no NaN)."""
    array = np.asarray(value)
    if array.ndim == 0:
        item = array.item()
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return item
    return [to_jsonable(v) for v in array]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of `metrics.jsonl` (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping a torn line in %s", path)
    return records


def truncate_metrics(run_dir: str | Path, last_round: int) -> list[dict[str, Any]]:
    """Keeps only records up to `last_round` (used on resume); returns them."""
    records = [r for r in read_metrics(run_dir) if r["round"] <= last_round]
    path = Path(run_dir) / METRICS_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


class MetricsWriter:
    """Appends per-round records to metrics.jsonl and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
        if self._tb is not None:
            for record in records:
                step = record["env_steps"]
                for name, value in record.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_learning_curve(run_dir: str | Path, title: str = "") -> Path | None:
    """Writes learning_curve.png: client training returns and the global eval return."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["env_steps"] for r in records], dtype=float)

    def column(name):
        return np.array([np.nan if r.get(name) is None else r[name] for r in records], dtype=float)

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    mean, low, high = (column(f"train_return_{s}") for s in ("mean", "min", "max"))
    ax.fill_between(steps, low, high, alpha=0.2, label="clients (min-max)")
    ax.plot(steps, mean, label="clients, training return (mean)")
    evals = column("eval_return")
    has_eval = ~np.isnan(evals)
    if has_eval.any():
        ax.plot(steps[has_eval], evals[has_eval], "o-", label="global policy, eval return")
    ax.set_xlabel("environment steps (all clients)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(run_dir) / CURVE_FILE
    fig.savefig(path)
    plt.close(fig)
    return path


def setup_logging(run_dir: Path, quiet: bool = False) -> None:
    """Logs to run_dir/train.log and (unless quiet) to stderr."""
    logger = logging.getLogger("jfedrl")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    file_handler = logging.FileHandler(run_dir / "train.log")
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    if not quiet:
        stream = logging.StreamHandler()
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    logger.propagate = False
