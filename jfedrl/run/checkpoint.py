"""Orbax checkpoints of the whole simulator state, plus host-side metadata.

A checkpoint at round r holds the `FedState` after r rounds (global params,
server state, every client's algorithm and environment state, the run key)
and a small JSON record (wall seconds, env steps, versions). Orbax writes to a
temporary folder and renames it, so a crash mid-save leaves the previous
checkpoint intact. Saves are synchronous in this thread: a save that fails (a
full or read-only disk) raises at once, naming the checkpoint, and leaves no
background thread behind to delay the exit.

In a multi-process run (`jfedrl.run.distributed`) every process saves and restores
with the same arguments: each writes and reads its own shards, process 0 the
metadata, so the folder must be shared. A restore lays the arrays out as its
target's shardings say, whatever layout saved them.

Checkpoints move between machines: the participant slots of `FedState.peer_params`
and `peer_weights` are padded to a multiple of the device count, so a restore
reads the slot count the checkpoint was written with and cuts or re-pads those
rows to this layout's (the padding rows carry zero weight, so they are inert).

Every save ends with a digest manifest (`MANIFEST`: the sha256 of every file of
the step folder, written atomically after orbax's commit). A restore verifies it
first; the newest checkpoint whose files match is restored, with one warning
naming each damaged one skipped. A checkpoint without a manifest (written before
manifests existed, or by a save killed between commit and manifest) is restored
unverified.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger("jfedrl")

#: The digest manifest in each step folder: `{"sha256": {relative path: hex digest}}`.
MANIFEST = "jfedrl_manifest.json"
#: Where a damaged checkpoint is moved on resume (`<round>.damaged`; orbax ignores it).
DAMAGED_SUFFIX = ".damaged"
#: `FedState` fields whose leading axis is the padded participant slots.
SLOT_FIELDS = ("peer_params", "peer_weights")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match the config."""


class Checkpointer:
    """Saves and restores `(state, meta)` pairs under `directory/<round>/`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        drop_closed_loop_callbacks()
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            # Async saves fail late and their threads wait minutes on exit (orbax barriers).
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "meta"),
        )

    def rounds(self) -> list[int]:
        """Rounds with a finished checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_round(self) -> int | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def save(self, round_index: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves synchronously: when this returns, the checkpoint is on disk.

        Raises:
            CheckpointError: if it cannot be written (full or read-only disk, ...);
                the previous checkpoints are left as they were.
        """
        if jax.process_count() == 1:
            # One transfer to the host: orbax would otherwise slice every device shard
            # of every leaf with its own small jitted program (dozens of compiles, seconds
            # on a CPU, on the first save of a sharded state).
            state = jax.device_get(state)
        absl = logging.getLogger("absl")
        absl.addFilter(_drop_save_thread_errors)
        try:
            self._manager.save(
                round_index,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self._manager.wait_until_finished()
        except Exception as error:  # OSError, or tensorstore's ValueError carrying an errno
            for partial in self.directory.glob(f"{round_index}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)  # frees a full disk
            latest = self.latest_round()
            raise CheckpointError(
                f"checkpoint of round {round_index} could not be saved in "
                f"{str(self.directory)!r}: {_reason(error)}; "
                + (f"the checkpoint of round {latest} is intact" if latest else "none is kept")
            ) from None
        finally:
            absl.removeFilter(_drop_save_thread_errors)
        if jax.process_index() == 0:  # every process's files are committed by now
            try:
                write_manifest(self.directory / str(round_index))
            except OSError as error:
                (self.directory / str(round_index) / (MANIFEST + ".tmp")).unlink(missing_ok=True)
                raise CheckpointError(
                    f"checkpoint of round {round_index} was saved in {str(self.directory)!r} "
                    f"but its digest manifest could not be written: {_reason(error)}; it "
                    "restores unverified"
                ) from None

    def restore(
        self, target: Any, round_index: int | None = None, set_aside_damaged: bool = False
    ) -> tuple[Any, dict]:
        """Restores the state into the structure of `target` (arrays or shape structs).

        Without `round_index`, the newest checkpoint whose digest manifest matches
        its files is restored; each damaged one skipped is named in one warning
        (with `set_aside_damaged`, as a resume does, it is also renamed to
        `<round>.damaged`, so the run can save that round again). A `FedState`
        written under another device layout is cut or re-padded to `target`'s
        participant slots.

        Raises:
            CheckpointError: if there is no checkpoint, none is intact, the one asked
                for is damaged, or its tree does not match `target` (e.g. a different
                config).
        """
        if round_index is not None:
            problem = verify(self.directory / str(round_index))
            if problem:
                raise CheckpointError(
                    f"checkpoint {str(self.directory / str(round_index))!r} is damaged: {problem}"
                )
            return self._restore_round(target, round_index)
        rounds = self.rounds()
        if not rounds:
            raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
        damaged = []
        for candidate in reversed(rounds):
            problem = verify(self.directory / str(candidate))
            if not problem:
                break
            damaged.append(f"round {candidate} ({problem})")
        else:
            raise CheckpointError(
                f"no intact checkpoint in {str(self.directory)!r}: " + "; ".join(damaged)
            )
        if damaged:
            log.warning(
                "skipped damaged checkpoint(s) in %s: %s; restoring round %d",
                self.directory,
                "; ".join(damaged),
                candidate,
            )
            if set_aside_damaged:
                self._set_aside([r for r in rounds if r > candidate])
        return self._restore_round(target, candidate)

    def _set_aside(self, rounds: list[int]) -> None:
        """Renames damaged step folders out of orbax's sight (kept for inspection)."""
        if jax.process_index() == 0:
            for round_index in rounds:
                folder = self.directory / str(round_index)
                aside = folder.with_name(folder.name + DAMAGED_SUFFIX)
                shutil.rmtree(aside, ignore_errors=True)  # an older damaged copy of that round
                folder.rename(aside)
        if jax.process_count() > 1:
            from jfedrl.run import distributed

            distributed.barrier("checkpoints set aside")
        self._manager.reload()

    def _restore_round(self, target: Any, round_index: int) -> tuple[Any, dict]:
        where = self.directory / str(round_index)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        stored = _stored_slots(where)
        wanted = _slots(abstract)
        if stored is not None and wanted is not None and stored != wanted:
            _check_slot_layout(where, abstract, stored, wanted)
            abstract = _with_slots(abstract, stored)
        try:
            restored = self._manager.restore(
                round_index,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax raises many types for damaged files
            _silence_abandoned_reads()
            raise CheckpointError(
                f"checkpoint {str(where)!r} is corrupt or does not match this run's config: "
                f"{type(error).__name__}: {_reason(error)}"
            ) from None
        _check_structure(restored.state, abstract, where)
        state = _on_devices(restored.state, abstract)
        if stored is not None and wanted is not None and stored != wanted:
            state = _fit_slots(state, jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
        return state, dict(restored.meta or {})

    def close(self) -> None:
        self._manager.close()


def _on_devices(state: Any, abstract: Any) -> Any:
    """Device arrays for leaves orbax restored as NumPy (saved from the host)."""

    def place(leaf: Any, want: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return leaf
        sharding = getattr(want, "sharding", None)
        return jax.device_put(leaf, sharding) if sharding is not None else jnp.asarray(leaf)

    return jax.tree.map(place, state, abstract)


def _silence_abandoned_reads() -> None:
    """Keeps a failed restore's sibling reads from printing a traceback each.

    When one array of a damaged checkpoint fails to read, orbax abandons the
    other arrays' read coroutines; each raises the same error again when it is
    collected (through `sys.unraisablehook`), asyncio logs their gathered
    future's error as never retrieved, and those never started warn that they
    were never awaited: hundreds of lines after the one error the restore
    raised. The hook, log filter and warning filter installed here drop exactly
    those reports and hand every other one on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_jfedrl_abandoned_reads", False):
        gc.collect()
        return
    logging.getLogger("asyncio").addFilter(_drop_abandoned_read_records)
    warnings.filterwarnings(  # those it created but never started
        "ignore",
        message=r"coroutine '_read_array_index_and_device_put' was never awaited",
        category=RuntimeWarning,
    )

    def hook(unraisable: Any) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if _is_orbax_read(getattr(code, "co_filename", "")):
            log.debug("dropped an abandoned orbax read: %s", unraisable.exc_value)
            return
        previous(unraisable)

    hook._jfedrl_abandoned_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    gc.collect()


def _is_orbax_read(filename: str) -> bool:
    return "orbax" in filename and "serialization" in filename


def _drop_abandoned_read_records(record: logging.LogRecord) -> bool:
    """Drops asyncio's "exception was never retrieved" for an abandoned orbax read."""
    if record.exc_info and record.exc_info[2] is not None:
        frames = traceback.extract_tb(record.exc_info[2])
        if any(_is_orbax_read(frame.filename) for frame in frames):
            return False
    return True


def _drop_save_thread_errors(record: logging.LogRecord) -> bool:
    """Drops orbax's logged copy of a save error (the raised one names it once)."""
    return "raised an exception" not in record.getMessage()


def _reason(error: Exception) -> str:
    """A short, one-line reason for a failed save (tensorstore's errors are long)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code and int(code.group(1)) in errno.errorcode:
        return os.strerror(int(code.group(1)))
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first if len(first) <= 200 else first[:200] + "..."


def _check_structure(restored: Any, abstract: Any, where: Path) -> None:
    expected = jax.tree.structure(abstract)
    got = jax.tree.structure(restored)
    if expected != got:
        raise CheckpointError(
            f"checkpoint {str(where)!r} has a different state tree than the config"
        )
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
        if leaf.shape != want.shape or leaf.dtype != want.dtype:
            raise CheckpointError(
                f"checkpoint {str(where)!r}: leaf {leaf.shape}/{leaf.dtype} does not match "
                f"the config's {want.shape}/{want.dtype}"
            )


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder) != Path(MANIFEST)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Writes `folder/MANIFEST`: the sha256 of every other file (atomically: temp + rename)."""
    digests = {str(p.relative_to(folder)): _sha256(p) for p in _files(folder)}
    temporary = folder / (MANIFEST + ".tmp")
    with open(temporary, "w") as f:
        json.dump({"sha256": digests}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / MANIFEST)


def verify(folder: Path) -> str | None:
    """What is wrong with the checkpoint in `folder` (None: intact or unverifiable).

    A folder without a manifest (written before manifests, or by a save that died
    between orbax's commit and the manifest) is not checked; that is logged.
    """
    manifest = folder / MANIFEST
    if not folder.is_dir():
        return "its folder is missing"
    if not manifest.is_file():
        log.info("checkpoint %s has no digest manifest; restoring it unverified", folder)
        return None
    try:
        digests = json.loads(manifest.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its manifest {MANIFEST} is unreadable"
    for name, digest in sorted(digests.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            if _sha256(path) != digest:
                return f"{name} does not match its digest"
        except OSError as error:
            return f"{name} cannot be read ({error.strerror or error})"
    return None


def _stored_slots(folder: Path) -> int | None:
    """The participant slots (`peer_weights` rows) the checkpoint in `folder` was written with."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(folder / "state")
    except Exception:  # unreadable metadata: the restore itself names the problem
        return None
    tree = getattr(metadata, "tree", metadata)
    weights = tree.get("peer_weights") if isinstance(tree, dict) else None
    shape = getattr(weights, "shape", None)
    return int(shape[0]) if shape else None


def _slots(abstract: Any) -> int | None:
    weights = getattr(abstract, "peer_weights", None)
    return int(weights.shape[0]) if getattr(weights, "shape", None) else None


def _with_slots(abstract: Any, slots: int) -> Any:
    """`abstract` with `slots` rows in the participant-slot leaves."""

    def resized(x: Any) -> Any:
        return jax.ShapeDtypeStruct((slots, *x.shape[1:]), x.dtype, sharding=x.sharding)

    return abstract.replace(**{f: jax.tree.map(resized, getattr(abstract, f)) for f in SLOT_FIELDS})


def _fit_slots(state: Any, target: Any) -> Any:
    """The participant-slot leaves cut, or padded (zero weight, copies of slot 0), to `target`'s.

    Rows past the participants are padding, which the round masks out and the
    peers' mixture weighs by 0, so which values they hold does not matter.
    """

    def fit(x: jax.Array, want: Any, weights: bool) -> jax.Array:
        rows = want.shape[0]

        def cut_or_pad(x):
            if x.shape[0] >= rows:
                return x[:rows]
            fill = jnp.zeros_like(x[:1]) if weights else x[:1]
            return jnp.concatenate([x, jnp.repeat(fill, rows - x.shape[0], axis=0)])

        return jax.jit(cut_or_pad, out_shardings=want.sharding)(x)

    return state.replace(
        peer_params=jax.tree.map(
            lambda x, w: fit(x, w, False), state.peer_params, target.peer_params
        ),
        peer_weights=fit(state.peer_weights, target.peer_weights, True),
    )


def _check_slot_layout(where: Path, abstract: Any, stored: int, wanted: int) -> None:
    """Fails, naming the layout, if leaves besides the slots' depend on it (evolutionary)."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(where / "state")
    except Exception:
        return
    tree = getattr(metadata, "tree", metadata)
    server = tree.get("server_state") if isinstance(tree, dict) else None
    saved = sorted(tuple(x.shape) for x in jax.tree.leaves(server) if hasattr(x, "shape"))
    here = sorted(tuple(x.shape) for x in jax.tree.leaves(abstract.server_state))
    if server is not None and saved != here:
        raise CheckpointError(
            f"checkpoint {str(where)!r} was written with {stored} participant slots (the "
            f"participants padded to a multiple of its device count) and this process has "
            f"{wanted}; the strategy keeps server state per slot, so restore it with a device "
            f"count that gives {stored} slots (--host-devices)"
        )


def drop_closed_loop_callbacks() -> None:
    """Installs (once) an unraisable-exception hook that drops tensorstore's late callbacks.

    When one read or write of a restore or save fails (a damaged manifest, a full
    disk), orbax's `asyncio.run` ends and closes its event loop while tensorstore's
    other operations are still in flight; each of them then completes into the
    closed loop (`call_soon_threadsafe`), and Python prints a `RuntimeError: Event
    loop is closed` traceback per leaf before the run's one-line error. Those
    callbacks have nothing left to report; every other unraisable exception goes to
    the hook that was installed before.
    """
    if getattr(sys.unraisablehook, "_jfedrl_drops_closed_loop", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook._jfedrl_drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _closed_loop_callback(error: BaseException | None, tb: Any) -> bool:
    """A `RuntimeError('Event loop is closed')` raised by asyncio's own closed check."""
    if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(
        os.path.join("asyncio", "base_events.py")
    )
