#!/usr/bin/env bash
# Collects jfedrl and the wheels a CUDA-JAX environment lacks into one folder,
# for an air-gapped GPU machine that already has its own jax + jaxlib + CUDA
# plugin (often newer than this project's CPU pin). Run it where pip works:
#
#   scripts/gpu_wheels.sh [PYTHON_VERSION] [OUT_DIR]     # e.g. 3.12 gpu-wheels
#
# (python3 >= 3.11 for tomllib) then copy OUT_DIR and the repository to the GPU machine and run
# scripts/bench_gpu.sh OUT_DIR there. The folder holds no jax/jaxlib, and none
# of what jax itself depends on (numpy, scipy, ml_dtypes, opt_einsum): the
# target environment has those, matched to its own jax.
set -euo pipefail

PY_VERSION="${1:-3.12}"
OUT="${2:-gpu-wheels}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PIP="${PIP:-python3 -m pip}"
PLATFORM="${PLATFORM:-manylinux2014_x86_64}"

mkdir -p "$OUT"
echo "jfedrl wheel -> $OUT" >&2
$PIP wheel --quiet --no-deps --wheel-dir "$OUT" "$ROOT"

# The project's dependencies less jax/jaxlib: their CPU pin (<0.10, against a
# CPU hang) must not constrain the resolution for a newer CUDA jax.
mapfile -t DEPS < <(python3 - "$ROOT/pyproject.toml" <<'PY'
import re
import sys
import tomllib

deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for dep in deps:
    if re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0] not in ("jax", "jaxlib"):
        print(dep)
PY
)
echo "${#DEPS[@]} dependencies for Python $PY_VERSION ($PLATFORM) -> $OUT" >&2
$PIP download --quiet --dest "$OUT" --only-binary=:all: \
    --python-version "$PY_VERSION" --platform "$PLATFORM" \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any \
    "${DEPS[@]}"

# What the target's jax already brings (the CUDA build has its own versions).
for skip in jax jaxlib numpy scipy ml_dtypes opt_einsum jax_cuda* nvidia_*; do
    rm -f "$OUT"/${skip}-*.whl
done

size_mb=$(du -sm "$OUT" | cut -f1)
echo "$(ls "$OUT" | wc -l) wheels, ${size_mb} MB in $OUT" >&2
if [ "$size_mb" -ge 60 ]; then
    echo "warning: ${size_mb} MB is over the 60 MB target" >&2
fi
