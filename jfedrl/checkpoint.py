"""Orbax checkpoints of the whole simulator state, plus host-side metadata.

A checkpoint at round r holds the `FedState` after r rounds (global params,
server state, every client's algorithm and environment state, the run key)
and a small JSON record (wall seconds, env steps, versions). Orbax writes to a
temporary folder and renames it, so a crash mid-save leaves the previous
checkpoint intact. Saves are synchronous in this thread: a save that fails (a
full or read-only disk) raises at once, naming the checkpoint, and leaves no
background thread behind to delay the exit.

In a multi-process run (`jfedrl.distributed`) every process saves and restores
with the same arguments: each writes and reads its own shards, process 0 the
metadata, so the folder must be shared. A restore lays the arrays out as its
target's shardings say, whatever layout saved them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


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

    def restore(self, target: Any, round_index: int | None = None) -> tuple[Any, dict]:
        """Restores the state into the structure of `target` (arrays or shape structs).

        Raises:
            CheckpointError: if there is no checkpoint, or it is corrupt or its tree
                does not match `target` (e.g. a different config).
        """
        round_index = self.latest_round() if round_index is None else round_index
        if round_index is None:
            raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self._manager.restore(
                round_index,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax raises many types for damaged files
            raise CheckpointError(
                f"checkpoint {str(self.directory / str(round_index))!r} is corrupt or does "
                f"not match this run's config: {type(error).__name__}: {error}"
            ) from None
        _check_structure(restored.state, abstract, self.directory / str(round_index))
        return _on_devices(restored.state, abstract), dict(restored.meta or {})

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
