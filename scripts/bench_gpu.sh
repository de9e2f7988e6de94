#!/usr/bin/env bash
# On an air-gapped GPU machine with its own CUDA jax: installs jfedrl and its
# dependencies from the folder scripts/gpu_wheels.sh made, without touching the
# installed jax/jaxlib (and without reinstalling anything already present),
# then writes bench/gpu.json + bench/gpu.md (scripts/bench_gpu.py).
#
#   scripts/bench_gpu.sh WHEELS_DIR [extra bench_gpu.py arguments]
set -euo pipefail

WHEELS="${1:?usage: scripts/bench_gpu.sh WHEELS_DIR [bench_gpu.py args]}"
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" >&2

# Only the wheels whose distribution is not installed yet; --no-deps so the
# project's CPU pin (jax <0.10, it guards a CPU hang only) cannot replace the
# CUDA jax.
mapfile -t missing < <("$PYTHON" - "$WHEELS" <<'PY'
import importlib.metadata as md
import pathlib
import sys

for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = wheel.name.split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
PY
)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${#missing[@]} wheels from $WHEELS" >&2
    "$PYTHON" -m pip install --quiet --no-index --no-deps "${missing[@]}"
fi
"$PYTHON" -c "import jax, jfedrl; print('jfedrl', jfedrl.__version__, 'on jax', jax.__version__)" >&2

cd "$ROOT"
# The whole plan takes a few minutes on one GPU; stop it at 8 minutes.
timeout 480 "$PYTHON" -m scripts.bench_gpu "$@"
