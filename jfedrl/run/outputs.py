"""What a run writes: metrics.jsonl, TensorBoard events, the learning curve, the log.

All of it happens on the host between jitted blocks. The run folder is locked
for as long as a process trains in it (`RunLock`), so two runs never share one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jfedrl.schema.checks import ConfigError

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"
LOCK_FILE = ".lock"
BYZANTINE_FILE = "byzantine.json"
"""The Byzantine set of a run under attack (`jfedrl.attacks.byzantine.record`)."""
#: A log record with this attribute set (`extra=`) goes to train.log only, not to stderr.
FILE_ONLY = "jfedrl_file_only"

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
    """Keeps only records up to `last_round` (used on resume); returns them.

    The kept records go to a new file that then replaces metrics.jsonl, so a
    crash at any moment leaves either the old or the new history, whole.
    """
    path = Path(run_dir) / METRICS_FILE
    records, garbage = _parse_metrics(path)
    records = [r for r in records if r["round"] <= last_round]
    try:
        if garbage:  # kept aside, never deleted: appended, so an earlier file stays whole
            aside = path.with_name(path.name + CORRUPT_SUFFIX)
            with aside.open("a") as f:
                f.write("".join(line + "\n" for line in garbage))
            log.warning("%s: %d unreadable line(s) moved to %s", path, len(garbage), aside.name)
        replace_file(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    except OSError as error:
        raise RunDirError(f"log.run_dir: cannot rewrite {str(path)!r}: {error.strerror}") from None
    return records


#: Where `truncate_metrics` keeps the lines of metrics.jsonl it cannot read.
CORRUPT_SUFFIX = ".corrupt"


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of `path` (a per-round record: a mapping with an int `round`), and
    every other non-empty line as it is (a torn line, binary garbage).
    """
    if not path.exists():
        return [], []
    records, garbage = [], []
    for line in path.read_bytes().decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            records.append(record)
        elif line.strip():
            garbage.append(line)
    return records, garbage


def replace_file(path: Path, data: bytes) -> None:
    """Writes `data` to a new file beside `path`, syncs it, and renames it over `path`."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _summary_writer_class() -> type:
    """The `SummaryWriter` of tensorboardX, imported without PyTorch.

    tensorboardX imports torch when it is installed, only to accept torch tensors
    (seconds of start-up; jfedrl writes floats). Unless torch is already loaded, the
    import runs with torch marked absent, and the mark is removed after it.
    """
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends per-round records to metrics.jsonl and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        self._tb = None
        if tensorboard:
            self._tb = _summary_writer_class()(str(run_dir / "tensorboard"))

    def write(self, records: list[dict[str, Any]]) -> None:
        try:
            with self.path.open("a") as f:
                for record in records:
                    f.write(json.dumps(record) + "\n")
                f.flush()
        except OSError as error:  # a torn last line is skipped by read_metrics
            raise RunDirError(
                f"log.run_dir: cannot write {str(self.path)!r}: {error.strerror}"
            ) from None
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


def drift_signal(
    run_dir: str | Path, names: tuple[str, ...], records: list[dict[str, Any]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each drifting param's mean change over clients, against env steps.

    From env_params.json (every client's base) and env_params.jsonl (the params in
    force at each block's end): `(value - base) / |base|` (`value - base` where the
    base is 0), averaged over clients, starting at 0 at step 0. Empty when the run
    logged no drift.
    """
    run_dir = Path(run_dir)
    base_file, drift_file = run_dir / "env_params.json", run_dir / "env_params.jsonl"
    if not names or not records or not base_file.is_file() or not drift_file.is_file():
        return {}
    base = json.loads(base_file.read_text())
    by_round: dict[int, dict[str, Any]] = {}
    for line in drift_file.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        by_round[int(entry["round"])] = entry["params"]  # a resumed block: its last write
    last = records[-1]["round"]
    rounds = sorted(r for r in by_round if r <= last)
    per_round = records[-1]["env_steps"] / max(last, 1)
    signal = {}
    for name in names:
        if name not in base or not rounds:
            continue
        start = np.asarray(base[name], dtype=float)
        scale = np.where(start != 0, np.abs(start), 1.0)
        values = [np.asarray(by_round[r][name], dtype=float) for r in rounds]
        change = [float(np.mean((v - start) / scale)) for v in values]
        steps = np.array([0.0] + [r * per_round for r in rounds])
        signal[name] = (steps, np.array([0.0, *change]))
    return signal


#: The evaluation protocols' curves of learning_curve.png (`jfedrl.round.evaluation`).
PROTOCOL_CURVES = (
    ("eval/personal/mean", "personalized policies, eval return"),
    ("eval/holdout/mean", "held-out clients, global policy"),
    ("eval/holdout/personal/mean", "held-out clients, personalized"),
)


def plot_learning_curve(
    run_dir: str | Path, title: str = "", drift_params: tuple[str, ...] = ()
) -> Path | None:
    """Writes learning_curve.png: client training returns and the global eval return.

    With `drift_params` (a drifting run), a small second axis under the curve shows
    each param's drift (`drift_signal`) on the same env-step axis. The image is
    written beside and renamed into place, so a failure (a full disk) leaves the
    previous curve or none, never a truncated file.
    """
    records = read_metrics(run_dir)
    if not records:
        return None
    steps = np.array([r["env_steps"] for r in records], dtype=float)

    def column(name):
        return np.array([np.nan if r.get(name) is None else r[name] for r in records], dtype=float)

    drift = drift_signal(run_dir, drift_params, records)
    if drift:
        fig, (ax, drift_ax) = new_figure(
            figsize=(7, 5.4), dpi=110, nrows=2, sharex=True, height_ratios=(3, 1)
        )
    else:
        fig, ax = new_figure(figsize=(7, 4.2), dpi=110)
    mean, low, high = (column(f"train_return_{s}") for s in ("mean", "min", "max"))
    ax.fill_between(steps, low, high, alpha=0.2, label="clients (min-max)")
    ax.plot(steps, mean, label="clients, training return (mean)")
    evals = column("eval_return")
    has_eval = ~np.isnan(evals)
    if has_eval.any():
        ax.plot(steps[has_eval], evals[has_eval], "o-", label="global policy, eval return")
    for name, label in PROTOCOL_CURVES:  # jfedrl.round.evaluation's protocols, where logged
        values = column(name)
        logged = ~np.isnan(values)
        if logged.any():
            ax.plot(steps[logged], values[logged], ".--", label=label)
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if drift:
        for name, (x, y) in drift.items():
            drift_ax.plot(x, y, ".-", markersize=3, label=name)
        drift_ax.axhline(0.0, color="gray", linewidth=0.5)
        drift_ax.set_ylabel("drift\n(mean rel.)", fontsize=8)
        drift_ax.grid(alpha=0.3)
        drift_ax.legend(loc="best", fontsize=7)
        ax = drift_ax
    ax.set_xlabel("environment steps (all clients)")
    fig.tight_layout()
    path = Path(run_dir) / CURVE_FILE
    partial = path.with_name(path.name + ".partial")
    try:
        fig.savefig(partial, format="png")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def new_figure(
    figsize: tuple[float, float], dpi: int = 110, nrows: int = 1, ncols: int = 1, **subplots: Any
) -> tuple[Any, Any]:
    """A matplotlib figure and its axes (`Figure.subplots`), drawn by Agg, without pyplot.

    pyplot's import (backend selection, its global figure registry) is half a second
    of a run's end; a bare `Figure` saves to PNG through Agg and needs no closing.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplots)


def setup_logging(run_dir: Path, quiet: bool = False, process_index: int = 0) -> None:
    """Logs to run_dir/train.log and (unless quiet) to stderr.

    In a multi-process run (`jfedrl.run.distributed`) only process 0 does; the others
    log only warnings and errors, to stderr, tagged with their index.
    """
    logger = logging.getLogger("jfedrl")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    if process_index != 0:
        stream = logging.StreamHandler()
        stream.setLevel(logging.WARNING)
        stream.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [process {process_index}] %(message)s", "%H:%M:%S"
            )
        )
        logger.addHandler(stream)
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    file_handler = _LogFileHandler(run_dir / "train.log")
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    if not quiet:
        stream = logging.StreamHandler()
        stream.setFormatter(fmt)
        stream.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        logger.addHandler(stream)
    logger.propagate = False


class _LogFileHandler(logging.FileHandler):
    """train.log that goes quiet when it cannot be written (a full disk).

    The default prints a traceback per record; the run's own error says what failed.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.setLevel(logging.CRITICAL + 1)


class RunDirError(ConfigError):
    """The run folder cannot be used: not a folder, not writable, or in use by another run."""


class RunLock:
    """An exclusive lock on a run folder, held until `release` or the process's end.

    `flock` on `RUN_DIR/.lock`: the kernel drops it when the process exits or is
    killed, so a crash never leaves a stale lock. The file names the holder
    (pid and host) for the error of a second run.
    """

    def __init__(self, run_dir: str | Path):
        """Creates the run folder if needed and locks it.

        Raises:
            RunDirError: naming `log.run_dir`, if the folder cannot be created or
                written, or another process holds it.
        """
        self.run_dir = Path(run_dir)
        shown = str(self.run_dir)
        self._fd: int | None = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(
                f"log.run_dir: {shown!r} is not a folder (a file is in the way)"
            ) from None
        except OSError as error:
            raise RunDirError(f"log.run_dir: {shown!r} cannot be used: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise RunDirError(
                    f"log.run_dir: {shown!r} cannot be locked: {error.strerror}"
                ) from None
            raise RunDirError(
                f"log.run_dir: {shown!r} is in use by another run ({holder or 'starting'}); "
                "wait for it to end or choose another --run-dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as error:
            os.close(fd)
            raise RunDirError(f"log.run_dir: {shown!r} cannot be used: {error.strerror}") from None
        self._fd = fd

    def release(self) -> None:
        """Unlocks the folder (the lock file stays: removing it would race a waiting run)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
