"""The run configuration: one frozen dataclass tree.

Every field can be set from YAML (nested mapping) or from the command line
(`--section.field-name value`). The tree is validated before anything is
compiled, and every error names the field and what is allowed.

The field declarations and their docstrings are the schema: docs/config.md and
`--help` are generated from them. The converter to and from YAML and flags is
`jfedrl.schema.convert`; the checks of a whole config are `jfedrl.validation`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jfedrl import algorithms, attacks, personal, strategies
from jfedrl.schema import convert as schema
from jfedrl.schema import legacy
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.fields import Facts, facts_of, param

_SYSTEM_REASON = "switches system heterogeneity on in Python"
_HOLDOUT_REASON = "sets the number of training clients (a shape)"

#: `federation.on_rejected_aggregate`: what a round with a non-finite aggregate does.
REJECTED_AGGREGATE_ACTIONS = ("warn", "stop")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment every client runs, and how clients differ."""

    name: str = param("CartPole-v1", alias="env")
    """Registered environment name (`jfedrl envs` lists them)."""
    backend: str = ""
    """Brax physics backend: `spring`, `positional`, `generalized`, `mjx` (empty:
    `spring`, the fastest on CPU; on a GPU prefer `mjx`). Only for `brax-*` envs."""
    max_episode_steps: int = 0
    """Episode time limit in steps (0: the environment's own limit)."""
    variant: str = param("default", alias="variant")
    """Client heterogeneity: `default` (all identical), `random` (each tunable param
    uniform around its default), `extreme` (outside the `random` ranges); Packer et al. 2018;
    `clustered`, `clustered3`, `clustered4`: 2-4 groups of clearly different dynamics
    (docs/environments.md)."""
    ranges: dict[str, Any] = field(default_factory=dict)
    """Per-parameter `[low, high]` (or a list of such intervals) that override the
    variant's ranges, e.g. `{length: [0.3, 0.9]}`."""
    values: dict[str, Any] = field(default_factory=dict)
    """Explicit per-client values: `{param: [v_client0, v_client1, ...]}` (one per client)."""
    drift: str = param("none", alias="drift")
    """Non-stationary dynamics: `none`, `switch`, `linear`, `sinusoidal`, `random_walk`."""
    drift_params: tuple[str, ...] = ()
    """Which physical parameters drift (empty: the environment's default set)."""
    drift_period: int = 10
    """Rounds per switch / sinusoid period / linear ramp; random-walk variance unit."""
    drift_magnitude: float = 0.5
    """Size of the drift relative to each client's base value (for params whose
    default is 0, in units of the param's reference scale; see docs/environments.md)."""
    disturbance: str = "none"
    """Random disturbance events: `none`, `impulse` (velocity kick), `obs_noise`."""
    disturbance_prob: float = 0.01
    """Probability per environment step of a disturbance event (in (0, 1])."""
    disturbance_scale: float = 0.5
    """Std of an impulse (in the env's velocity units) or of the observation noise."""


def _sections(cls_name: str, doc: str, head: list, specs: Any) -> type:
    """A frozen dataclass of the `head` fields plus one field per spec with a section."""
    fields = list(head)
    for spec in specs:
        if spec.section is not None:
            fields.append((spec.name, spec.section, field(default_factory=spec.section)))
    cls = dataclasses.make_dataclass(cls_name, fields, frozen=True)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


AlgoConfig = _sections(
    "AlgoConfig",
    "The local learning algorithm: its name, and one section per registered algorithm.",
    [
        (
            "name",
            str,
            param(
                "ppo",
                alias="algo",
                doc=f"Registered algorithm: {', '.join(algorithms.names())} (docs/algorithms.md).",
            ),
        )
    ],
    algorithms.specs(),
)


StrategyConfig = _sections(
    "StrategyConfig",
    "How the server turns client models into the next global model (docs/strategies.md): "
    "the rule's name, the fields every rule reads, and one section per rule that has "
    "hyperparameters.",
    [
        (
            "name",
            str,
            param(
                "fedavg",
                alias="strategy",
                doc=f"Registered strategy: {', '.join(strategies.names())} (docs/strategies.md).",
            ),
        ),
        (
            "clip_update_norm",
            float,
            param(
                0.0,
                static_reason="switches update clipping on in Python",
                doc="If > 0, clip every client update to this L2 norm before aggregating "
                "(any strategy).",
            ),
        ),
    ],
    strategies.specs(),
)


AttackConfig = _sections(
    "AttackConfig",
    "Byzantine clients and what they do (docs/robustness.md): the attack's name, who is "
    "Byzantine, from when, and one section per attack that has parameters.",
    [
        (
            "name",
            str,
            param(
                attacks.NONE,
                alias="attack",
                doc=f"Registered attack: {', '.join(attacks.names())} (none: every client is "
                "honest).",
            ),
        ),
        (
            "fraction",
            float,
            param(
                0.0,
                static_reason="sets the number of Byzantine clients",
                doc="Fraction in [0, 1) of the clients that are Byzantine: floor(fraction x "
                "num_clients) of them, drawn once from the run key (byzantine.json).",
            ),
        ),
        (
            "clients",
            tuple[int, ...],
            param(
                (),
                doc="Explicit Byzantine client ids (unique, in [0, num_clients)); overrides "
                "`fraction`.",
            ),
        ),
        (
            "start_round",
            int,
            param(0, doc="First round (0-based) in which the Byzantine clients attack."),
        ),
    ],
    attacks.specs(),
)


PersonalConfig = _sections(
    "PersonalConfig",
    "Personalization (docs/personalization-methods.md): the method's name and one section "
    "per method that has hyperparameters.",
    [
        (
            "name",
            str,
            param(
                "none",
                alias="personal",
                doc=f"Personalization method: {', '.join(personal.names())} "
                "(docs/personalization-methods.md).",
            ),
        )
    ],
    personal.specs(),
)


@dataclass(frozen=True)
class FederationConfig:
    """The federation: clients, rounds, local work, participation."""

    num_clients: int = param(16, alias="clients")
    rounds: int = param(24, alias="rounds", resumable=True)
    local_updates: int = param(4, alias="local-updates")
    """Local updates (rollout + epochs) each client runs per round (under system
    heterogeneity, the most any client runs: the static length of the local scan)."""
    local_updates_dist: str = "fixed"
    """System heterogeneity (docs/strategies.md): each client's local updates per round are
    `fixed` (= local_updates for every client) or `uniform` (an integer uniform in
    [local_updates_min, local_updates]); the surplus steps of the scan are masked."""
    local_updates_min: int = 1
    """Fewest local updates a client draws under `uniform` (1 <= it <= local_updates)."""
    local_updates_redraw: bool = False
    """Redraw every client's count each round (true), or draw it once per client for the
    whole run (false: a fixed property of the client's device)."""
    straggler_prob: float = param(0.0, static_reason=_SYSTEM_REASON)
    """Probability in [0, 1] per round that a participant straggles: it completes only an
    integer uniform in [1, its count] of its local updates (its partial work is kept and
    weighted by the environment steps it took)."""
    dropout_prob: float = param(0.0, static_reason=_SYSTEM_REASON)
    """Probability in [0, 1) per round that a participant drops out: it returns nothing, is
    masked out of the aggregate and keeps its state from before the round."""
    staleness: int = 0
    """Asynchrony: each participant starts its round from the global params of s rounds
    ago, s drawn uniformly in [0, min(staleness, round)] (0: synchronous rounds)."""
    staleness_decay: float = param(0.0, traceable=True)
    """FedAsync staleness weighting a >= 0 (Xie et al. 2019): an update s rounds stale is
    scaled by (1 + s)^-a before aggregation; 0: no decay."""
    schedule_rounds: int = 0
    """Horizon in rounds of the learning-rate anneals (PPO, A2C) and the DQN epsilon decay;
    0: `rounds` at the run's start. Saved resolved in config.yaml, so a resume with more
    --rounds continues at the schedules' end values instead of stretching them."""
    schedule_restarts: tuple[int, ...] = ()
    """Pairs `start, end` of rounds over which the schedules run again from their start
    values (`jfedrl train --resume RUN --rounds MORE --extend restart` appends one), then
    hold their end values; counted, like the horizon, in each client's own steps."""
    participation: float = param(
        1.0, alias="participation", static_reason="sets the number of participants (a shape)"
    )
    """Fraction (<= 1) or count (> 1) of clients sampled each round."""
    sampling: str = "uniform"
    """Client sampling: `uniform` or `weighted` (by environment steps)."""
    min_participation: float = 0.0
    """Fail a round if fewer than this fraction of clients return valid updates."""
    on_rejected_aggregate: str = "warn"
    """A round whose aggregate is not finite keeps the previous global params; `warn`:
    log it and go on, `stop`: fail the run there (its last checkpoint is intact)."""
    holdout: int = param(0, static_reason=_HOLDOUT_REASON)
    """Held-out clients: the last `holdout` of the `num_clients` never train (never sampled,
    never aggregated) but draw their envs like the others and are evaluated under the global
    policy every block (`eval/holdout/*`; docs/personalization.md). 0: none."""
    holdout_fraction: float = param(0.0, static_reason=_HOLDOUT_REASON)
    """The held-out clients as a fraction in [0, 1) of `num_clients` (rounded, at least 1
    when > 0); instead of `holdout`, not with it."""


@dataclass(frozen=True)
class LogConfig:
    """Outputs: where, how often, what."""

    run_dir: str = param("", alias="run-dir", reserved=True)
    """Output folder (default: runs/<env>-<strategy>-<timestamp>)."""
    rounds_per_block: int = 4
    """Rounds per jitted block; the host logs, evaluates and checkpoints between blocks."""
    eval_episodes: int = 4
    """Episodes per client environment when evaluating the global policy."""
    eval_personal: str = "auto"
    """Also evaluate each client's personalized policy every block (`eval/personal/*`,
    `eval/gap`; docs/personalization.md): `on`, `off`, or `auto` (on with a personalization
    method or the `local_only` strategy). It costs a second evaluation pass."""
    checkpoint_every: int = 1
    """Checkpoint every N blocks (the last block is always checkpointed)."""
    keep_checkpoints: int = 3
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True
    wandb: bool = False
    """Also log to Weights & Biases (`pip install 'jfedrl[wandb]'`; `WANDB_MODE=offline`
    works): the TensorBoard scalars, the config, the learning curve as an artifact."""
    mlflow: str = ""
    """Also log to MLflow (`pip install 'jfedrl[mlflow]'`): a tracking folder (MLflow's file
    store) or URI (`sqlite:///...`, `http://...`); empty: off. Same outputs as `wandb`."""
    experiment: str = "jfedrl"
    """The W&B project and the MLflow experiment the run is logged under."""


def _with_executor_sections(cls: type) -> type:
    """Adds one field per installed executor's own section (`offload.golem`, ...).

    Executors are plugins (jfedrl.plugins): their sections exist only where the
    package that provides them is installed, and the section classes must not
    import this module.
    """
    from jfedrl import plugins

    for name, spec in plugins.executors().items():
        if spec.section is not None:
            cls.__annotations__[name] = spec.section
            setattr(cls, name, field(default_factory=spec.section))
    return cls


@dataclass(frozen=True)
@_with_executor_sections
class OffloadConfig:
    """Where the clients' local training runs (docs/offload.md).

    The fields below are every executor's; each executor plugin adds its own
    section (`offload.golem` with offload installed).
    """

    executor: str = param("inprocess", alias="executor")
    """`inprocess` (the jitted simulator), `local` (worker processes), `golem` or `ray`."""
    shards: int = param(1, alias="shards")
    """Number of tasks the clients are split into each round (local: worker processes)."""
    max_retries: int = 2
    """Retries of a failed task before its clients are left out of the round."""
    quantize: str = "none"
    """Transfer precision of the params: `none`, `float16`, `int8`."""
    task_timeout: float = 600.0
    """Local worker: seconds to train and write a result once compiled, else it is killed."""
    compile_timeout: float = 900.0
    """Local worker: seconds to start (import JAX) or to restore and compile a task."""
    keep_tasks: bool = False
    """Keep every round's task and result folders under RUN_DIR/offload (default: the last)."""
    state_sync_rounds: int = 10
    """Sticky clients: each shard's worker keeps its clients' states and only params travel;
    the states come home every this many rounds and before each checkpoint (0: every round;
    needs federation.participation 1)."""


@dataclass(frozen=True)
class DistributedConfig:
    """One run over several processes or hosts: JAX's multi-controller runtime.

    Launch info, not part of the experiment (docs/distributed.md): config.yaml keeps
    this section at its defaults, so a resume gives it again (with any process count).
    """

    enabled: bool = param(False, alias="distributed")
    """Run as one of `num_processes` processes of one run (`jfedrl train --distributed`)."""
    coordinator: str = ""
    """`HOST:PORT` of process 0's coordinator (empty: auto-detected, e.g. under SLURM)."""
    num_processes: int = 0
    """Processes in the run (0: auto-detected)."""
    process_id: int = -1
    """This process's index in [0, num_processes) (-1: auto-detected)."""
    timeout: int = 300
    """Seconds to wait for every process to join the coordinator."""


@dataclass(frozen=True)
class Config:
    """The whole run."""

    seed: int = param(0, alias="seed", setup=False, reserved=True)
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    personal: PersonalConfig = field(default_factory=PersonalConfig)
    log: LogConfig = param(default_factory=LogConfig, resumable=True, setup=False)
    offload: OffloadConfig = param(default_factory=OffloadConfig, resumable=True, setup=False)
    distributed: DistributedConfig = param(
        default_factory=DistributedConfig, resumable=True, setup=False
    )
    plugins: tuple[str, ...] = param((), resumable=True, setup=False)
    """Modules imported before the config is built, each registering an algorithm, a
    strategy, an env or a variant (`--plugin my_module`, repeatable; searched in the
    current folder first). Recorded here, so a resume, `eval` and the offload workers
    load them too (docs/extending.md)."""


# ---------------------------------------------------------------- conversion
# The generic converter lives in jfedrl.schema.convert; these bind it to `Config`.


def from_dict(data: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Builds `cls` (default: the whole `Config`) from a nested mapping over the defaults.

    A whole config's old keys (files of earlier versions) are upgraded first
    (`jfedrl.schema.legacy`).
    """
    if cls is Config and not prefix:
        data = legacy.upgrade(data, renames(), _defaults())
    return schema.from_dict(data, cls, prefix)


def load_yaml(path: str | Path) -> Config:
    """Loads a (possibly partial) `Config` from YAML over the defaults (old keys upgraded)."""
    return from_dict(schema.read_yaml_mapping(path))


def renamed_error(path: str) -> ConfigError | None:
    """The error for a field path of an earlier version (`strategy.krum_f`), else None."""
    message = legacy.renamed_message(path, renames())
    return None if message is None else ConfigError(message)


def schedule_horizon(fed: FederationConfig) -> int:
    """Rounds over which the schedules (LR anneal, epsilon decay) run to their end value."""
    return fed.schedule_rounds if fed.schedule_rounds > 0 else fed.rounds


def schedule_restarts(fed: FederationConfig) -> tuple[tuple[int, int], ...]:
    """`federation.schedule_restarts` as `(start, end)` round pairs."""
    restarts = fed.schedule_restarts
    return tuple(zip(restarts[0::2], restarts[1::2], strict=True))


def schedule_end(fed: FederationConfig) -> int:
    """The round from which every schedule holds its end value for good."""
    restarts = schedule_restarts(fed)
    return restarts[-1][1] if restarts else schedule_horizon(fed)


def resolve_schedule(config: Config) -> Config:
    """`config` with `federation.schedule_rounds` fixed (0 becomes `rounds`).

    Called when a run starts (and on a resume of a run saved without it), so the
    horizon saved in config.yaml does not move when `--rounds` is raised later.
    """
    fed = config.federation
    return dataclasses.replace(
        config,
        federation=dataclasses.replace(fed, schedule_rounds=schedule_horizon(fed)),
    )


def holdout_clients(fed: FederationConfig) -> int:
    """How many clients are held out (`federation.holdout` or `holdout_fraction`)."""
    if fed.holdout_fraction > 0:
        return max(1, round(fed.holdout_fraction * fed.num_clients))
    return fed.holdout


def training_clients(fed: FederationConfig) -> int:
    """How many clients may train: the first `num_clients - holdout` (a static count)."""
    return fed.num_clients - holdout_clients(fed)


def participants_per_round(fed: FederationConfig) -> int:
    """How many clients train each round (a static shape), out of the training clients."""
    if fed.participation <= 1.0:
        return max(1, round(fed.participation * training_clients(fed)))
    return int(fed.participation)


# ---------------------------------------------------------------- facts of the fields
# The tables the sweep, `--resume`, `compare` and the CLI use, derived from the
# facts each field declares (`jfedrl.schema.fields.param`), in field order.

algorithms.freeze("jfedrl.config assembled the config tree")
strategies.freeze("jfedrl.config assembled the config tree")
attacks.freeze("jfedrl.config assembled the config tree")
personal.freeze("jfedrl.config assembled the config tree")

FACTS: dict[str, Facts] = facts_of(Config)
"""Every leaf field of `Config` by dotted path, with its declared facts."""


@functools.cache
def traceable() -> tuple[str, ...]:
    """The fields that may hold a traced scalar inside the jitted round (switches included)."""
    return tuple(p for p, f in FACTS.items() if f.traceable)


@functools.cache
def switches() -> tuple[str, ...]:
    """The coefficients that switch a term on when > 0: traced when on, 0 compiles apart."""
    return tuple(p for p, f in FACTS.items() if f.switch)


def static_reason(path: str) -> str:
    """Why the field at `path` is compiled into the program (empty if undeclared)."""
    facts = FACTS.get(path)
    return facts.static_reason if facts else ""


def resumable() -> tuple[str, ...]:
    """The fields `jfedrl train --resume` may change."""
    return tuple(p for p, f in FACTS.items() if f.resumable)


def setup_fields() -> tuple[str, ...]:
    """The fields that define a setup (`jfedrl compare`); the rest (seed, outputs) do not."""
    return tuple(p for p, f in FACTS.items() if f.setup)


def reserved() -> tuple[str, ...]:
    """The fields a sweep sets itself per run, which a sweep file may not set."""
    return tuple(p for p, f in FACTS.items() if f.reserved)


def shortcuts() -> dict[str, str]:
    """Short flag (without dashes) -> dotted path: `rounds` -> `federation.rounds`."""
    return {f.alias: p for p, f in FACTS.items() if f.alias}


def section_aliases() -> dict[str, str]:
    """Section shortcuts, one per registered section, names unique.

    `ppo.` -> `algo.ppo.`, `fedadam.` -> `strategy.fedadam.`, `sign_flip.` ->
    `attack.sign_flip.`, `golem.` -> `offload.golem.`.
    """
    out: dict[str, str] = {}
    for parent, cls in (
        ("algo", AlgoConfig),
        ("strategy", StrategyConfig),
        ("attack", AttackConfig),
        ("personal", PersonalConfig),
        ("offload", OffloadConfig),
    ):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                alias = f"{f.name}."
                if alias in out:
                    raise ValueError(
                        f"section {parent}.{f.name} and {out[alias][:-1]} share the short "
                        f"flag prefix --{alias}; rename one of them"
                    )
                out[alias] = f"{parent}.{f.name}."
    return out


def renames() -> dict[str, tuple[str, ...]]:
    """Old dotted path -> the fields it became (from each field's `renamed_from`)."""
    out: dict[str, tuple[str, ...]] = {}
    for path, facts in FACTS.items():
        for old in facts.renamed_from:
            out[old] = (*out.get(old, ()), path)
    return out


def _defaults() -> dict[str, Any]:
    """Every leaf field's default value by dotted path."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        for f in dataclasses.fields(value):
            inner = getattr(value, f.name)
            if dataclasses.is_dataclass(inner):
                walk(inner, f"{prefix}{f.name}.")
            else:
                flat[prefix + f.name] = inner

    walk(Config(), "")
    return flat
