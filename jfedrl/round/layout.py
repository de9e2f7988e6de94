"""Where the clients live: the device mesh, the padded participant axis, placements.

A round's participant axis is padded to a multiple of the device count so it
shards evenly over the 1-D `clients` mesh; the padding slots repeat a real
client's work and are masked out and dropped. `ClientLayout` holds these static
choices so the round's math never needs to know how many devices run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from jfedrl.algorithms.base import Reference
from jfedrl.round.state import FedState, put_rows, take_rows


@dataclass(frozen=True)
class ClientLayout:
    """The static layout of the clients over the devices for one simulator."""

    num_clients: int
    num_participants: int
    """K, the real participants per round."""
    mesh: Mesh | None = None
    """A 1-D `clients` mesh over every device (of every process), or None on one device."""
    multiprocess: bool = False
    """The mesh spans several processes (`jfedrl.run.distributed`): the state's placement is
    then explicit (`state_shardings`), so each process holds only its own shards."""

    @property
    def padded_participants(self) -> int:
        """Participants per round rounded up to a multiple of the device count."""
        devices = 1 if self.mesh is None else self.mesh.size
        return -(-self.num_participants // devices) * devices

    @property
    def everyone(self) -> bool:
        """True if every client trains every round, unpadded.

        The participants' ids are then `arange(C)`: the gather of their states and the
        scatter back are identities, and the round skips them (at trace time; same results).
        """
        return self.num_participants == self.num_clients == self.padded_participants

    def pad(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The K sampled `ids` padded to P slots, and the `[P]` mask of the real ones.

        Padding slots repeat a real client's work; their results are masked and dropped.
        """
        padding = self.padded_participants - self.num_participants
        valid = jnp.arange(self.padded_participants) < self.num_participants
        ids = jnp.concatenate([ids, jnp.full((padding,), ids[0], ids.dtype)])
        return ids, valid

    def take_participants(self, tree: Any, ids: jax.Array) -> Any:
        """The participants' rows of a stacked tree (the tree itself when `everyone`)."""
        return tree if self.everyone else take_rows(tree, ids)

    def scatter_clients(
        self, all_clients: Any, ids: jax.Array, valid: jax.Array, clients: Any
    ) -> Any:
        """Every client's state after the round: the participants' rows replaced."""
        if self.everyone:
            return clients
        # Padding slots point past the last client and are dropped by the scatter.
        return put_rows(all_clients, jnp.where(valid, ids, self.num_clients), clients)

    def state_shardings(self, state: Any) -> Any:
        """Where each leaf of `state` (arrays or shape structs) lives on the mesh.

        The clients' states and env params are split over the `clients` axis when the
        client count is a multiple of the device count (else replicated, as is the
        rest: global params, server state, round, key), so a process holds and
        builds only its own devices' clients. None on one device.
        """
        if self.mesh is None:
            return None
        replicated = NamedSharding(self.mesh, PartitionSpec())
        split = NamedSharding(self.mesh, PartitionSpec("clients"))
        even = self.num_clients % self.mesh.size == 0

        def by_client(x):
            return split if even and x.ndim >= 1 and x.shape[0] == self.num_clients else replicated

        shardings = jax.tree.map(lambda _: replicated, state)
        return shardings.replace(
            clients=jax.tree.map(by_client, state.clients),
            env_params=jax.tree.map(by_client, state.env_params),
        )

    def with_shardings(self, shapes: FedState) -> FedState:
        """`shapes` (of a state) as shape structs carrying this layout's shardings."""
        if self.mesh is None:
            shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), shapes)
        else:
            shardings = self.state_shardings(shapes)
        return jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            shapes,
            shardings,
        )

    def place_state(self, state: FedState) -> FedState:
        """Constrains `state` to `state_shardings` on a mesh (one device: nothing to do).

        A fixed layout lets a block and the evaluation be compiled from the state's
        shapes before the state exists (`InProcessRunner.compile_ahead`).
        """
        if self.mesh is None:
            return state
        return jax.lax.with_sharding_constraint(state, self.state_shardings(state))

    def replicate(self, tree: Any) -> Any:
        """Constrains `tree` to every device across processes, so any host can read it."""
        if not self.multiprocess:
            return tree
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, PartitionSpec()))

    def shard_clients(self, tree: Any) -> Any:
        """Constrains the leading (client) axis of every leaf to the `clients` mesh axis."""
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec("clients"))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    def shard_training(self, train: Callable, stacked_reference: bool) -> Callable:
        """`train(keys, clients, env_params, reference, num_updates)` split over the mesh.

        Each device trains its own slice of the participants (`shard_map`); the
        broadcast reference is whole on every device unless it is stacked per client
        (staleness). The metrics `[local_updates, P]` are split on their client axis.
        On one device `train` runs as it is.
        """
        if self.mesh is None:
            return train
        split, whole = PartitionSpec("clients"), PartitionSpec()
        reference_specs = Reference(split if stacked_reference else whole, whole, whole)
        return jax.shard_map(
            train,
            mesh=self.mesh,
            in_specs=(split, split, split, reference_specs, split),
            out_specs=(split, PartitionSpec(None, "clients")),
            check_vma=False,
        )
