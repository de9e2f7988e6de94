"""The federated round, jitted end to end.

One round: sample participants (a static count, so shapes never change),
broadcast the global params, run `local_updates` vmapped local updates per
client (`lax.scan`), validate the updates, aggregate with the strategy and
scatter the clients' states back. Rounds run in `lax.scan` blocks; the host
works only between blocks.

Randomness: the round key is `fold_in(run_key, round)`, so a run resumed from
round k draws exactly what the uninterrupted run draws.

System heterogeneity (per-client local updates, stragglers, drop-outs) keeps
the static scan of `local_updates` steps and masks each client's surplus steps;
asynchrony (`federation.staleness`) keeps the last k + 1 global params in a ring
buffer in the state; per-component aggregation periods (RLlab FRL's TD3) select
components with `jnp.where` on the round counter. None of them recompiles per
round, and with all three off the round is exactly the synchronous one.

The pieces live beside this module: `state` (the state and a round's inputs),
`local` (participants and local training), `layout` (mesh and padding),
`screening`, `aggregation` and `metrics` (the three steps of `aggregate`).
`Simulator` binds them to one config and jits the round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jfedrl import algorithms, attacks, personal, strategies
from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.attacks.round import (
    AttackChoice,
    attack_updates,
    attacked_envs,
    round_env_params,
)
from jfedrl.config import Config, participants_per_round, training_clients
from jfedrl.round.aggregation import component_where, selective, strategy_step
from jfedrl.round.environment import ClientEnvs, make_client_envs
from jfedrl.round.layout import ClientLayout
from jfedrl.round.local import (
    STALENESS_STREAM,
    SYSTEM_STREAM,
    client_local_updates,
    local_training,
    sample_participants,
    stragglers_and_dropouts,
)
from jfedrl.round.metrics import evaluate_clients, round_metrics
from jfedrl.round.screening import screen_updates
from jfedrl.round.state import FedState, RoundInputs, initial_history, take_rows
from jfedrl.strategies.base import Strategy
from jfedrl.validation import validate


@dataclass(frozen=True, eq=False)
class Simulator:
    """A compiled-once federated simulator for one config.

    Hashed by identity (`eq=False`), so its jitted methods compile once per
    simulator and `self` is a static argument.
    """

    config: Config
    envs: ClientEnvs
    algorithm: Algorithm
    strategy: Strategy
    num_participants: int
    mesh: Mesh | None = None
    """A 1-D `clients` mesh over every device (of every process), or None on one device."""
    multiprocess: bool = False
    """The mesh spans several processes (`jfedrl.run.distributed`): the state's placement is
    then explicit (`ClientLayout.state_shardings`), so each process holds only its own shards."""
    attack_choice: Any = None
    """A sweep group's attacks compiled as one program (`jfedrl.attacks.round.AttackChoice`,
    `make_simulator`'s `attack_choice`), or None: the config's own attack."""

    @cached_property
    def layout(self) -> ClientLayout:
        """The clients' static layout over the devices, from the fields above."""
        return ClientLayout(self.num_clients, self.num_participants, self.mesh, self.multiprocess)

    @property
    def num_clients(self) -> int:
        return self.config.federation.num_clients

    @property
    def training_clients(self) -> int:
        """The clients that may train: the first `num_clients - holdout` (held-out clients
        are the last ones; `jfedrl.round.evaluation`).
        """
        return training_clients(self.config.federation)

    @property
    def padded_participants(self) -> int:
        """Participants per round rounded up to a multiple of the device count."""
        return self.layout.padded_participants

    @property
    def everyone(self) -> bool:
        """True if every client trains every round, unpadded (`ClientLayout.everyone`)."""
        return self.layout.everyone

    @property
    def env_steps_per_round(self) -> int:
        """Environment steps of a round with every participant running `local_updates`.

        Under system heterogeneity this is the most; `env_steps_taken` logs the real count.
        """
        return (
            self.num_participants
            * self.config.federation.local_updates
            * self.algorithm.env_steps_per_update
        )

    @property
    def heterogeneous(self) -> bool:
        """True if participants may run unequal numbers of local updates."""
        fed = self.config.federation
        return fed.local_updates_dist != "fixed" or fed.straggler_prob > 0 or fed.dropout_prob > 0

    @property
    def periodic(self) -> bool:
        """True if a params leaf is aggregated less often than every round, or never.

        Periods above 1 (TD3) or local layers (personalization).
        """
        return selective(self.algorithm.aggregation_periods, self.algorithm.local_params)

    def client_local_updates(self, run_key: jax.Array, round_index: jax.Array) -> jax.Array:
        """Every client's local updates in round `round_index`, `[C]` int32.

        Drawn from `federation.local_updates_dist` before stragglers and drop-outs
        (`jfedrl.round.local.client_local_updates`).
        """
        fed = self.config.federation
        return client_local_updates(
            run_key,
            round_index,
            num_clients=self.num_clients,
            dist=fed.local_updates_dist,
            local_updates=fed.local_updates,
            local_updates_min=fed.local_updates_min,
            redraw=fed.local_updates_redraw,
        )

    @partial(jax.jit, static_argnums=(0,))
    def init(self, key: jax.Array) -> FedState:
        """Initial state: shared global params, per-client env/optimiser state."""
        key_params, key_clients, key_env, key_run = jax.random.split(key, 4)
        env_params = self.envs.client_params(key_env)
        # Every client starts from the same global params (one init key), with its own env.
        client_keys = jax.random.split(key_clients, self.num_clients)
        template = self.algorithm.init(key_params, take_rows(env_params, 0))
        global_params = self.algorithm.get_params(template)
        clients = jax.vmap(self.algorithm.init)(client_keys, env_params)
        clients = jax.vmap(self.algorithm.set_params, in_axes=(0, None))(clients, global_params)
        if self.algorithm.needs_peers:
            peers = jax.tree.map(lambda x: jnp.stack([x] * self.padded_participants), global_params)
        else:
            peers = ()
        state = FedState(
            global_params=global_params,
            server_state=self.strategy.init(global_params),
            clients=clients,
            env_params=env_params,
            peer_params=peers,
            peer_weights=jnp.where(
                jnp.arange(self.padded_participants) < self.num_participants,
                1.0 / self.num_participants,
                0.0,
            ),
            round=jnp.asarray(0, jnp.int32),
            key=key_run,
            global_history=initial_history(global_params, self.config.federation.staleness),
        )
        return self.layout.place_state(state)

    def abstract_state(self, key: jax.Array) -> FedState:
        """The shapes, dtypes and shardings of `init(key)`: a checkpoint's restore target.

        The shardings are this process layout's, so a checkpoint written by another
        layout (two processes, restored by one) is laid out afresh.
        """
        return self.layout.with_shardings(jax.eval_shape(self.init, key))

    def current_env_params(self, state: FedState, round_index: jax.Array) -> Any:
        """The clients' env params in round `round_index`: drift applied to the base."""
        drift_key = jax.random.split(state.key)[1]  # a stream apart from the round keys
        return self.envs.drift(drift_key, state.env_params, round_index)

    def begin_round(self, state: FedState) -> RoundInputs:
        """Samples the participants and broadcasts the global params to them.

        Under system heterogeneity it also draws each participant's local updates;
        with staleness, each participant's start params from the ring buffer; with
        aggregation periods, a component is broadcast only in the rounds that follow
        its aggregation (else the client keeps its own copy).
        """
        fed = self.config.federation
        key = jax.random.fold_in(state.key, state.round)
        key_sample, key_clients, key_aggregate = jax.random.split(key, 3)
        env_params = self.current_env_params(state, state.round)
        env_params = round_env_params(
            self.config, state.key, env_params, state.round, self.attack_choice
        )
        counts = self.client_local_updates(state.key, state.round) if self.heterogeneous else None
        if counts is None:
            steps = jnp.full((self.num_clients,), float(self.algorithm.env_steps_per_update))
        else:
            steps = counts.astype(jnp.float32) * float(self.algorithm.env_steps_per_update)
        steps = steps[: self.training_clients]  # held-out clients are never sampled
        sampling_weights = steps / steps.sum() if fed.sampling == "weighted" else None
        ids = sample_participants(
            key_sample, self.training_clients, self.num_participants, sampling_weights
        )
        layout = self.layout
        ids, valid = layout.pad(ids)
        if counts is None:
            num_updates = jnp.full(ids.shape, fed.local_updates, jnp.int32)
        else:
            system_key = jax.random.fold_in(key, SYSTEM_STREAM)
            num_updates = stragglers_and_dropouts(
                system_key, counts[ids], fed.straggler_prob, fed.dropout_prob
            )
        before = layout.shard_clients(layout.take_participants(state.clients, ids))
        staleness = jnp.zeros(ids.shape, jnp.int32)
        start_params = None
        broadcast, broadcast_axis = state.global_params, None
        if fed.staleness > 0:
            oldest = jnp.minimum(fed.staleness, state.round)
            stale_key = jax.random.fold_in(key, STALENESS_STREAM)
            staleness = jax.random.randint(stale_key, ids.shape, 0, oldest + 1, jnp.int32)
            slots = (state.round - staleness) % (fed.staleness + 1)
            start_params = layout.shard_clients(take_rows(state.global_history, slots))
            broadcast, broadcast_axis = start_params, 0
        if self.periodic:
            local = jax.vmap(self.algorithm.get_params)(before)
            periods = self.algorithm.aggregation_periods
            broadcast = component_where(
                periods, state.round, broadcast, local, self.algorithm.local_params
            )
            broadcast_axis = 0
        if self.strategy.local_only:  # no federation: every client keeps its own params
            broadcast, broadcast_axis = jax.vmap(self.algorithm.get_params)(before), 0
        clients = jax.vmap(self.algorithm.set_params, in_axes=(0, broadcast_axis))(
            before, broadcast
        )
        reference_params = state.global_params if start_params is None else start_params
        return RoundInputs(
            ids=ids,
            valid=valid,
            before=before,
            clients=clients,
            env_params=layout.shard_clients(layout.take_participants(env_params, ids)),
            client_keys=layout.shard_clients(
                layout.take_participants(jax.random.split(key_clients, self.num_clients), ids)
            ),
            reference=Reference(reference_params, state.peer_params, state.peer_weights),
            key_aggregate=key_aggregate,
            num_updates=num_updates,
            staleness=staleness,
            start_params=start_params,
        )

    def round_step(self, state: FedState) -> tuple[FedState, dict[str, jax.Array]]:
        """One federated round (pure; jitted inside `run_block`)."""
        inputs = self.begin_round(state)
        stacked_reference = inputs.start_params is not None

        # train(keys, clients, env_params, reference, num_updates), split over the mesh.
        train = partial(
            local_training,
            self.algorithm,
            self.config.federation.local_updates,
            stacked_reference=stacked_reference,
        )
        clients, local_metrics = self.layout.shard_training(train, stacked_reference)(
            inputs.client_keys,
            inputs.clients,
            inputs.env_params,
            inputs.reference,
            inputs.num_updates if self.heterogeneous else None,
        )
        return self.aggregate(state, inputs, clients, local_metrics)

    def aggregate(
        self,
        state: FedState,
        inputs: RoundInputs,
        clients: Any,
        local_metrics: dict[str, jax.Array],
    ) -> tuple[FedState, dict[str, jax.Array]]:
        """Validates the participants' updates, aggregates, scatters states back.

        Under an update attack the Byzantine participants' params are rewritten first
        (`jfedrl.attacks.round.attack_updates`). `screen_updates` masks, clips and
        rebases the updates, `strategy_step` aggregates them (rejecting a non-finite
        aggregate) and `round_metrics` reports the round; the offload runner calls
        this after its own training.

        Args:
            state: the state the round started from.
            inputs: what `begin_round` produced for this round.
            clients: the participants' states after local training (leading axis K).
            local_metrics: the participants' metrics, shape `[local_updates, K]`.
                A client whose returned state is not finite is masked out.

        Returns:
            The state after the round and the round's metrics.
        """
        fed = self.config.federation
        attacking, attack_metrics = None, {}
        attacked = self.config.attack.name != attacks.NONE or self.attack_choice is not None
        if attacked:  # Byzantine participants (DESIGN.md, 8)
            clients, attacking, attack_metrics = attack_updates(
                self.config, self.algorithm, state, inputs, clients, self.attack_choice
            )
        screened = screen_updates(
            state.global_params,
            inputs,
            clients,
            local_metrics,
            get_params=self.algorithm.get_params,
            env_steps_per_update=self.algorithm.env_steps_per_update,
            heterogeneous=self.heterogeneous,
            clip_update_norm=self.config.strategy.clip_update_norm,
            staleness_decay=fed.staleness_decay,
        )
        new_state, aggregate_ok, strategy_metrics = strategy_step(
            self.strategy,
            state,
            screened.safe_params,
            screened.info,
            inputs.key_aggregate,
            periods=self.algorithm.aggregation_periods,
            staleness=fed.staleness,
            needs_peers=self.algorithm.needs_peers,
            local=self.algorithm.local_params,
        )
        new_state = new_state.replace(
            clients=self.layout.scatter_clients(
                state.clients, inputs.ids, inputs.valid, screened.clients
            ),
            round=state.round + 1,
        )
        metrics = round_metrics(
            inputs,
            screened,
            aggregate_ok,
            local_metrics,
            strategy_metrics,
            num_participants=self.num_participants,
            padded_participants=self.padded_participants,
            local_updates=fed.local_updates,
            staleness=fed.staleness,
            attacking=attacking,
        )
        return new_state, {**metrics, **attack_metrics}

    @partial(jax.jit, static_argnums=(0, 2), donate_argnums=(1,))
    def run_block(self, state: FedState, num_rounds: int):
        """`num_rounds` rounds in one `lax.scan`; metrics stacked on axis 0."""
        state, metrics = jax.lax.scan(
            lambda s, _: self.round_step(s), state, None, length=num_rounds
        )
        return self.layout.place_state(state), self.layout.replicate(metrics)

    def personal_params(self, state: FedState, key: jax.Array | None = None) -> Any:
        """Each client's personalized policy params, `[C, ...]` (`jfedrl.personal`)."""
        return personal.personal_params(self, state, key)

    @partial(jax.jit, static_argnums=(0, 3))
    def evaluate(self, state: FedState, key: jax.Array, local: bool = False) -> jax.Array:
        """Deterministic policy on every client's env: returns `[C, episodes]`.

        The global params on every client or, with `local`, each client's own params
        (its state after its last local training); the keys are the same either way.
        """
        keys = jax.random.split(key, self.num_clients)
        last_round = jnp.maximum(state.round - 1, 0)
        env_params = self.current_env_params(state, last_round)
        if local:
            params, params_axis = jax.vmap(self.algorithm.get_params)(state.clients), 0
        else:
            params, params_axis = state.global_params, None
        returns = evaluate_clients(
            self.envs.env,
            self.algorithm.act,
            keys,
            env_params,
            params,
            params_axis=params_axis,
            episodes=self.config.log.eval_episodes,
            max_steps=self.envs.max_episode_steps,
        )
        return self.layout.replicate(returns)


def make_simulator(config: Config, attack_choice: tuple[str, ...] = ()) -> Simulator:
    """Validates `config` and builds the simulator (nothing is compiled yet).

    Args:
        config: the run's config.
        attack_choice: a sweep group's attacks, compiled as one program and picked per
            run by a traced index (`jfedrl.attacks.round.AttackChoice`); empty: the
            config's own attack.
    """
    validate(config)
    choice = AttackChoice(tuple(attack_choice)) if attack_choice else None
    client_envs = make_client_envs(config.env, config.federation.num_clients)
    client_envs = attacked_envs(config, client_envs, choice)
    algorithm = personal.wrap_algorithm(
        config,
        algorithms.make(config, client_envs.env, client_envs.default_params),
        partial(algorithms.make, env=client_envs.env, env_params=client_envs.default_params),
        client_envs,
    )
    devices = jax.devices()  # every process's devices under jax.distributed
    mesh = Mesh(np.array(devices), ("clients",)) if len(devices) > 1 else None
    participants = participants_per_round(config.federation)
    padded = -(-participants // len(devices)) * len(devices)
    # The strategy sees the padded client axis (padding is masked).
    strategy = personal.wrap_strategy(config, strategies.make(config.strategy, num_clients=padded))
    return Simulator(
        config=config,
        envs=client_envs,
        algorithm=algorithm,
        strategy=strategy,
        num_participants=participants,
        mesh=mesh,
        multiprocess=jax.process_count() > 1,
        attack_choice=choice,
    )
