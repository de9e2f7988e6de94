#!/usr/bin/env bash
# Builds the jfedrl provider image and publishes it for Golem providers.
#
#   scripts/build_golem_image.sh [--cuda] [--push-to USER/REPO:TAG] [--no-push]
#
# 1. docker build (offload/image/Dockerfile, or Dockerfile.cuda with --cuda)
# 2. gvmkit-build: Docker image -> .gvmi (Golem's squashfs VM image)
# 3. push to the Golem registry: anonymously by hash (default), or under a tag
#    with --push-to (needs a registry.golem.network account and token)
# 4. print the image hash (SHA3-224 of the .gvmi) for --golem.image-hash
#
# The image holds the hash of the source it was built from (offload/source.py,
# checked against the installed files during the build); a requestor whose
# source differs has its first task refused with "stale image": rebuild then.
#
# Needs a running Docker engine and `pip install gvmkit-build`. Not run in CI.
set -euo pipefail

cd "$(dirname "$0")/.."
dockerfile=offload/image/Dockerfile
flavour=cpu
push=anonymous
push_to=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cuda) dockerfile=offload/image/Dockerfile.cuda; flavour=cuda ;;
        --push-to) push=tag; push_to="$2"; shift ;;
        --no-push) push=none ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build_golem_image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in docker gvmkit-build python3; do
    command -v "$tool" > /dev/null || { echo "build_golem_image.sh: $tool not found" >&2; exit 1; }
done
docker info > /dev/null 2>&1 || { echo "build_golem_image.sh: the Docker engine is not running" >&2; exit 1; }

version=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
image="jfedrl-golem:${version}-${flavour}"

source_hash=$(python3 offload/source.py)
echo "== docker build -f $dockerfile -t $image . (source hash $source_hash)"
docker build -f "$dockerfile" --build-arg "JFEDRL_SOURCE_HASH=$source_hash" -t "$image" .

out=$(mktemp -d)
echo "== gvmkit-build $image (output in $out)"
case "$push" in
    anonymous) (cd "$out" && gvmkit-build "$image" --push --nologin) ;;
    tag) (cd "$out" && gvmkit-build "$image" --push-to "$push_to") ;;
    none) (cd "$out" && gvmkit-build "$image") ;;
esac

gvmi=$(ls -t "$out"/*.gvmi | head -n 1)
hash=$(python3 -c "import hashlib,sys; h=hashlib.sha3_224(); f=open(sys.argv[1],'rb'); [h.update(b) for b in iter(lambda: f.read(1<<20), b'')]; print(h.hexdigest())" "$gvmi")
echo
echo "image file: $gvmi"
echo "image hash: $hash"
echo "source hash: $source_hash"
gpu=""
[ "$flavour" = cuda ] && gpu=" --golem.gpu"
if [ "$push" = tag ]; then
    echo "use: jfedrl train --executor golem --golem.image-tag $push_to$gpu"
else
    echo "use: jfedrl train --executor golem --golem.image-hash $hash$gpu"
fi
