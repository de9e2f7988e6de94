"""The `algo.dqn` section: DQN's hyperparameters and its registration.

Imports no jax: the config tree is assembled from the registered sections before
anything is compiled. The maths is `jfedrl.algorithms.dqn`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.algorithms.spec import HORIZON_REASON, PROX_REASON, AlgorithmSpec
from jfedrl.schema.fields import param


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
    learning_rate: float = param(1e-3, traceable=True)
    """Adam step size."""
    max_grad_norm: float = param(10.0, traceable=True)
    """Global gradient-norm clip (> 0)."""
    gamma: float = param(0.99, traceable=True)
    """Discount factor in (0, 1]."""
    epsilon_start: float = param(1.0, traceable=True)
    """Initial epsilon of the epsilon-greedy exploration, in [0, 1]."""
    epsilon_end: float = param(0.05, traceable=True)
    """Final epsilon, in [0, 1]."""
    exploration_fraction: float = param(0.5, static_reason=HORIZON_REASON)
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
    prox_mu: float = param(0.0, switch=True, static_reason=PROX_REASON)
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""


#: Names users type that are not algorithms of their own -> where they live.
HINTS = {
    "ddqn": "Double DQN is a DQN switch: --algo dqn --dqn.double true",
    "double_dqn": "Double DQN is a DQN switch: --algo dqn --dqn.double true",
    "dueling_dqn": "Dueling DQN is a DQN switch: --algo dqn --dqn.dueling true",
}


SPEC = AlgorithmSpec(
    "dqn",
    build="jfedrl.algorithms.dqn:build",
    validate="jfedrl.algorithms.dqn:validate",
    section=DQNConfig,
    description="DQN with replay and target network; double / dueling switches; FedProx",
)
