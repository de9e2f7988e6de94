"""The `algo.td3` section: TD3's hyperparameters and its registration.

Imports no jax: the config tree is assembled from the registered sections before
anything is compiled. The maths is `jfedrl.algorithms.td3`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.algorithms.spec import COMM_REASON, PROX_REASON, AlgorithmSpec
from jfedrl.schema.fields import param


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
    actor_learning_rate: float = param(1e-3, traceable=True)
    """Adam step size of the actor."""
    critic_learning_rate: float = param(1e-3, traceable=True)
    """Adam step size of the critics."""
    gamma: float = param(0.99, traceable=True)
    """Discount factor in (0, 1]."""
    tau: float = param(0.005, traceable=True)
    """Polyak rate in (0, 1] of the target networks."""
    exploration_noise: float = param(0.1, traceable=True)
    """Std (>= 0) of the Gaussian exploration noise, in units of the action half-range."""
    policy_noise: float = param(0.2, traceable=True)
    """Std (>= 0) of the target policy smoothing noise, in units of the action half-range."""
    noise_clip: float = param(0.5, traceable=True)
    """Clip (>= 0) of the target policy smoothing noise, in units of the action half-range."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    ddpg: bool = False
    """DDPG instead of TD3: one critic, no target smoothing, no delay (Lillicrap et al. 2016,
    with Gaussian exploration as in Fujimoto et al.'s DDPG baseline)."""
    target_sync: str = "local"
    """At each broadcast the target networks are `local` (kept; they follow the client's
    online networks by Polyak averaging, as in RLlab FRL) or `global` (reset to the new
    global params)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and of each critic (small for CPU runs; Fujimoto
    et al. use (400, 300) on MuJoCo)."""
    activation: str = "relu"
    """Hidden activation: `tanh`, `relu`, `gelu`, `swish`."""
    comm_coef: float = param(0.0, switch=True, static_reason=COMM_REASON)
    """Weight (>= 0) of RLlab FRL's regulariser towards the global actor: mean
    ||mu(s) - mu_global(s)||^2 over the batch (the KL between equal-variance Gaussian
    policies around the two actions, up to a constant factor)."""
    prox_mu: float = param(0.0, switch=True, static_reason=PROX_REASON)
    """FedProx proximal term mu/2 ||w - w_global||^2 on the actor and the critics."""
    critic_period: int = 1
    """Rounds between aggregations of the critic (RLlab FRL's N, as N / critic steps per
    round; docs/algorithms.md). Between them each client keeps its own critic."""
    actor_period: int = 1
    """Rounds between aggregations of the actor (RLlab FRL's M * L, as M * L / critic steps
    per round, M = policy_delay). Between them each client keeps its own actor."""


#: Names users type that are not algorithms of their own -> where they live.
HINTS = {"ddpg": "DDPG is a TD3 switch: --algo td3 --td3.ddpg true"}


SPEC = AlgorithmSpec(
    "td3",
    build="jfedrl.algorithms.td3:build",
    validate="jfedrl.algorithms.td3:validate",
    section=TD3Config,
    description="TD3 / DDPG: twin critics, target smoothing, delayed actor; FedProx, "
    "L2 to global actor",
)
