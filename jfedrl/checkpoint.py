"""Orbax checkpoints of the whole simulator state, plus host-side metadata.

A checkpoint at round r holds the `FedState` after r rounds (global params,
server state, every client's algorithm and environment state, the run key)
and a small JSON record (wall seconds, env steps, versions). Orbax writes to a
temporary folder and renames it, so a crash mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match the config."""


class Checkpointer:
    """Saves and restores `(state, meta)` pairs under `directory/<round>/`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def rounds(self) -> list[int]:
        """Rounds with a finished checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_round(self) -> int | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def save(self, round_index: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves synchronously: when this returns, the checkpoint is on disk."""
        self._manager.save(
            round_index,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

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
        return restored.state, dict(restored.meta or {})

    def close(self) -> None:
        self._manager.close()


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
