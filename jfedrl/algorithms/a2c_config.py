"""The `algo.a2c` section: A2C's hyperparameters and its registration.

Imports no jax: the config tree is assembled from the registered sections before
anything is compiled. The maths is `jfedrl.algorithms.a2c`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.algorithms.spec import COMM_REASON, PROX_REASON, AlgorithmSpec
from jfedrl.schema.fields import param


@dataclass(frozen=True)
class A2CConfig:
    """Synchronous advantage actor-critic (Mnih et al. 2016, the synchronous A3C)."""

    num_envs: int = 8
    """Parallel environments per client (A3C's parallel actor-learners)."""
    num_steps: int = 16
    """Steps per environment in one rollout: the n of the n-step return (A3C's t_max)."""
    learning_rate: float = param(2e-3, traceable=True)
    """Step size of `optimizer`."""
    optimizer: str = "rmsprop"
    """`rmsprop` (Mnih et al. 2016: decay 0.99, eps 1e-5 outside the root) or `adam`."""
    anneal_lr: bool = False
    """Linearly anneal the learning rate to zero over `federation.schedule_rounds` rounds
    (default: the whole run as started), then hold it at zero."""
    gamma: float = param(0.99, traceable=True)
    """Discount factor in (0, 1]."""
    gae_lambda: float = param(1.0, traceable=True)
    """1.0: plain n-step returns (A3C); < 1: GAE(lambda) advantages (Schulman et al. 2016)."""
    ent_coef: float = param(0.01, traceable=True)
    """Entropy bonus weight (>= 0)."""
    vf_coef: float = param(0.5, traceable=True)
    """Value loss weight (>= 0)."""
    max_grad_norm: float = param(0.5, traceable=True)
    """Global gradient-norm clip (> 0)."""
    normalize_advantages: bool = False
    """Standardise the advantages of each rollout batch."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the (separate) actor and critic MLPs."""
    activation: str = "tanh"
    """Hidden activation: `tanh`, `relu`, `gelu`, `swish`."""
    comm_coef: float = param(0.0, switch=True, static_reason=COMM_REASON)
    """Weight (>= 0) of the communication term KL[pi_global || pi] towards the broadcast
    global policy (FedRL `--comm-coeff`)."""
    prox_mu: float = param(0.0, switch=True, static_reason=PROX_REASON)
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""


#: Names users type that are not algorithms of their own -> where they live.
HINTS = {"a3c": "A3C runs synchronously as --algo a2c (--federation.staleness adds asynchrony)"}


SPEC = AlgorithmSpec(
    "a2c",
    build="jfedrl.algorithms.a2c:build",
    validate="jfedrl.algorithms.a2c:validate",
    section=A2CConfig,
    description="A2C (synchronous A3C): n-step / GAE advantages, entropy, RMSProp or Adam, FedProx",
)
