"""The air-gapped GPU run: the wheel list (scripts/gpu_wheels.sh) and the one check script."""

from __future__ import annotations

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
