"""Files from untrusted places: size caps, SHA-256 digests, small JSON, orbax arrays, tars.

Everything a worker returns (and everything a worker is sent) crosses this
module: no file is read before its size is capped, nothing is unpickled, and a
tar is checked entry by entry before anything is written. A damaged input is a
`TaskError` (the attempt failed, another may succeed); a problem of this
machine that no worker can fix is an `OffloadError`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

DIGESTS_FILE = "digests.json"

#: Caps on the small JSON files of a task or result.
MAX_JSON_BYTES = 16 << 20
#: Cap on the number of files in a result (orbax writes a handful).
MAX_FILES = 4096


class OffloadError(ValueError):
    """Offloading cannot go on: the round fails and the last checkpoint stays intact.

    A `ValueError`, so the CLI prints it as one clear line.
    """


class TaskError(Exception):
    """One attempt of a task produced no usable result (the task is retried)."""


#: Array name -> (shape, dtype): what a checkpoint of flat arrays must hold.
Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


# ---------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(root: Path, max_bytes: int | None = None) -> dict[str, int]:
    """Every regular file under `root` (relative path -> size).

    Raises:
        TaskError: on a link or special file, too many files, or more than
            `max_bytes` in total.
    """
    files: dict[str, int] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise TaskError(f"{rel} is a symbolic link")
            if name in filenames:
                if not path.is_file():
                    raise TaskError(f"{rel} is not a regular file")
                size = path.stat().st_size
                files[rel] = size
                total += size
                if len(files) > MAX_FILES:
                    raise TaskError(f"more than {MAX_FILES} files")
                if max_bytes is not None and total > max_bytes:
                    raise TaskError(f"more than the cap of {max_bytes} bytes")
    return files


def digest_tree(root: Path, exclude: tuple[str, ...] = (DIGESTS_FILE,)) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in sorted(list_files(root)) if rel not in exclude}


def verify_digests(root: Path, expected: dict[str, str], exclude=(DIGESTS_FILE,)) -> None:
    """Every file listed is present with its digest, and nothing else is there."""
    present = {rel for rel in list_files(root) if rel not in exclude}
    missing = sorted(set(expected) - present)
    if missing:
        raise TaskError(f"missing file(s): {', '.join(missing[:3])}")
    extra = sorted(present - set(expected))
    if extra:
        raise TaskError(f"unlisted file(s): {', '.join(extra[:3])}")
    for rel, digest in expected.items():
        if sha256_file(root / rel) != digest:
            raise TaskError(f"digest mismatch for {rel}")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A small JSON object from an untrusted folder (size-capped)."""
    if not path.is_file():
        raise TaskError(f"{what} is missing")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise TaskError(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"{what} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{what} is not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes flat arrays as an orbax checkpoint (synchronously)."""
    import orbax.checkpoint as ocp

    checkpointer = _checkpointer()
    try:
        checkpointer.save(directory.absolute(), args=ocp.args.StandardSave(arrays))
    finally:
        checkpointer.close()


def restore_arrays(directory: Path, spec: Spec) -> dict[str, np.ndarray]:
    """Restores an orbax checkpoint of flat arrays after checking it matches `spec`.

    The names, shapes and dtypes recorded in the checkpoint's metadata are
    compared with `spec` before any array is read (orbax would otherwise
    restore whatever shape was saved), and again after.

    Raises:
        TaskError: on a missing or unreadable checkpoint or a structure mismatch.
    """
    import orbax.checkpoint as ocp

    if not directory.is_dir():
        raise TaskError(f"{directory.name}/ is missing")
    checkpointer = _checkpointer()
    try:
        try:
            metadata = checkpointer.metadata(directory.absolute()).item_metadata.tree
        except Exception as error:  # orbax raises many types for damaged files
            raise TaskError(f"unreadable checkpoint metadata: {type(error).__name__}") from None
        if not isinstance(metadata, dict) or set(metadata) != set(spec):
            got = set(metadata) if isinstance(metadata, dict) else set()
            missing, extra = sorted(set(spec) - got), sorted(got - set(spec))
            raise TaskError(f"wrong tree structure (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, (shape, dtype) in spec.items():
            meta = metadata[name]
            if tuple(meta.shape) != tuple(shape) or np.dtype(meta.dtype) != np.dtype(dtype):
                raise TaskError(
                    f"{name}: {tuple(meta.shape)}/{np.dtype(meta.dtype)} where "
                    f"{tuple(shape)}/{np.dtype(dtype)} is expected"
                )
        target = {name: np.empty(shape, dtype) for name, (shape, dtype) in spec.items()}
        try:
            restored = checkpointer.restore(
                directory.absolute(), args=ocp.args.StandardRestore(target)
            )
        except Exception as error:
            raise TaskError(f"unreadable checkpoint: {type(error).__name__}: {error}") from None
    finally:
        checkpointer.close()
    arrays = {name: np.asarray(value) for name, value in restored.items()}
    for name, (shape, dtype) in spec.items():
        if arrays[name].shape != tuple(shape) or arrays[name].dtype != np.dtype(dtype):
            raise TaskError(f"{name}: restored with shape {arrays[name].shape}")
    return arrays


# ---------------------------------------------------------------- archives


def pack(directory: Path) -> bytes:
    """A folder as an uncompressed tar (what is uploaded to / downloaded from Golem)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in sorted(list_files(directory)):
            tar.add(directory / rel, arcname=rel, recursive=False)
    return buffer.getvalue()


def archive_cap(max_bytes: int) -> int:
    """Largest archive accepted for `max_bytes` of content (headers and padding on top)."""
    return max_bytes + (1 << 20)


#: Longest entry name and path an archive may hold, in bytes (Linux NAME_MAX and PATH_MAX).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
#: Errors of this machine's disk, not of the archive: retrying elsewhere cannot help.
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _shown(name: str) -> str:
    """An entry name for an error line (long ones shortened, with their length)."""
    return repr(name) if len(name) <= 80 else f"{name[:40]!r}... ({len(name)} characters)"


def _entry_paths(members: list[tarfile.TarInfo], destination: Path) -> list[tuple[str, ...]]:
    """The relative path of every entry, after checking all of them together.

    Raises:
        TaskError: if an entry escapes, is not a regular file, has a name or path
            longer than the filesystem allows, or clashes with another entry (the
            same file twice, or a file where another entry needs a folder).
    """
    base = len(os.fsencode(str(destination.absolute())))
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    paths = []
    for member in members:
        parts = Path(member.name).parts
        shown = _shown(member.name)
        if member.name.startswith("/") or ".." in parts or not parts:
            raise TaskError(f"archive entry {shown} escapes the folder")
        if not member.isfile():
            raise TaskError(f"archive entry {shown} is not a regular file")
        if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in parts):
            raise TaskError(f"archive entry {shown} has a name longer than {MAX_NAME_BYTES} bytes")
        if base + 1 + len(os.fsencode("/".join(parts))) >= MAX_PATH_BYTES:
            raise TaskError(
                f"archive entry {shown} makes a path longer than {MAX_PATH_BYTES} bytes"
            )
        if parts in files:
            raise TaskError(f"archive entry {shown} appears twice")
        if parts in folders:
            raise TaskError(f"archive entry {shown} is a file where another entry needs a folder")
        for end in range(1, len(parts)):
            if parts[:end] in files:
                raise TaskError(
                    f"archive entry {shown} needs a folder where the entry "
                    f"{'/'.join(parts[:end])!r} is a file"
                )
            folders.add(parts[:end])
        files.add(parts)
        paths.append(parts)
    return paths


def unpack(data: bytes, destination: Path, max_bytes: int) -> None:
    """Extracts a tar from an untrusted source: regular files only, inside `destination`.

    Every entry is checked before anything is written, so a malformed archive is
    a bad result of its worker (a `TaskError`), never an `OSError` of this process.

    Args:
        data: the archive.
        destination: the folder to extract into.
        max_bytes: cap on the extracted content (the archive may be 1 MiB larger).

    Raises:
        TaskError: if the archive is too big, damaged, holds anything but plain
            relative files, or entries that are too long or clash with each other
            or with what `destination` already holds.
        OffloadError: if this machine cannot write to `destination` (full disk,
            read-only or not permitted): no worker can fix that.
    """
    if len(data) > archive_cap(max_bytes):
        raise TaskError(f"archive of {len(data)} bytes exceeds the cap of {archive_cap(max_bytes)}")
    target = destination
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise TaskError(f"archive holds more than {MAX_FILES} entries")
            paths = _entry_paths(members, destination)
            if sum(member.size for member in members) > max_bytes:
                raise TaskError(f"archive content exceeds the cap of {max_bytes} bytes")
            destination.mkdir(parents=True, exist_ok=True)
            for member, parts in zip(members, paths, strict=True):
                target = destination.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with open(target, "wb") as out:
                    out.write(source.read())
    except tarfile.TarError as error:
        raise TaskError(f"damaged archive: {error}") from None
    except OSError as error:
        if error.errno in _LOCAL_ERRNOS:
            raise OffloadError(
                f"cannot unpack a result into {str(destination)!r}: {error.strerror}"
            ) from None
        shown = _shown(target.relative_to(destination).as_posix())
        raise TaskError(f"archive entry {shown} cannot be written: {error.strerror}") from None
