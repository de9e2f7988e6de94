"""The `algo.ppo` section: PPO's hyperparameters and its registration.

Imports no jax: the config tree is assembled from the registered sections before
anything is compiled. The maths is `jfedrl.algorithms.ppo`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.algorithms.spec import COMM_REASON, KL_TARGET_REASON, PROX_REASON, AlgorithmSpec
from jfedrl.schema.fields import param


@dataclass(frozen=True)
class PPOConfig:
    """Proximal policy optimisation (Schulman et al. 2017) and its variants."""

    num_envs: int = 4
    """Parallel environments per client."""
    num_steps: int = 128
    """Steps per environment in one rollout (one local update)."""
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = param(2.5e-3, traceable=True)
    """Adam step size (high for PPO, but FedAvg of 16 clients averages the noise;
    the default run solves CartPole-v1 with it; lower it for harder tasks)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to zero over `federation.schedule_rounds` rounds
    (default: the whole run as started), then hold it at zero."""
    gamma: float = param(0.99, traceable=True)
    gae_lambda: float = param(0.95, traceable=True)
    clip_eps: float = param(0.2, traceable=True)
    ent_coef: float = param(0.01, traceable=True)
    vf_coef: float = param(0.5, traceable=True)
    max_grad_norm: float = param(0.5, traceable=True)
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    objective: str = "clip"
    """Policy objective: `clip`, `none` (plain ratio), `kl` (KL penalty), `mdpo`."""
    kl_coef: float = param(0.01, traceable=True)
    """beta for the `kl` and `mdpo` objectives."""
    kl_target: float = param(0.0, switch=True, static_reason=KL_TARGET_REASON)
    """If > 0, adapt beta after each local update (Schulman et al. 2017, sec. 4): doubled if
    the update's mean KL[pi_old || pi] exceeds 1.5 kl_target, halved if below kl_target / 1.5."""
    comm_coef: float = param(0.0, switch=True, static_reason=COMM_REASON)
    """Weight of the communication KL term (FedRL `--comm-coeff`): KL between
    the policy and `comm_reference` (KL[ref, pi], or KL[pi, ref] for `mdpo`)."""
    comm_reference: str = "global"
    """Communication target: `global` (the broadcast global policy) or `mixture`
    (the weighted mixture of the peers' last-round policies)."""
    mixture_samples: int = 8
    """Monte-Carlo samples per state of the KL to or from a Gaussian mixture (continuous
    actions with `comm_reference: mixture`; it has no closed form). Discrete: exact."""
    prox_mu: float = param(0.0, switch=True, static_reason=PROX_REASON)
    """FedProx proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""


#: `algo.ppo.objective` values users type for objectives spelled otherwise.
OBJECTIVE_HINTS = {
    "adaptive_kl": "The adaptive KL penalty is --ppo.objective kl --ppo.kl-target 0.01",
    "kl_adaptive": "The adaptive KL penalty is --ppo.objective kl --ppo.kl-target 0.01",
    "ppo": "PPO's clipped surrogate is 'clip'",
}

#: Names users type that are not algorithms of their own -> where they live.
HINTS = {"mdpo": "MDPO is a PPO objective: --algo ppo --ppo.objective mdpo"}


SPEC = AlgorithmSpec(
    "ppo",
    build="jfedrl.algorithms.ppo:build",
    validate="jfedrl.algorithms.ppo:validate",
    section=PPOConfig,
    description="PPO: clip / none / kl / mdpo, communication KL, FedProx",
)
