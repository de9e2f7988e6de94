"""Server optimisers: optax applied to the FedAvg pseudo-gradient.

Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2: the
server treats `global - weighted_mean(clients)` as a gradient and feeds it to
an optimiser with its own state, so FedAdam, FedYogi and FedAdagrad are one
line each (the FedJAX `fed_avg.py` pattern). FedAvgM (server momentum) is from
Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification". The client average uses the FedAvg weights
n_k / n (McMahan et al. 2017). These rules are not in the seeds; they are the
well-known server rules users of federated learning expect beside them.

Differences from the paper, kept on purpose so the rules are exactly optax's:
`fedadam` uses optax's bias-corrected Adam (Reddi et al. omit the correction);
`fedadagrad` has no server momentum (optax `adagrad`), its accumulator starts
at tau^2 as in the paper's v_{-1} = tau^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jfedrl.schema.checks import require_positive, require_range
from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    normalized_weights,
    weighted_mean,
)
from jfedrl.tree import tree_where


def server_optimizer(optimizer: optax.GradientTransformation) -> Strategy:
    """A strategy applying `optimizer` to the pseudo-gradient global - mean(clients).

    Args:
        optimizer: the server optimiser; its state is the strategy's server state.

    Returns:
        The strategy. A round with no valid client keeps both the global params
        and the optimiser state (a zero-weight mean is not a gradient).
    """

    def init(global_params):
        return optimizer.init(global_params)

    def aggregate(state, global_params, client_params, info: ClientInfo, key):
        weights = normalized_weights(info.num_steps, info.mask)
        average = weighted_mean(client_params, weights)
        pseudo_grad = jax.tree.map(lambda g, a: g - a, global_params, average)
        updates, new_state = optimizer.update(pseudo_grad, state, global_params)
        new_params = optax.apply_updates(global_params, updates)
        any_valid = jnp.any(info.mask)
        metrics = {
            "weights": weights,
            "pseudo_grad_norm": optax.global_norm(pseudo_grad),
            "server_update_norm": optax.global_norm(updates),
        }
        return (
            tree_where(any_valid, new_params, global_params),
            tree_where(any_valid, new_state, state),
            metrics,
        )

    return Strategy(init=init, aggregate=aggregate)


def fedavgm(section, num_clients: int | None = None) -> Strategy:
    """FedAvgM: SGD with momentum `momentum` and step `lr` (`strategy.fedavgm`)."""
    momentum = section.momentum if section.momentum > 0 else None
    return server_optimizer(optax.sgd(section.lr, momentum=momentum))


def fedadam(section, num_clients: int | None = None) -> Strategy:
    """FedAdam: Adam with (beta1, beta2) and epsilon tau (`strategy.fedadam`)."""
    return server_optimizer(optax.adam(section.lr, section.beta1, section.beta2, section.tau))


def fedyogi(section, num_clients: int | None = None) -> Strategy:
    """FedYogi: Yogi's additive second-moment update, epsilon tau (`strategy.fedyogi`)."""
    return server_optimizer(optax.yogi(section.lr, section.beta1, section.beta2, section.tau))


def fedadagrad(section, num_clients: int | None = None) -> Strategy:
    """FedAdagrad: per-coordinate step lr * g / sqrt(tau^2 + sum g^2) (`strategy.fedadagrad`)."""
    return server_optimizer(
        optax.adagrad(section.lr, initial_accumulator_value=section.tau**2, eps=0.0)
    )


def validate(config) -> None:
    """Checks the chosen server optimiser's section (`strategy.<name>`)."""
    name = config.strategy.name
    section, path = getattr(config.strategy, name), f"strategy.{name}"
    require_positive(f"{path}.lr", section.lr)
    if hasattr(section, "momentum"):
        require_range(f"{path}.momentum", section.momentum, 0.0, 1.0, high_open=True)
    if hasattr(section, "beta1"):
        require_range(f"{path}.beta1", section.beta1, 0.0, 1.0, high_open=True)
        require_range(f"{path}.beta2", section.beta2, 0.0, 1.0, high_open=True)
    require_positive(f"{path}.tau", section.tau) if hasattr(section, "tau") else None
