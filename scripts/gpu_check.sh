#!/usr/bin/env bash
# The whole GPU check, on a fresh air-gapped GPU machine, in at most 8 minutes:
#
#   scripts/gpu_check.sh [WHEELS_DIR]        # WHEELS_DIR from scripts/gpu_wheels.sh
#   JFEDRL_GPU_CHECK_TINY=1 scripts/gpu_check.sh   # the same script on CPU, tiny (CI)
#
# 1. installs the wheels the image lacks into a --target folder (--no-deps,
#    --no-index: the image's jax, CUDA plugin, flax, optax, ... stay as they are;
#    a wheel whose distribution is already installed is left out) and puts it on
#    PYTHONPATH after this repository; without WHEELS_DIR, the current Python's
#    packages are used as they are;
# 2. prints the versions and the device;
# 3. a 2-round `jfedrl train` on the device;
# 4. the benchmark (scripts/bench_gpu.py), one stage per environment, jfedrl
#    side by side with scripts/reference_ppo.py on CartPole: CartPole PPO at
#    256 / 1024 / 4096 / 16384 clients, Breakout-MinAtar at 256 / 1024,
#    brax-hopper at 256 / 1024; where the round's time goes at 1024 (256 for Brax).
# Writes $OUT/gpu.json and $OUT/gpu.md (OUT defaults to ./bench-out), rewritten
# after every measured point and every stage, so a stage that runs out of time
# (each has its own cap, `timeout`) loses only its own unfinished point.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="${1:-}"
OUT="${OUT:-$PWD/bench-out}"
PYTHON="${PYTHON:-python3}"
TINY="${JFEDRL_GPU_CHECK_TINY:-0}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STEM="$OUT/gpu"
STAMP="$(date -u +%Y%m%dT%H%M%S)"
# A report from an earlier check in the same folder is kept, under its time.
for ext in json md; do
    [ ! -e "$STEM.$ext" ] || mv "$STEM.$ext" "$STEM.before-$STAMP.$ext"
done
cd "$ROOT"

if [ "$TINY" != 0 ]; then
    # 1: CartPole only (CI's default run); 2: MinAtar too. Brax's step compiles for
    # minutes on a small CPU, so no tiny run has it (each says what it skipped).
    export JAX_PLATFORMS=cpu
    BENCH=(--tiny)
    CART=(2 4) MINATAR=() BRAX=() REFERENCE=(2)
    [ "$TINY" != 2 ] || MINATAR=(2)
    CAPS=(install=120 versions=120 smoke=120 cartpole=180 minatar=120 brax=10)
    SMOKE=(--federation.num-clients 2 --algo.ppo.num-envs 2 --algo.ppo.num-steps 8
        --algo.ppo.update-epochs 1 --algo.ppo.num-minibatches 1 --algo.ppo.hidden-sizes 8 8
        --federation.local-updates 1 --log.eval-episodes 1)
else
    BENCH=(--seconds 1)
    # The counts the targets need first: a stage cut short keeps its earlier points.
    CART=(1024 16384 256 4096) MINATAR=(1024 256) BRAX=(256 1024) REFERENCE=()  # (): all
    # 435 s of caps, plus a few seconds per stage to record it: under 8 minutes.
    CAPS=(install=30 versions=25 smoke=60 cartpole=170 minatar=60 brax=90)
    SMOKE=(--federation.num-clients 16)
fi
cap() { for kv in "${CAPS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

# Runs stage $1 (the rest: the command) under its cap and records how it went.
stage() {
    local name="$1" limit start status
    shift
    limit="$(cap "$name")"
    start=$SECONDS
    echo "== $name (cap ${limit} s)" >&2
    timeout --kill-after=5 "$limit" "$@"
    case $? in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status=failed ;;
    esac
    echo "== $name: $status after $((SECONDS - start)) s" >&2
    timeout 60 "$PYTHON" -m scripts.bench_gpu "${BENCH[@]}" --out "$STEM" --stage "$name" \
        --status "$status" --seconds "$((SECONDS - start))" --cap-seconds "$limit" >&2
}

if [ -n "$WHEELS" ]; then
    TARGET="${JFEDRL_GPU_SITE:-${TMPDIR:-/tmp}/jfedrl-gpu-site}"
    rm -rf "$TARGET"
    mkdir -p "$TARGET"
    start=$SECONDS
    # Only the wheels whose distribution the image lacks.
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
    echo "installing ${#missing[@]} wheels from $WHEELS into $TARGET" >&2
    install_status=ok
    if [ "${#missing[@]}" -gt 0 ]; then
        timeout "$(cap install)" "$PYTHON" -m pip install --quiet --no-deps --no-index \
            --target "$TARGET" "${missing[@]}" || install_status=failed
    fi
    export PYTHONPATH="$ROOT:$TARGET${PYTHONPATH:+:$PYTHONPATH}"
    install_seconds=$((SECONDS - start))
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    install_seconds=""
fi

stage versions "$PYTHON" -c "
import jax, jaxlib, jfedrl, flax, optax
print('python', __import__('sys').version.split()[0], '| jax', jax.__version__, '| jaxlib',
      jaxlib.__version__, '| jfedrl', jfedrl.__version__, '| flax', flax.__version__,
      '| optax', optax.__version__)
print('devices:', jax.devices(), jax.devices()[0].device_kind)
"
[ -z "$install_seconds" ] || timeout 60 "$PYTHON" -m scripts.bench_gpu "${BENCH[@]}" \
    --out "$STEM" --stage install --status "$install_status" --seconds "$install_seconds" \
    --cap-seconds "$(cap install)" >&2

stage smoke "$PYTHON" -m jfedrl.cli train --quiet --federation.rounds 2 \
    --log.run-dir "$OUT/smoke-$STAMP" "${SMOKE[@]}"

stage cartpole "$PYTHON" -m scripts.bench_gpu "${BENCH[@]}" --out "$STEM" --env CartPole-v1 \
    --clients "${CART[@]}" --reference "${REFERENCE[@]}" --phases-at "${CART[0]}"
skipped() {
    timeout 60 "$PYTHON" -m scripts.bench_gpu "${BENCH[@]}" --out "$STEM" --stage "$1" \
        --status "skipped (JFEDRL_GPU_CHECK_TINY=$TINY)" --seconds 0 >&2
}
if [ "${#MINATAR[@]}" -gt 0 ]; then
    stage minatar "$PYTHON" -m scripts.bench_gpu "${BENCH[@]}" --out "$STEM" \
        --env Breakout-MinAtar --clients "${MINATAR[@]}" --phases-at "${MINATAR[0]}"
else
    skipped minatar
fi
if [ "${#BRAX[@]}" -gt 0 ]; then
    stage brax "$PYTHON" -m scripts.bench_gpu "${BENCH[@]}" --out "$STEM" --env brax-hopper \
        --clients "${BRAX[@]}" --phases-at "${BRAX[0]}"
else
    skipped brax
fi
echo "wrote $STEM.json and $STEM.md" >&2
cat "$STEM.md"
