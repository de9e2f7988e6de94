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

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jfedrl.schema.checks import require_positive, require_range
from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    normalized_weights,
    tree_where,
    weighted_mean,
)


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


def fedavgm(config, num_clients: int | None = None) -> Strategy:
    """FedAvgM: SGD with momentum `server_momentum` and step `server_lr`."""
    momentum = config.server_momentum if config.server_momentum > 0 else None
    return server_optimizer(optax.sgd(config.server_lr, momentum=momentum))


def fedadam(config, num_clients: int | None = None) -> Strategy:
    """FedAdam: Adam with (beta1, beta2) and epsilon tau."""
    return server_optimizer(optax.adam(config.server_lr, config.beta1, config.beta2, config.tau))


def fedyogi(config, num_clients: int | None = None) -> Strategy:
    """FedYogi: Yogi's additive second-moment update, epsilon tau."""
    return server_optimizer(optax.yogi(config.server_lr, config.beta1, config.beta2, config.tau))


def fedadagrad(config, num_clients: int | None = None) -> Strategy:
    """FedAdagrad: per-coordinate step server_lr * g / sqrt(tau^2 + sum g^2)."""
    return server_optimizer(
        optax.adagrad(config.server_lr, initial_accumulator_value=config.tau**2, eps=0.0)
    )


def validator(uses: tuple[str, ...]) -> Callable[[object], None]:
    """A `validate(config)` for the server-optimiser fields in `uses`."""

    def validate(config) -> None:
        strategy = config.strategy
        require_positive("strategy.server_lr", strategy.server_lr)
        if "momentum" in uses:
            require_range(
                "strategy.server_momentum", strategy.server_momentum, 0.0, 1.0, high_open=True
            )
        if "betas" in uses:
            require_range("strategy.beta1", strategy.beta1, 0.0, 1.0, high_open=True)
            require_range("strategy.beta2", strategy.beta2, 0.0, 1.0, high_open=True)
        if "tau" in uses:
            require_positive("strategy.tau", strategy.tau)

    return validate
