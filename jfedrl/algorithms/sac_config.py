"""The `algo.sac` config section and its checks (no JAX here).

Defaults follow Brax's SAC (`brax/training/agents/sac/train.py`: tau 0.005,
batch 256, reward scaling 1, temperature Adam step 3e-4, log alpha starting at
0) adapted, as TD3's are, to this project's client-local update: a rollout of
`num_envs x num_steps` steps, then `gradient_steps` updates; the discount is
0.99 (Brax's 0.9 suits its short-horizon locomotion defaults, Pendulum needs
the longer horizon) and the networks are small for CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfedrl.algorithms.spec import PROX_REASON, AlgorithmSpec
from jfedrl.schema.checks import require, require_choice, require_positive, require_range
from jfedrl.schema.fields import param

PATH = "algo.sac."
"""Where the section's fields live in the config tree (the prefix of every error)."""

TARGET_SYNCS = ("local", "global")
"""What the target critics do at a broadcast (as TD3's `target_sync`)."""


@dataclass(frozen=True)
class SACConfig:
    """Soft actor-critic with a learned temperature (Haarnoja et al. 2018)."""

    num_envs: int = 4
    """Parallel environments per client."""
    num_steps: int = 50
    """Steps per environment in one local update; all are stored in the replay buffer."""
    gradient_steps: int = 100
    """Updates of the critics, the actor and the temperature per local update (after its
    rollout)."""
    batch_size: int = 256
    """Transitions sampled uniformly from the replay buffer per gradient update (Brax)."""
    buffer_size: int = 100000
    """Replay capacity per client, in transitions (>= num_envs * num_steps); memory is
    num_clients x buffer_size x (2 x obs size + action size + 2) floats."""
    learning_starts: int = 1000
    """Environment steps a client takes with uniformly random actions before learning."""
    actor_learning_rate: float = param(1e-3, traceable=True)
    """Adam step size of the actor (Brax: 1e-4 for both networks, with far more
    environment steps per update)."""
    critic_learning_rate: float = param(1e-3, traceable=True)
    """Adam step size of the twin critics."""
    alpha_learning_rate: float = param(3e-4, traceable=True)
    """Adam step size of log alpha, the entropy temperature (Brax)."""
    gamma: float = param(0.99, traceable=True)
    """Discount factor in (0, 1]."""
    tau: float = param(0.005, traceable=True)
    """Polyak rate in (0, 1] of the target critics."""
    reward_scaling: float = param(1.0, traceable=True)
    """Factor (> 0) on the rewards in the critics' target (Brax's `reward_scaling`)."""
    init_alpha: float = param(1.0, traceable=True)
    """Entropy temperature alpha (> 0) at the start (Brax: log alpha = 0)."""
    autotune: bool = True
    """Learn alpha so that the policy's entropy tracks the target (Haarnoja et al. 2018,
    sec. 5); false keeps alpha at `init_alpha`."""
    target_entropy_scale: float = param(1.0, traceable=True)
    """The target entropy is -target_entropy_scale x |A| nats (> 0; 1: the paper's -|A|,
    Brax uses 0.5)."""
    target_sync: str = "local"
    """At each broadcast the target critics are `local` (kept; they follow the client's
    critics by Polyak averaging) or `global` (reset to the new global critics)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and of each critic (small for CPU runs; Brax and
    Haarnoja et al. use (256, 256))."""
    activation: str = "relu"
    """Hidden activation: `tanh`, `relu`, `gelu`, `swish`."""
    prox_mu: float = param(0.0, switch=True, static_reason=PROX_REASON)
    """FedProx proximal term mu/2 ||w - w_global||^2 on the actor and the critics."""


def validate(section: SACConfig, prefix: str = PATH, activations: tuple[str, ...] = ()) -> None:
    """Checks the section's own fields; raises `ConfigError` naming `<prefix><field>`.

    The environment's action space is checked by `jfedrl.algorithms.sac.validate`.

    Args:
        section: the fields to check.
        prefix: the dotted path of the section, with its final dot.
        activations: the allowed activation names (none given: not checked).
    """
    for name in ("num_envs", "num_steps", "gradient_steps", "batch_size"):
        value = getattr(section, name)
        require(value >= 1, f"{prefix}{name}", ">= 1", value)
    steps = section.num_envs * section.num_steps
    rule = f">= num_envs * num_steps = {steps} (one local update's transitions)"
    require(section.buffer_size >= steps, f"{prefix}buffer_size", rule, section.buffer_size)
    require_positive(f"{prefix}learning_starts", section.learning_starts, strict=False)
    positive = (
        "actor_learning_rate",
        "critic_learning_rate",
        "alpha_learning_rate",
        "reward_scaling",
        "init_alpha",
        "target_entropy_scale",
    )
    for name in positive:
        require_positive(f"{prefix}{name}", getattr(section, name))
    require_range(f"{prefix}gamma", section.gamma, 0.0, 1.0, low_open=True)
    require_range(f"{prefix}tau", section.tau, 0.0, 1.0, low_open=True)
    require_positive(f"{prefix}prox_mu", section.prox_mu, strict=False)
    sizes = section.hidden_sizes
    ok = bool(sizes) and min(sizes) >= 1
    require(ok, f"{prefix}hidden_sizes", "positive layer widths", sizes)
    if activations:
        require_choice(f"{prefix}activation", section.activation, activations)
    require_choice(f"{prefix}target_sync", section.target_sync, TARGET_SYNCS)


SPEC = AlgorithmSpec(
    "sac",
    build="jfedrl.algorithms.sac:build",
    validate="jfedrl.algorithms.sac:validate",
    section=SACConfig,
    description="SAC: twin soft critics, tanh-Gaussian actor, learned entropy temperature; FedProx",
)
