#!/usr/bin/env bash
# Collects jfedrl and the wheels a CUDA-JAX GPU image lacks into one folder, for
# an air-gapped GPU machine that already has its own jax + jaxlib + CUDA plugin
# (newer than this project's CPU pin). Run it where pip works:
#
#   scripts/gpu_wheels.sh [PYTHON_VERSION] [OUT_DIR]     # e.g. 3.12 gpu-wheels
#
# then copy OUT_DIR with the repository to the GPU machine and run
# scripts/gpu_check.sh OUT_DIR there.
#
# Each wheel is fetched on its own with --no-deps: resolving the project's
# dependencies for another Python (pip download with a --platform) pulls in
# flax/optax versions of its own choosing and ends in ResolutionImpossible,
# and the image's flax/optax/chex/orbax must stay the ones it was built with.
#
# The image (the GPU machines' facts): Python 3.12, jax 0.11.2 with
# jax-cuda13-plugin 0.11.2, flax, optax, chex, orbax-checkpoint, numpy, scipy,
# matplotlib, pillow, tqdm, pyyaml, pandas, tensorboard, six and msgpack, and
# what those depend on (absl-py, etils[epath], typing_extensions, rich,
# protobuf, psutil via orbax). What a GPU run imports beyond that (found by
# tracing the imports of jfedrl, envs, a Brax step, gymnax's MinAtar,
# tensorboardX, dp_accounting's RDP accountant and evosax) is pinned below.
# Versions, and why:
#   brax 0.14.2, gymnax 1.0.1, evosax 0.3.2   the project's own pins (pyproject.toml);
#                                             brax needs flax/optax/orbax without an
#                                             upper bound, gymnax jax<0.12, evosax jax>=0.5
#   mujoco 3.17.0 + mujoco-mjx 3.17.0         the matching pair (mjx 3.17.0 requires
#                                             mujoco>=3.17.0.dev0; mujoco 4.x splits into
#                                             mujoco-core + mujoco-studio + a wasm wheel,
#                                             larger, for nothing a run uses); mjx requires
#                                             an unbounded jax
#   glfw 2.11.0, trimesh 5.2.0                imported by mujoco / mujoco.mjx on import
#   jaxopt 0.8.5                              imported by brax's generalized pipeline
#   gymnasium 1.3.0 (+ cloudpickle 3.1.3,     gymnax's spaces import it (gymnax wants
#     farama-notifications 0.0.6)             gymnasium>=1.1,<1.4)
#   seaborn 0.13.2                            gymnax imports it (jfedrl defers it)
#   dotmap 1.3.30                             evosax's dependency
#   tensorboardX 2.6.5                        jfedrl's TensorBoard writer
#   dp-accounting 0.6.0 + attrs 23.2.0        dp_fedavg's privacy ledger (attrs<24)
#   psutil 7.2.2                              jfedrl imports it; installed only if missing
# Left out on purpose: brax's flask, flask-cors, jinja2, ml-collections (its web
# viewer and training scripts), mujoco's pyopengl and websockets (rendering and
# its viewer), dp-accounting's dm-tree and mpmath (not on the RDP path). None is
# imported by a run; all are declared dependencies, so `--no-deps` is required.
# Not verified here: that mujoco-mjx 3.17.0 and brax 0.14.2 import on jax 0.11
# (the index this was written against stops at jax 0.10.2).
set -euo pipefail

PY_VERSION="${1:-3.12}"
OUT="${2:-gpu-wheels}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PIP="${PIP:-python3 -m pip}"
MAX_MB="${MAX_MB:-40}"
ABI="cp${PY_VERSION//./}"

# One line per wheel: name==version.
PINS=(
    brax==0.14.2
    mujoco==3.17.0
    mujoco-mjx==3.17.0
    glfw==2.11.0
    trimesh==5.2.0
    jaxopt==0.8.5
    gymnax==1.0.1
    gymnasium==1.3.0
    cloudpickle==3.1.3
    farama-notifications==0.0.6
    seaborn==0.13.2
    evosax==0.3.2
    dotmap==1.3.30
    tensorboardX==2.6.5
    dp-accounting==0.6.0
    attrs==23.2.0
    psutil==7.2.2
)
# The project's dependencies the image brings (tests/test_gpu_scripts.py checks
# that every dependency in pyproject.toml is in PINS or here).
IMAGE_HAS=(jax jaxlib flax optax chex orbax-checkpoint numpy pyyaml tqdm matplotlib pillow six)

mkdir -p "$OUT"
start=$SECONDS
echo "jfedrl wheel -> $OUT" >&2
$PIP wheel --quiet --no-deps --wheel-dir "$OUT" "$ROOT"

for pin in "${PINS[@]}"; do
    echo "$pin" >&2
    # The pure-Python wheels match any platform; the compiled ones (mujoco, glfw,
    # psutil) need one of these manylinux tags for the image's glibc.
    if ! $PIP download --quiet --no-deps --only-binary=:all: --dest "$OUT" \
        --python-version "$PY_VERSION" --implementation cp \
        --abi "$ABI" --abi abi3 --abi none \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 \
        "$pin"; then
        echo "error: could not download $pin for Python $PY_VERSION" >&2
        exit 1
    fi
done

bytes=$(python3 -c 'import pathlib, sys; print(sum(p.stat().st_size for p in pathlib.Path(sys.argv[1]).glob("*.whl")))' "$OUT")
size_mb=$(python3 -c "print(f'{$bytes / 1e6:.1f}')")
echo "$(ls "$OUT"/*.whl | wc -l) wheels, ${size_mb} MB in $OUT ($((SECONDS - start)) s)" >&2
if [ "$bytes" -gt $((MAX_MB * 1000000)) ]; then
    echo "error: ${size_mb} MB is over the ${MAX_MB} MB limit" >&2
    exit 1
fi
