"""Start-up: `import jfedrl.run.runner` and `jfedrl train` to its first finished round.

The default config, one round in one block, from process start to exit: with a
cold compilation cache (a fresh folder) and warm (the same folder again). With
`--baseline REV`, the same is measured for that git revision (checked out in a
temporary worktree), alternating with this tree run by run, so the two are
compared on the same machine in the same minutes. Writes bench/startup.{json,md}.

    python -m scripts.bench_startup [--reps 2] [--baseline aa1f3c7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts import benchlib

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["-m", "jfedrl.cli", "train", "--rounds", "1", "--log.rounds-per-block", "1"]


def _wall(tree: Path, args: list[str], cache: str) -> float:
    """Seconds a `python ARGS` process takes, run in `tree` (so it imports that tree)."""
    env = dict(os.environ, JFEDRL_COMPILATION_CACHE=cache, PYTHONPATH=str(tree))
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(tree: Path) -> dict[str, float]:
    """One measurement of each figure for the code in `tree`."""
    with tempfile.TemporaryDirectory(prefix="jfedrl-bench-") as scratch:
        cache = str(Path(scratch) / "cache")
        python = _wall(tree, ["-c", "pass"], cache)
        figures = {
            "import_runner_seconds": _wall(tree, ["-c", "import jfedrl.run.runner"], cache) - python
        }
        for label in ("cold", "warm"):  # the second run finds the first one's cache
            run_dir = str(Path(scratch) / f"run-{label}")
            command = [*TRAIN, "--run-dir", run_dir, "--no-progress", "--quiet"]
            figures[f"first_round_{label}_seconds"] = _wall(tree, command, cache)
    return figures


def render(report: dict) -> str:
    names = list(report["trees"])
    header = ["figure (median of runs, s)", *names]
    if len(names) == 2:
        header.append(f"{names[0]} / {names[1]}")
    rows = []
    for figure in ("import_runner_seconds", "first_round_cold_seconds", "first_round_warm_seconds"):
        medians = [statistics.median(r[figure] for r in report["trees"][n]) for n in names]
        row = [figure.replace("_seconds", "").replace("_", " "), *(f"{m:.1f}" for m in medians)]
        if len(names) == 2:
            row.append(f"{medians[0] / medians[1]:.2f}")
        rows.append(row)
    m = report["machine"]
    loads = benchlib.load_averages(m)
    lines = [
        "# Start-up: imports and the first round of `jfedrl train`",
        "",
        f"{m['date'][:10]}, {benchlib.describe(m)}; load average {loads[0]:.1f} at start, "
        f"{loads[1]:.1f} at end; {report['reps']} run(s) per tree, alternating. "
        "The default config, `--rounds 1 --log.rounds-per-block 1`, process start to exit; "
        "cold = a fresh compilation cache, warm = the same cache again. "
        "`python -m scripts.bench_startup`.",
        "",
        *benchlib.table(header, rows),
        "",
        "Every run: " + "; ".join(f"{n}: {report['trees'][n]}" for n in names),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--baseline", help="a git revision to compare with, run by run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "startup"))
    args = parser.parse_args()
    facts = benchlib.machine(with_jax=False)
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="jfedrl-baseline-") as scratch:
        if args.baseline:
            base = Path(scratch) / "tree"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
                check=True,
                capture_output=True,
            )
            trees[f"baseline {args.baseline}"] = base
        try:
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for rep in range(args.reps):
                for name, tree in trees.items():
                    runs[name].append(measure(tree))
                    print(f"rep {rep + 1}/{args.reps} {name}: {runs[name][-1]}", flush=True)
        finally:
            if args.baseline:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                    check=False,
                )
    report = {"machine": benchlib.finish(facts), "reps": args.reps, "trees": runs}
    benchlib.write_report(Path(args.out), report, render(report))


if __name__ == "__main__":
    main()
