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
buffer in the state; per-component aggregation periods (seed 001's TD3) select
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

from jfedrl import algorithms, strategies
from jfedrl.algorithms import Algorithm, Reference
from jfedrl.config import Config, participants_per_round
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
from jfedrl.round.state import (
    FedState,
    RoundInputs,
    inexact_finite,
    initial_history,
    take_rows,
    tree_all_finite,
    where_clients,
)
from jfedrl.round.xla_cpu import unroll_threefry_on_cpu
from jfedrl.strategies import ClientInfo, Strategy
from jfedrl.strategies.dp import clip_factors
from jfedrl.tree import tree_where
from jfedrl.validation import validate

unroll_threefry_on_cpu()  # bit-identical draws; see jfedrl/round/xla_cpu.py


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

    @cached_property
    def layout(self) -> ClientLayout:
        """The clients' static layout over the devices, from the fields above."""
        return ClientLayout(self.num_clients, self.num_participants, self.mesh, self.multiprocess)

    @property
    def num_clients(self) -> int:
        return self.config.federation.num_clients

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
        """True if some params component is aggregated less often than every round."""
        return any(period > 1 for _, period in self.algorithm.aggregation_periods)

    def client_local_updates(self, run_key: jax.Array, round_index: jax.Array) -> jax.Array:
        """Every client's local updates in round `round_index`, `[C]` int32.

        Drawn from `federation.local_updates_dist`, before stragglers and drop-outs:
        once per client for the run (from `run_key`, the state's key) or, with
        `local_updates_redraw`, from the round key.
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

    def component_where(self, round_index: jax.Array, new: Any, old: Any) -> Any:
        """Params whose periodic components come from `new` where due, else from `old`.

        A component with period p is due when `round_index % p == 0`; components
        without a period always come from `new`.
        """
        out = dict(new)
        for name, period in self.algorithm.aggregation_periods:
            out[name] = tree_where(round_index % period == 0, new[name], old[name])
        return out

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
        counts = self.client_local_updates(state.key, state.round) if self.heterogeneous else None
        if counts is None:
            steps = jnp.full((self.num_clients,), float(self.algorithm.env_steps_per_update))
        else:
            steps = counts.astype(jnp.float32) * float(self.algorithm.env_steps_per_update)
        sampling_weights = steps / steps.sum() if fed.sampling == "weighted" else None
        ids = sample_participants(
            key_sample, self.num_clients, self.num_participants, sampling_weights
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
            broadcast = self.component_where(state.round, broadcast, local)
            broadcast_axis = 0
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

        def train(keys, clients, env_params, reference, num_updates):
            return local_training(
                self.algorithm,
                self.config.federation.local_updates,
                keys,
                clients,
                env_params,
                reference,
                num_updates=num_updates,
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

        A client that dropped out or returned non-finite params is masked out and
        keeps its state from before the round. A non-finite aggregate is rejected:
        the global params and server state stay those from before the round
        (metric `aggregate_rejected`; `federation.on_rejected_aggregate` decides
        whether the run goes on). With staleness, an update is measured
        from the client's stale start params and applied to the current global params
        (as A3C applies stale gradients), scaled by (1 + s)^-a with
        `federation.staleness_decay` a (FedAsync, Xie et al. 2019).

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
        ids, before, key = inputs.ids, inputs.before, inputs.key_aggregate
        client_params = jax.vmap(self.algorithm.get_params)(clients)
        finite = jnp.logical_and(jax.vmap(tree_all_finite)(client_params), inputs.valid)
        returned = inputs.valid
        if self.heterogeneous:
            returned = jnp.logical_and(inputs.valid, inputs.num_updates > 0)
            finite = jnp.logical_and(finite, returned)
        start = state.global_params if inputs.start_params is None else inputs.start_params
        deltas = jax.tree.map(lambda c, g: c - g, client_params, start)
        max_norm = self.config.strategy.clip_update_norm
        clip_scale, update_norms = clip_factors(client_params, start, max_norm)
        scale = None
        if max_norm > 0:
            scale = clip_scale
            client_params = jax.tree.map(
                lambda g, d: g + d * scale.reshape((-1,) + (1,) * (d.ndim - 1)),
                state.global_params,
                deltas,
            )
        if inputs.start_params is not None:
            # A stale update moves the current global params, scaled by the FedAsync decay;
            # a fresh one (s = 0) is kept exactly as the synchronous round keeps it.
            factor = (1.0 + inputs.staleness.astype(jnp.float32)) ** -fed.staleness_decay
            factor = factor if scale is None else factor * scale
            rebased = jax.tree.map(
                lambda g, d: g + d * factor.reshape((-1,) + (1,) * (d.ndim - 1)),
                state.global_params,
                deltas,
            )
            client_params = where_clients(inputs.staleness > 0, rebased, client_params)
        # Rejected clients keep the state they had before the round.
        clients = where_clients(finite, clients, before)
        if self.heterogeneous:
            last_step = jnp.maximum(inputs.num_updates - 1, 0)[None]

            def final(value):
                return jnp.take_along_axis(value, last_step, axis=0)[0]
        else:

            def final(value):
                return value[-1]

        returns = final(local_metrics["train_return"])
        local_steps = inputs.num_updates.astype(jnp.float32)
        info = ClientInfo(
            num_steps=local_steps * float(self.algorithm.env_steps_per_update),
            returns=jnp.where(finite, returns, 0.0),
            mask=finite,
            local_steps=local_steps,
        )
        safe_params = jax.tree.map(
            lambda p, g: jnp.where(finite.reshape((-1,) + (1,) * (p.ndim - 1)), p, g),
            client_params,
            state.global_params,
        )
        global_params, server_state, strategy_metrics = self.strategy.aggregate(
            state.server_state, state.global_params, safe_params, info, key
        )
        # A non-finite aggregate (an overflowing rule or server optimiser) is rejected: the
        # round keeps the previous global params and server state, and says so in its metrics.
        aggregate_ok = inexact_finite(global_params)
        global_params = tree_where(aggregate_ok, global_params, state.global_params)
        server_state = tree_where(aggregate_ok, server_state, state.server_state)
        if self.periodic:
            # A component not due after this round keeps its global params.
            global_params = self.component_where(
                state.round + 1, global_params, state.global_params
            )
        history = state.global_history
        if fed.staleness > 0:
            slot = (state.round + 1) % (fed.staleness + 1)
            history = jax.tree.map(lambda h, g: h.at[slot].set(g), history, global_params)
        peers, peer_weights = state.peer_params, state.peer_weights
        if self.algorithm.needs_peers:
            peers = safe_params
            peer_weights = strategies.normalized_weights(info.num_steps, info.mask)
        new_state = state.replace(
            global_params=global_params,
            server_state=server_state,
            clients=self.layout.scatter_clients(state.clients, inputs.ids, inputs.valid, clients),
            peer_params=peers,
            peer_weights=peer_weights,
            round=state.round + 1,
            global_history=history,
        )
        valid = jnp.maximum(finite.sum(), 1)
        masked_returns = jnp.where(finite, returns, jnp.nan)
        participants = jnp.maximum(inputs.valid.sum(), 1)
        metrics = {
            "train_return_mean": jnp.nanmean(masked_returns),
            "train_return_min": jnp.nanmin(masked_returns),
            "train_return_max": jnp.nanmax(masked_returns),
            "clients_participating": jnp.sum(inputs.valid).astype(jnp.int32),
            "clients_excluded": jnp.sum(returned & ~finite).astype(jnp.int32),
            "clients_dropped": jnp.sum(inputs.valid & ~returned).astype(jnp.int32),
            "aggregate_rejected": jnp.logical_not(aggregate_ok).astype(jnp.int32),
            "update_norm_mean": jnp.sum(jnp.where(finite, update_norms, 0.0)) / valid,
            "participants": ids[: self.num_participants],
            "local_steps_mean": jnp.sum(jnp.where(inputs.valid, local_steps, 0.0)) / participants,
            "local_steps_min": jnp.min(
                jnp.where(inputs.valid, inputs.num_updates, fed.local_updates)
            ),
            "local_steps_max": jnp.max(jnp.where(inputs.valid, inputs.num_updates, 0)),
            "env_steps_taken": jnp.sum(jnp.where(inputs.valid, info.num_steps, 0.0)),
        }
        if fed.staleness > 0:
            stale = jnp.where(inputs.valid, inputs.staleness, 0)
            metrics["staleness_mean"] = jnp.sum(stale) / participants
            metrics["staleness_max"] = jnp.max(stale)
        for name, value in local_metrics.items():
            if name not in ("train_return",):
                metrics[name] = jnp.nanmean(jnp.where(finite, final(value), jnp.nan))
        for name, value in strategy_metrics.items():
            if value.ndim >= 1 and value.shape[0] == self.padded_participants:
                value = value[: self.num_participants]  # per participant, as on one device
            metrics["strategy/" + name] = value
        return new_state, metrics

    @partial(jax.jit, static_argnums=(0, 2), donate_argnums=(1,))
    def run_block(self, state: FedState, num_rounds: int):
        """`num_rounds` rounds in one `lax.scan`; metrics stacked on axis 0."""
        state, metrics = jax.lax.scan(
            lambda s, _: self.round_step(s), state, None, length=num_rounds
        )
        return self.layout.place_state(state), self.layout.replicate(metrics)

    @partial(jax.jit, static_argnums=(0, 3))
    def evaluate(self, state: FedState, key: jax.Array, local: bool = False) -> jax.Array:
        """Deterministic policy on every client's env: returns `[C, episodes]`.

        The global params on every client or, with `local`, each client's own params
        (its state after its last local training); the keys are the same either way.
        """
        episodes = self.config.log.eval_episodes
        env = self.envs.env
        max_steps = self.envs.max_episode_steps
        act = self.algorithm.act

        def episode(key, env_params, params):
            key_reset, key_steps = jax.random.split(key)
            obs, env_state = env.reset(key_reset, env_params)

            def step(carry, step_key):
                obs, env_state, total, done = carry
                action = act(params, obs)
                obs, env_state, reward, terminated, truncated, _ = env.step(
                    step_key, env_state, action, env_params
                )
                total = total + jnp.where(done, 0.0, reward)
                done = jnp.logical_or(done, jnp.logical_or(terminated, truncated))
                return (obs, env_state, total, done), None

            init = (obs, env_state, jnp.zeros(()), jnp.asarray(False))
            (_, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(key_steps, max_steps))
            return total

        def client(key, env_params, params):
            keys = jax.random.split(key, episodes)
            return jax.vmap(episode, in_axes=(0, None, None))(keys, env_params, params)

        keys = jax.random.split(key, self.num_clients)
        last_round = jnp.maximum(state.round - 1, 0)
        env_params = self.current_env_params(state, last_round)
        if local:
            params, params_axis = jax.vmap(self.algorithm.get_params)(state.clients), 0
        else:
            params, params_axis = state.global_params, None
        returns = jax.vmap(client, in_axes=(0, 0, params_axis))(keys, env_params, params)
        return self.layout.replicate(returns)


@jax.jit
def eval_views(returns: jax.Array) -> dict[str, jax.Array]:
    """The federated views of an evaluation `returns [clients, episodes]`, on the device.

    Each client's score is its mean return over its episodes. Besides the mean over
    every episode (`eval_return`), the fairness views FL papers report (Li et al.
    2020, "Fair Resource Allocation in Federated Learning"): the worst and the best
    client, the 10th percentile over clients (linear interpolation, NumPy's
    default) and the spread (population std over clients). Computed in one small
    program, so the host fetches five scalars, not a value per client.
    """
    per_client = returns.mean(axis=1)
    return {
        "eval_return": returns.mean(),
        "eval_return_min_client": per_client.min(),
        "eval_return_max_client": per_client.max(),
        "eval_return_p10": jnp.percentile(per_client, 10.0),
        "eval_return_std": per_client.std(),
    }


def make_simulator(config: Config) -> Simulator:
    """Validates `config` and builds the simulator (nothing is compiled yet)."""
    validate(config)
    client_envs = make_client_envs(config.env, config.federation.num_clients)
    algorithm = algorithms.make(config, client_envs.env, client_envs.default_params)
    devices = jax.devices()  # every process's devices under jax.distributed
    mesh = Mesh(np.array(devices), ("clients",)) if len(devices) > 1 else None
    participants = participants_per_round(config.federation)
    padded = -(-participants // len(devices)) * len(devices)
    # The strategy sees the padded client axis (padding is masked).
    strategy = strategies.make(config.strategy, num_clients=padded)
    return Simulator(
        config=config,
        envs=client_envs,
        algorithm=algorithm,
        strategy=strategy,
        num_participants=participants,
        mesh=mesh,
        multiprocess=jax.process_count() > 1,
    )
