"""The air-gapped GPU run: the wheel list (scripts/gpu_wheels.sh) and the one check script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
WHEELS_SCRIPT = ROOT / "scripts" / "gpu_wheels.sh"


def _bash_array(name: str) -> list[str]:
    text = WHEELS_SCRIPT.read_text()
    body = re.search(rf"^{name}=\((.*?)\)", text, re.M | re.S).group(1)
    return [word for line in body.splitlines() for word in line.split("#")[0].split()]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned_for_the_gpu_or_in_the_image():
    pins = dict(pin.lower().split("==") for pin in _bash_array("PINS"))
    image = {_name(n) for n in _bash_array("IMAGE_HAS")}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = _name(dep)
        assert name in pins or name in image, f"{dep}: neither in PINS nor in IMAGE_HAS"
        assert not (name in pins and name in image), name
        if "==" in dep and name in pins:  # the project's exact pins and the GPU's agree
            assert pins[name] == dep.split("==")[1].strip(), dep


@pytest.mark.slow
def test_gpu_wheels_downloads_the_pinned_list_under_the_size_limit(tmp_path):
    out = tmp_path / "wheels"
    env = {**os.environ, "PIP": f"{sys.executable} -m pip"}
    run = subprocess.run(
        ["bash", str(WHEELS_SCRIPT), "3.12", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    wheels = sorted(p.name for p in out.glob("*.whl"))
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert names == {_name(p) for p in _bash_array("PINS")} | {"jfedrl"}
    assert not any(n in names for n in ("jax", "jaxlib", "flax", "optax", "numpy"))
    total = sum(p.stat().st_size for p in out.glob("*.whl"))
    assert total <= 40e6
    assert f"{total / 1e6:.1f} MB" in run.stderr
    # Compiled wheels are for CPython 3.12 on manylinux x86_64.
    for wheel in wheels:
        tags = wheel[: -len(".whl")].split("-")[-3:]
        assert tags[0] in ("py3", "py2.py3", "cp312", "cp36"), wheel
        assert tags[2] == "any" or "manylinux" in tags[2] and "x86_64" in tags[2], wheel
    mjx = next(out.glob("mujoco_mjx-*.whl"))
    with zipfile.ZipFile(mjx) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: mujoco>=3.17.0" in meta  # the pair matches


CHECK_SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_gpu_check_tiny_cpu_run_writes_its_report(tmp_path):
    """The GPU check's own script, on CPU with tiny shapes: every stage, both files."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "JFEDRL_GPU_CHECK_TINY": "1",
    }
    run = subprocess.run(
        ["bash", str(CHECK_SCRIPT)], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| jax " in run.stdout + run.stderr and "devices:" in run.stdout + run.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert report["tiny"] is True
    assert {"machine", "device_kind", "shape", "capacity_bytes", "fits", "targets"} <= set(report)
    stages = {name: s["status"] for name, s in report["stages"].items()}
    assert stages == {
        "versions": "ok",
        "smoke": "ok",
        "cartpole": "ok",
        "minatar": "skipped (JFEDRL_GPU_CHECK_TINY=1)",
        "brax": "skipped (JFEDRL_GPU_CHECK_TINY=1)",
    }
    (smoke,) = out.glob("smoke-*")
    assert len((smoke / "metrics.jsonl").read_text().splitlines()) == 2  # the 2-round train
    points = report["points"]
    assert [(p["env"], p["clients"]) for p in points] == [("CartPole-v1", 2), ("CartPole-v1", 4)]
    for p in points:
        assert p["env_steps_per_second"] > 0 and p["compile_seconds"] > 0
        assert p["memory_bytes_per_client"] > 0
    first = points[0]  # the reference runs at the first count only in the tiny run
    assert first["reference"]["env_steps_per_second"] > 0 and "reference" not in points[1]
    assert first["ratio"] == pytest.approx(
        first["env_steps_per_second"] / first["reference"]["env_steps_per_second"]
    )
    phases = points[0]["phases"]  # split at the first count only
    assert set(phases) == {
        "env_steps_s",
        "learning_s",
        "aggregation_s",
        "local_training_s",
        "round_s",
    }
    assert phases["env_steps_s"] > 0 and points[1]["phases"] is None
    fit = report["fits"]["CartPole-v1"]
    assert fit["bytes_per_client"] > 0 and fit["largest_clients_that_fit"] >= 4
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["CartPole clients run in one round"]["measured"] == 4
    assert targets["CartPole clients run in one round"]["met"] is False
    markdown = (out / "gpu.md").read_text()
    for heading in ("## Targets", "## Points", "## Stages", "target steps/s", "reference steps/s"):
        assert heading in markdown


def test_bench_gpu_targets_compare_measured_with_the_issue(tmp_path):
    from scripts import bench_gpu

    def point(clients, speed, ratio):
        return {
            "env": "CartPole-v1",
            "clients": clients,
            "env_steps_per_second": speed,
            "ratio": ratio,
            "memory_bytes": 1000 + 10 * clients,
        }

    report = {
        "points": [point(256, 5e8, 2.0), point(1024, 2e8, 1.1), point(16384, 3e8, 1.5)],
        "capacity_bytes": 10**6,
    }
    report["fits"] = {"CartPole-v1": bench_gpu.fit(report["points"], report["capacity_bytes"])}
    rows = {t["name"]: t for t in bench_gpu.targets(report)}
    speed = rows["CartPole env steps/s at >= 1024 clients, training included"]
    assert speed["measured"] == 3e8 and speed["met"] is True  # 256 clients do not count
    ratio = rows["CartPole speed vs reference_ppo, same shapes (lowest ratio)"]
    assert ratio["measured"] == 1.1 and ratio["met"] is False
    assert rows["CartPole clients run in one round"]["measured"] == 16384
    assert report["fits"]["CartPole-v1"]["bytes_per_client"] == pytest.approx(10)


def test_bench_gpu_refuses_a_reference_for_another_env(capsys):
    from scripts import bench_gpu

    with pytest.raises(SystemExit) as exit_:
        bench_gpu.main(["--env", "Breakout-MinAtar", "--clients", "2", "--reference"])
    assert exit_.value.code == 2
    assert "--reference" in capsys.readouterr().err


def test_bench_gpu_report_shows_failed_points_and_phases():
    from scripts import bench_gpu, benchlib

    good = {
        "env": "CartPole-v1",
        "clients": 256,
        "env_steps_per_second": 1e6,
        "compile_seconds": 3.0,
        "memory_bytes": 10**6,
        "memory_bytes_per_client": 4096,
        "phases": {"error": "XlaRuntimeError: RESOURCE_EXHAUSTED"},
    }
    report = {
        "machine": benchlib.finish(benchlib.machine(with_jax=False)),
        "tiny": False,
        "shape": {},
        "capacity_bytes": 2**30,
        "points": [good, {"env": "CartPole-v1", "clients": 16384, "error": "out of memory"}],
        "stages": {"cartpole": {"status": "timed out", "seconds": 170, "cap_seconds": 170}},
    }
    report["fits"] = {"CartPole-v1": bench_gpu.fit(report["points"], report["capacity_bytes"])}
    report["targets"] = bench_gpu.targets(report)
    rows = [line for line in bench_gpu.render(report).splitlines() if line.startswith("|")]
    widths = {line.count("|") for line in rows if "target value" not in line}
    widths.discard(5)  # the targets and stages tables
    assert len(widths) == 1  # every points row has the header's columns
    text = "\n".join(rows)
    assert "failed: out of memory" in text and "failed: XlaRuntimeError" in text
    assert "| cartpole | timed out | 170 | 170 |" in text
