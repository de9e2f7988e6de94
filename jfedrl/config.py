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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jfedrl.schema import convert as schema

#: `federation.on_rejected_aggregate`: what a round with a non-finite aggregate does.
REJECTED_AGGREGATE_ACTIONS = ("warn", "stop")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment every client runs, and how clients differ."""

    name: str = "CartPole-v1"
    """Registered environment name (`jfedrl envs` lists them)."""
    backend: str = ""
    """Brax physics backend: `spring`, `positional`, `generalized`, `mjx` (empty:
    `spring`, the fastest on CPU; on a GPU prefer `mjx`). Only for `brax-*` envs."""
    max_episode_steps: int = 0
    """Episode time limit in steps (0: the environment's own limit)."""
    variant: str = "default"
    """Client heterogeneity: `default` (all identical), `random` (each tunable param
    uniform around its default), `extreme` (outside the `random` ranges); Packer et al. 2018."""
    ranges: dict[str, Any] = field(default_factory=dict)
    """Per-parameter `[low, high]` (or a list of such intervals) that override the
    variant's ranges, e.g. `{length: [0.3, 0.9]}`."""
    values: dict[str, Any] = field(default_factory=dict)
    """Explicit per-client values: `{param: [v_client0, v_client1, ...]}` (one per client)."""
    drift: str = "none"
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


@dataclass(frozen=True)
class PPOConfig:
    """Proximal policy optimisation (Schulman et al. 2017) and its variants."""

    num_envs: int = 4
    """Parallel environments per client."""
    num_steps: int = 128
    """Steps per environment in one rollout (one local update)."""
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 2.5e-3
    """Adam step size (high for PPO, but FedAvg of 16 clients averages the noise;
    the default run solves CartPole-v1 with it; lower it for harder tasks)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to zero over `federation.schedule_rounds` rounds
    (default: the whole run as started), then hold it at zero."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    objective: str = "clip"
    """Policy objective: `clip`, `none` (plain ratio), `kl` (KL penalty), `mdpo`."""
    kl_coef: float = 0.01
    """beta for the `kl` and `mdpo` objectives."""
    kl_target: float = 0.0
    """If > 0, adapt beta after each local update (Schulman et al. 2017, sec. 4): doubled if
    the update's mean KL[pi_old || pi] exceeds 1.5 kl_target, halved if below kl_target / 1.5."""
    comm_coef: float = 0.0
    """Weight of the communication KL term (seed 002 `--comm-coeff`): KL between
    the policy and `comm_reference` (KL[ref, pi], or KL[pi, ref] for `mdpo`)."""
    comm_reference: str = "global"
    """Communication target: `global` (the broadcast global policy) or `mixture`
    (the weighted mixture of the peers' last-round policies)."""
    mixture_samples: int = 8
    """Monte-Carlo samples per state of the KL to or from a Gaussian mixture (continuous
    actions with `comm_reference: mixture`; it has no closed form). Discrete: exact."""
    prox_mu: float = 0.0
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""


@dataclass(frozen=True)
class A2CConfig:
    """Synchronous advantage actor-critic (Mnih et al. 2016, the synchronous A3C)."""

    num_envs: int = 8
    """Parallel environments per client (A3C's parallel actor-learners)."""
    num_steps: int = 16
    """Steps per environment in one rollout: the n of the n-step return (A3C's t_max)."""
    learning_rate: float = 2e-3
    """Step size of `optimizer`."""
    optimizer: str = "rmsprop"
    """`rmsprop` (Mnih et al. 2016: decay 0.99, eps 1e-5 outside the root) or `adam`."""
    anneal_lr: bool = False
    """Linearly anneal the learning rate to zero over `federation.schedule_rounds` rounds
    (default: the whole run as started), then hold it at zero."""
    gamma: float = 0.99
    """Discount factor in (0, 1]."""
    gae_lambda: float = 1.0
    """1.0: plain n-step returns (A3C); < 1: GAE(lambda) advantages (Schulman et al. 2016)."""
    ent_coef: float = 0.01
    """Entropy bonus weight (>= 0)."""
    vf_coef: float = 0.5
    """Value loss weight (>= 0)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (> 0)."""
    normalize_advantages: bool = False
    """Standardise the advantages of each rollout batch."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the (separate) actor and critic MLPs."""
    activation: str = "tanh"
    """Hidden activation: `tanh`, `relu`, `gelu`, `swish`."""
    comm_coef: float = 0.0
    """Weight (>= 0) of the communication term KL[pi_global || pi] towards the broadcast
    global policy (seed 002 `--comm-coeff`)."""
    prox_mu: float = 0.0
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""


@dataclass(frozen=True)
class DQNConfig:
    """Deep Q-learning (Mnih et al. 2015) with double and dueling switches."""

    num_envs: int = 4
    """Parallel environments per client."""
    num_steps: int = 32
    """Steps per environment in one local update; all are stored in the replay buffer."""
    gradient_steps: int = 32
    """Gradient updates per local update (after its rollout)."""
    batch_size: int = 64
    """Transitions sampled uniformly from the replay buffer per gradient update."""
    buffer_size: int = 10000
    """Replay capacity per client, in transitions (>= num_envs * num_steps); memory is
    num_clients x buffer_size x (2 x obs size + 3) floats."""
    learning_starts: int = 1000
    """Environment steps a client collects before its first gradient update."""
    learning_rate: float = 1e-3
    """Adam step size."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip (> 0)."""
    gamma: float = 0.99
    """Discount factor in (0, 1]."""
    epsilon_start: float = 1.0
    """Initial epsilon of the epsilon-greedy exploration, in [0, 1]."""
    epsilon_end: float = 0.05
    """Final epsilon, in [0, 1]."""
    exploration_fraction: float = 0.5
    """Fraction in (0, 1] of a client's step budget (federation.schedule_rounds x
    local_updates x num_steps x num_envs, counted on the client's own steps) over which
    epsilon decays linearly."""
    target_update_interval: int = 100
    """Gradient updates between target-network updates."""
    tau: float = 1.0
    """Target update: 1 copies the online network (Mnih et al. 2015); < 1 is Polyak
    averaging target <- tau online + (1 - tau) target."""
    target_sync: str = "global"
    """At each broadcast the target network is `global` (reset to the new global params)
    or `local` (kept; it only follows the client's own online network)."""
    double: bool = False
    """Double DQN targets (van Hasselt et al. 2016): online argmax, target evaluation."""
    dueling: bool = False
    """Dueling head Q = V + A - mean(A) (Wang et al. 2016)."""
    loss: str = "mse"
    """TD loss: `mse` or `huber` (Mnih et al. 2015's error clipping)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the Q-network."""
    activation: str = "relu"
    """Hidden activation: `tanh`, `relu`, `gelu`, `swish`."""
    prox_mu: float = 0.0
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""


@dataclass(frozen=True)
class TD3Config:
    """Twin delayed DDPG (Fujimoto et al. 2018), or DDPG (Lillicrap et al. 2016)."""

    num_envs: int = 4
    """Parallel environments per client."""
    num_steps: int = 50
    """Steps per environment in one local update; all are stored in the replay buffer."""
    gradient_steps: int = 100
    """Critic updates per local update (after its rollout); the actor is updated every
    `policy_delay` of them."""
    batch_size: int = 128
    """Transitions sampled uniformly from the replay buffer per gradient update."""
    buffer_size: int = 100000
    """Replay capacity per client, in transitions (>= num_envs * num_steps); memory is
    num_clients x buffer_size x (2 x obs size + action size + 2) floats."""
    learning_starts: int = 1000
    """Environment steps a client takes with uniformly random actions before learning."""
    actor_learning_rate: float = 1e-3
    """Adam step size of the actor."""
    critic_learning_rate: float = 1e-3
    """Adam step size of the critics."""
    gamma: float = 0.99
    """Discount factor in (0, 1]."""
    tau: float = 0.005
    """Polyak rate in (0, 1] of the target networks."""
    exploration_noise: float = 0.1
    """Std (>= 0) of the Gaussian exploration noise, in units of the action half-range."""
    policy_noise: float = 0.2
    """Std (>= 0) of the target policy smoothing noise, in units of the action half-range."""
    noise_clip: float = 0.5
    """Clip (>= 0) of the target policy smoothing noise, in units of the action half-range."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    ddpg: bool = False
    """DDPG instead of TD3: one critic, no target smoothing, no delay (Lillicrap et al. 2016,
    with Gaussian exploration as in Fujimoto et al.'s DDPG baseline)."""
    target_sync: str = "local"
    """At each broadcast the target networks are `local` (kept; they follow the client's
    online networks by Polyak averaging, as in seed 001) or `global` (reset to the new
    global params)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and of each critic (small for CPU runs; Fujimoto
    et al. use (400, 300) on MuJoCo)."""
    activation: str = "relu"
    """Hidden activation: `tanh`, `relu`, `gelu`, `swish`."""
    comm_coef: float = 0.0
    """Weight (>= 0) of seed 001's regulariser towards the global actor: mean
    ||mu(s) - mu_global(s)||^2 over the batch (the KL between equal-variance Gaussian
    policies around the two actions, up to a constant factor)."""
    prox_mu: float = 0.0
    """FedProx proximal term mu/2 ||w - w_global||^2 on the actor and the critics."""
    critic_period: int = 1
    """Rounds between aggregations of the critic (seed 001's N, as N / critic steps per
    round; docs/algorithms.md). Between them each client keeps its own critic."""
    actor_period: int = 1
    """Rounds between aggregations of the actor (seed 001's M * L, as M * L / critic steps
    per round, M = policy_delay). Between them each client keeps its own actor."""


@dataclass(frozen=True)
class AlgoConfig:
    """The local learning algorithm."""

    name: str = "ppo"
    """Registered algorithm: ppo, a2c, dqn, td3 (docs/algorithms.md)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    a2c: A2CConfig = field(default_factory=A2CConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    td3: TD3Config = field(default_factory=TD3Config)


@dataclass(frozen=True)
class StrategyConfig:
    """How the server turns client models into the next global model (docs/strategies.md)."""

    name: str = "fedavg"
    """Registered strategy: fedavg, mean, reward_weighted, evolutionary, fedavgm, fedadam,
    fedyogi, fedadagrad, median, trimmed_mean, krum, multi_krum, dp_fedavg, fedprox, fednova."""
    server_lr: float = 1.0
    """Server learning rate (> 0) of fedavgm / fedadam / fedyogi / fedadagrad. 1.0 suits
    fedavgm; the adaptive rules step about server_lr per coordinate, so use ~1e-3..1e-2."""
    server_momentum: float = 0.9
    """fedavgm: server momentum in [0, 1) (0 with server_lr 1 is exactly fedavg)."""
    beta1: float = 0.9
    """fedadam / fedyogi: first-moment decay in [0, 1)."""
    beta2: float = 0.99
    """fedadam / fedyogi: second-moment decay in [0, 1)."""
    tau: float = 1e-3
    """Adaptivity (epsilon, > 0) of the adaptive server optimisers (Reddi et al. 2021)."""
    trim_beta: float = 0.1
    """trimmed_mean: fraction in [0, 0.5) trimmed from each end, per coordinate."""
    krum_f: int = 1
    """krum / multi_krum: Byzantine clients tolerated; needs participants n > 2f + 2."""
    krum_m: int = 0
    """multi_krum: clients averaged, in [0, n - f] (0: n - f)."""
    krum_weighting: str = "mean"
    """multi_krum: average the selected clients with equal weights (`mean`, Blanchard et al.
    2017) or by their environment steps n_k (`num_steps`, as Flower's Multi-Krum)."""
    reward_weighting: str = "min_shift"
    """reward_weighted: `min_shift` (return - min + eps) or `softmax` (exp(return / T))."""
    temperature: float = 1.0
    """reward_weighted: softmax temperature T (> 0), in units of return."""
    evo_algorithm: str = "differential_evolution"
    """evolutionary: `differential_evolution` (>= 4 participants) or `pso`."""
    evo_mutation: float = 0.5
    """evolutionary (DE): differential weight F in (0, 2] of the mutation best + F (x_b - x_c)."""
    evo_crossover: float = 0.9
    """evolutionary (DE): binomial crossover rate CR in [0, 1]."""
    pso_inertia: float = 0.7298
    """evolutionary (pso): inertia w (>= 0); default: Clerc & Kennedy 2002 constriction."""
    pso_cognitive: float = 1.49618
    """evolutionary (pso): pull c1 (>= 0) towards each particle's own best."""
    pso_social: float = 1.49618
    """evolutionary (pso): pull c2 (>= 0) towards the swarm's best."""
    dp_clip: float = 1.0
    """dp_fedavg: per-client update L2 norm bound S (> 0)."""
    dp_noise: float = 1.0
    """dp_fedavg: noise multiplier z (>= 0); noise std = z * S / n_valid per coordinate."""
    dp_delta: float = 1e-5
    """dp_fedavg: the delta, in (0, 1), of the (epsilon, delta) spent so far that each round
    reports (`dp_epsilon`, Renyi DP accountant); choose it well below 1 / num_clients."""
    dp_epsilon_budget: float = 0.0
    """dp_fedavg: epsilon budget (>= 0; 0: none); at it the run does `dp_budget_action`."""
    dp_budget_action: str = "stop"
    """dp_fedavg: at the budget, `stop` (end after the last round within it, checkpointed, with
    an error) or `warn` (log a warning and go on)."""
    prox_mu: float = 0.01
    """fedprox: the proximal coefficient mu (> 0) of FedProx (Li et al. 2020); fedprox is
    fedavg with the algorithm's term mu/2 ||w - w_global||^2, and this sets algo.<name>.prox_mu."""
    clip_update_norm: float = 0.0
    """If > 0, clip every client update to this L2 norm before aggregating (any strategy)."""


@dataclass(frozen=True)
class FederationConfig:
    """The federation: clients, rounds, local work, participation."""

    num_clients: int = 16
    rounds: int = 24
    local_updates: int = 4
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
    straggler_prob: float = 0.0
    """Probability in [0, 1] per round that a participant straggles: it completes only an
    integer uniform in [1, its count] of its local updates (its partial work is kept and
    weighted by the environment steps it took)."""
    dropout_prob: float = 0.0
    """Probability in [0, 1) per round that a participant drops out: it returns nothing, is
    masked out of the aggregate and keeps its state from before the round."""
    staleness: int = 0
    """Asynchrony: each participant starts its round from the global params of s rounds
    ago, s drawn uniformly in [0, min(staleness, round)] (0: synchronous rounds)."""
    staleness_decay: float = 0.0
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
    participation: float = 1.0
    """Fraction (<= 1) or count (> 1) of clients sampled each round."""
    sampling: str = "uniform"
    """Client sampling: `uniform` or `weighted` (by environment steps)."""
    min_participation: float = 0.0
    """Fail a round if fewer than this fraction of clients return valid updates."""
    on_rejected_aggregate: str = "warn"
    """A round whose aggregate is not finite keeps the previous global params; `warn`:
    log it and go on, `stop`: fail the run there (its last checkpoint is intact)."""


@dataclass(frozen=True)
class LogConfig:
    """Outputs: where, how often, what."""

    run_dir: str = ""
    """Output folder (default: runs/<env>-<strategy>-<timestamp>)."""
    rounds_per_block: int = 4
    """Rounds per jitted block; the host logs, evaluates and checkpoints between blocks."""
    eval_episodes: int = 4
    """Episodes per client environment when evaluating the global policy."""
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

    executor: str = "inprocess"
    """`inprocess` (the jitted simulator), `local` (worker processes), `golem` or `ray`."""
    shards: int = 1
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

    enabled: bool = False
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

    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# ---------------------------------------------------------------- conversion
# The generic converter lives in jfedrl.schema.convert; these bind it to `Config`.


def from_dict(data: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Builds `cls` (default: the whole `Config`) from a nested mapping over the defaults."""
    return schema.from_dict(data, cls, prefix)


def load_yaml(path: str | Path) -> Config:
    """Loads a (possibly partial) `Config` from YAML over the defaults."""
    return schema.load_yaml(path, Config)


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


def with_fedprox(config: Config) -> Config:
    """`config` with `strategy.prox_mu` as the algorithm's `prox_mu` under `fedprox`.

    FedProx (Li et al. 2020) is FedAvg on the server plus a proximal term in each
    client's loss, which every algorithm has as `algo.<name>.prox_mu`; the
    `fedprox` strategy routes its `prox_mu` there. Other strategies: unchanged.
    """
    if config.strategy.name != "fedprox":
        return config
    # Set as it is, not coerced: a sweep may trace `strategy.prox_mu` (jfedrl.experiments.traced).
    path = f"algo.{config.algo.name}.prox_mu"
    return schema.replace_path(config, path, config.strategy.prox_mu, coerce=False)


def participants_per_round(fed: FederationConfig) -> int:
    """How many clients train each round (a static shape)."""
    if fed.participation <= 1.0:
        return max(1, round(fed.participation * fed.num_clients))
    return int(fed.participation)
