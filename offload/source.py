"""The source hash: which jfedrl source a worker runs, checked against the requestor's.

A provider runs a published image, so the version string (`0.1.0`) says little:
two images of the same version can hold different code, and a result computed
by other code would not equal the in-process round. The hash covers every
Python file of the three packages an image installs (`jfedrl`, `envs`,
`offload`: relative path and content), so it is the same in a checkout and in
the site-packages the image's `pip install .` fills.

`scripts/build_golem_image.sh` bakes it into the image (`JFEDRL_SOURCE_HASH`,
checked there against the installed files); the requestor puts its own in
every task (`versions.source`) and the worker refuses a task whose hash is not
its own, with one line that says to rebuild the image. A worker outside an
image (the `local` and `ray` executors) computes it from its files.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

PACKAGES = ("jfedrl", "envs", "offload")
#: Where an image keeps the hash of the source it was built from.
ENV_VAR = "JFEDRL_SOURCE_HASH"
#: How the worker's refusal starts (the `golem` executor ends the run on it).
STALE_IMAGE = "stale image"


def source_hash(root: Path | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the packages' Python files under `root`.

    Args:
        root: the folder holding the packages (default: the one this module is in,
            hashed once per process).
    """
    return _own_hash() if root is None else _digest(Path(root))


@functools.cache
def _own_hash() -> str:
    return _digest(Path(__file__).resolve().parent.parent)


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def worker_source_hash() -> str:
    """The hash this worker runs: the image's baked one, else computed from its files."""
    return os.environ.get(ENV_VAR, "").strip() or source_hash()


def stale_image_error(wanted: str) -> str | None:
    """Why a worker must refuse a task whose requestor runs source `wanted`, or None."""
    have = worker_source_hash()
    if not wanted or wanted == have:
        return None
    return (
        f"{STALE_IMAGE}: the worker runs jfedrl source {have}, the requestor {wanted}; rebuild "
        "the provider image with scripts/build_golem_image.sh and pass its new "
        "offload.golem.image_hash"
    )


if __name__ == "__main__":  # `python -m offload.source`: what the image build prints
    print(source_hash())
