"""The compilation cache keyed by CPU, and XLA's spurious cache lines off stderr (issue 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jfedrl.run import runner, stderr_filter

ROOT = Path(__file__).resolve().parent.parent
SPURIOUS_GATHER = (
    b"E1203 14:08:07.839763   12856 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
    b"Target machine feature +prefer-no-gather is not  supported on the host machine. "
    b"Machine type used for XLA:CPU compilation doesn't match ... such as SIGILL.\n"
)
SPURIOUS_VERSION = (
    b"W1203 14:08:07.684864   12890 pjrt_executable.cc:642] Assume version compatibility. "
    b"PjRt-IFRT does not track XLA executable versions.\n"
)
GENUINE_ISA = SPURIOUS_GATHER.replace(b"+prefer-no-gather", b"+avx512f")
GENUINE_OTHER = b"E1203 14:08:09.1 1 gloo.cc:12] collective stuck for 20 s\n"


def test_only_the_tuning_feature_and_version_lines_are_spurious():
    assert stderr_filter.is_spurious(SPURIOUS_GATHER)
    assert stderr_filter.is_spurious(SPURIOUS_GATHER.replace(b"gather", b"scatter"))
    assert stderr_filter.is_spurious(SPURIOUS_VERSION)
    assert not stderr_filter.is_spurious(GENUINE_ISA)  # a real instruction-set mismatch
    assert not stderr_filter.is_spurious(GENUINE_OTHER)


def _run_filtered(body: str) -> subprocess.CompletedProcess:
    """Runs `body` in a Python that installed the filter; its stderr as bytes."""
    code = "from jfedrl.run import stderr_filter\nassert stderr_filter.install()\nimport os, sys\n"
    env = {k: v for k, v in os.environ.items() if k != "JFEDRL_RAW_STDERR"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", code + body], capture_output=True, env=env, timeout=60
    )


def test_the_filter_drops_the_spurious_lines_and_passes_the_rest_in_order():
    lines = (SPURIOUS_VERSION, GENUINE_ISA, SPURIOUS_GATHER, GENUINE_OTHER)
    writes = "".join(f"os.write(2, {line!r})\n" for line in lines)
    done = _run_filtered(writes + "print('from python', file=sys.stderr)\n")
    assert done.returncode == 0
    assert GENUINE_ISA + GENUINE_OTHER in done.stderr
    assert b"from python\n" in done.stderr
    assert b"prefer-no-gather" not in done.stderr and b"PjRt-IFRT" not in done.stderr


def test_a_fatal_message_before_an_abort_still_arrives():
    done = _run_filtered("os.write(2, b'F0000 fatal: check failed\\n')\nos.abort()\n")
    assert done.returncode != 0
    assert b"F0000 fatal: check failed\n" in done.stderr


@pytest.fixture
def restore_cache_dir():
    import jax

    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_cache_folder_is_keyed_by_this_cpu(tmp_path, restore_cache_dir):
    key = runner.cpu_key()
    assert key.startswith("cpu-") and len(key) == 16 and key == runner.cpu_key()
    assert runner.enable_compilation_cache(str(tmp_path)) == str(tmp_path / key)
    # A root that already is this CPU's folder (an offload worker's) is not nested again.
    assert runner.enable_compilation_cache(str(tmp_path / key)) == str(tmp_path / key)


@pytest.mark.slow
def test_a_cached_cli_run_keeps_stderr_to_the_log(tmp_path):
    """Two `jfedrl train` commands; the second loads every program from the cache."""
    env = {k: v for k, v in os.environ.items() if k != "JFEDRL_RAW_STDERR"}
    env.update(PYTHONPATH=str(ROOT), JFEDRL_COMPILATION_CACHE=str(tmp_path / "cache"))
    flags = "--clients 2 --rounds 2 --local-updates 1 --ppo.num-envs 2 --ppo.num-steps 16 "
    flags += "--ppo.num-minibatches 2 --ppo.hidden-sizes 8 --log.rounds-per-block 2 "
    flags += "--log.tensorboard false --log.plot false --no-progress"
    for name in ("first", "second"):
        done = subprocess.run(
            [sys.executable, "-m", "jfedrl.cli", "train", *flags.split()]
            + ["--run-dir", str(tmp_path / name)],
            capture_output=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.decode().splitlines()
    assert lines and all(" INFO " in line for line in lines), lines
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [runner.cpu_key()]
