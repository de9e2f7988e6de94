"""The checks of a whole run configuration, before anything is written or compiled.

`validate` is the one pass: every section, then each registered component's own
checks (environment, algorithm, strategy, executor). Every error is a
`ConfigError` that names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses

import envs
from envs.registry import UnknownName, did_you_mean
from jfedrl import algorithms, personal, plugins, strategies
from jfedrl.attacks.checks import validate_attack
from jfedrl.config import (
    REJECTED_AGGREGATE_ACTIONS,
    Config,
    DistributedConfig,
    EnvConfig,
    FederationConfig,
    holdout_clients,
    training_clients,
)
from jfedrl.schema.checks import (
    ConfigError,
    require,
    require_choice,
    require_finite,
    require_int32,
    require_positive,
    require_range,
)


def validate(config: Config) -> Config:
    """Checks every section without writing or compiling anything; returns config.

    Registry names are checked against the live registries, so a plugin that
    registers a new environment, algorithm, strategy or executor is accepted;
    then each registered component runs its own checks.
    """
    require_finite("", config)
    rule = "in [0, 2**32) (a JAX key holds 32 bits: other seeds repeat one of these)"
    require(0 <= config.seed < 2**32, "seed", rule, config.seed)
    for section in dataclasses.fields(config):  # the seed's bound is its own
        if section.name != "seed":
            require_int32(section.name, getattr(config, section.name))
    validate_env(config.env, config.federation.num_clients)
    try:
        algorithm = algorithms.get(config.algo.name)
        strategy = strategies.get(config.strategy.name)
    except UnknownName as error:
        raise ConfigError(str(error)) from None
    executor = plugins.executor(config.offload.executor)
    require_choice("offload.quantize", config.offload.quantize, ("none", "float16", "int8"))
    _validate_federation(config.federation)
    log = config.log
    require_positive("log.rounds_per_block", log.rounds_per_block)
    require_positive("log.eval_episodes", log.eval_episodes)
    require_choice("log.eval_personal", log.eval_personal, ("auto", "on", "off"))
    require_positive("log.checkpoint_every", log.checkpoint_every)
    require_positive("log.keep_checkpoints", log.keep_checkpoints)
    offload = config.offload
    require_positive("offload.shards", offload.shards)
    if offload.shards > config.federation.num_clients:
        raise ConfigError(
            f"offload.shards: {offload.shards} exceeds "
            f"federation.num_clients={config.federation.num_clients}"
        )
    require_positive("offload.max_retries", offload.max_retries, strict=False)
    require_positive("offload.state_sync_rounds", offload.state_sync_rounds, strict=False)
    clip = config.strategy.clip_update_norm
    require(clip >= 0, "strategy.clip_update_norm", ">= 0 (0: off)", clip)
    algorithm.check(config)
    _with_holdout(config.federation, strategy.check, config)
    _with_holdout(config.federation, personal.check, config)
    validate_attack(config)
    executor.validate(config)
    validate_distributed(config)
    return config


def validate_distributed(config: Config) -> None:
    """The `distributed` section; pure, so the CLI checks it before JAX starts."""
    dist = config.distributed
    if not dist.enabled:
        for name in ("coordinator", "num_processes", "process_id"):
            if getattr(dist, name) != getattr(DistributedConfig, name):
                raise ConfigError(
                    f"distributed.{name}: set, but distributed.enabled is false (add --distributed)"
                )
        return
    if dist.coordinator:
        host, _, port = dist.coordinator.rpartition(":")
        rule = "HOST:PORT with PORT in [1, 65535] (empty: auto-detected)"
        require(
            bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
            "distributed.coordinator",
            rule,
            dist.coordinator,
        )
    require_positive("distributed.num_processes", dist.num_processes, strict=False)
    require(
        dist.process_id >= -1, "distributed.process_id", ">= 0 (-1: auto-detected)", dist.process_id
    )
    if dist.num_processes and dist.process_id >= dist.num_processes:
        rule = f"in [0, distributed.num_processes={dist.num_processes})"
        require(False, "distributed.process_id", rule, dist.process_id)
    require_positive("distributed.timeout", dist.timeout)
    if config.offload.executor != "inprocess":
        raise ConfigError(
            f"offload.executor: {config.offload.executor!r} cannot run under --distributed "
            "(the processes share the in-process simulator); allowed: inprocess"
        )


def _validate_federation(fed: FederationConfig) -> None:
    """Clients, rounds, participation, system heterogeneity, asynchrony, schedule horizon."""
    require_choice("federation.sampling", fed.sampling, ("uniform", "weighted"))
    require(fed.num_clients >= 1, "federation.num_clients", ">= 1", fed.num_clients)
    require_positive("federation.rounds", fed.rounds)
    require_positive("federation.local_updates", fed.local_updates)
    require_positive("federation.participation", fed.participation)
    _validate_holdout(fed)
    if fed.participation > fed.num_clients:
        raise ConfigError(
            f"federation.participation: {fed.participation} exceeds "
            f"federation.num_clients={fed.num_clients}"
        )
    if fed.participation > training_clients(fed):
        raise ConfigError(
            f"federation.participation: {fed.participation:g} participants exceed the "
            f"{training_clients(fed)} training clients left by federation.holdout"
            f"{'_fraction' if fed.holdout_fraction else ''} (federation.num_clients="
            f"{fed.num_clients} minus {holdout_clients(fed)} held out)"
        )
    require_range("federation.min_participation", fed.min_participation, 0, 1)
    require_choice(
        "federation.on_rejected_aggregate", fed.on_rejected_aggregate, REJECTED_AGGREGATE_ACTIONS
    )
    require_choice("federation.local_updates_dist", fed.local_updates_dist, ("fixed", "uniform"))
    low = fed.local_updates_min
    rule = f"in [1, local_updates={fed.local_updates}]"
    require(1 <= low <= fed.local_updates, "federation.local_updates_min", rule, low)
    require_range("federation.straggler_prob", fed.straggler_prob, 0, 1)
    require_range("federation.dropout_prob", fed.dropout_prob, 0, 1, high_open=True)
    require_positive("federation.staleness", fed.staleness, strict=False)
    require_positive("federation.staleness_decay", fed.staleness_decay, strict=False)
    require_positive("federation.schedule_rounds", fed.schedule_rounds, strict=False)
    restarts, previous_end = fed.schedule_restarts, 0
    rule = "pairs start, end of rounds with 0 <= start < end, each start >= the previous end"
    require(len(restarts) % 2 == 0, "federation.schedule_restarts", rule, list(restarts))
    for start, end in zip(restarts[0::2], restarts[1::2], strict=True):
        ok = previous_end <= start < end
        require(ok, "federation.schedule_restarts", rule, list(restarts))
        previous_end = end


def _validate_holdout(fed: FederationConfig) -> None:
    """The held-out clients: a count or a fraction, leaving at least one training client."""
    require_positive("federation.holdout", fed.holdout, strict=False)
    require_range("federation.holdout_fraction", fed.holdout_fraction, 0, 1, high_open=True)
    if fed.holdout and fed.holdout_fraction:
        raise ConfigError(
            "federation.holdout_fraction: set together with federation.holdout; give one of them"
        )
    if training_clients(fed) < 1:
        field = "holdout_fraction" if fed.holdout_fraction else "holdout"
        raise ConfigError(
            f"federation.{field}: holds out {holdout_clients(fed)} of the "
            f"federation.num_clients={fed.num_clients} clients; at least one must train"
        )


def _with_holdout(fed: FederationConfig, check, config: Config) -> None:
    """Runs `check(config)`; with held-out clients, its error also names the holdout field.

    A rule's needs (Krum's n > 2f + 2, a population size) count the training clients, so
    a holdout may be what broke them.
    """
    try:
        check(config)
    except ConfigError as error:
        if not holdout_clients(fed):
            raise
        field = "holdout_fraction" if fed.holdout_fraction else "holdout"
        raise ConfigError(
            f"{error} (federation.{field} holds out {holdout_clients(fed)} of the "
            f"{fed.num_clients} clients, leaving {training_clients(fed)} to train)"
        ) from None


def validate_env(config: EnvConfig, num_clients: int) -> None:
    """Every check of the `env` section for `num_clients` clients; builds no environment.

    Raises:
        ConfigError: naming the field (`env.name`, `env.variant`, `env.ranges`,
            `env.values`, `env.drift_params`, ...) and the allowed values.
    """
    require_choice("env.name", config.name, envs.names())
    entry = envs.spec(config.name)
    if config.backend and config.backend not in entry.backends:
        allowed = ", ".join(entry.backends) if entry.backends else "'' (not a Brax env)"
        raise ConfigError(
            f"env.backend: {config.backend!r} is not allowed for {config.name}; allowed: {allowed}."
            + did_you_mean(config.backend, entry.backends)
        )
    require_positive("env.max_episode_steps", config.max_episode_steps, strict=False)
    require(config.drift_period >= 1, "env.drift_period", ">= 1", config.drift_period)
    try:
        envs.check_overrides(config.name, config.variant, config.ranges, config.values, num_clients)
        envs.drift.resolve_drift_params(config.name, config.drift, config.drift_params)
        envs.check_disturbance(
            config.name, config.disturbance, config.disturbance_prob, config.disturbance_scale
        )
    except envs.ParamError as error:
        raise ConfigError(f"env.{error.field}: {error.message}") from None
