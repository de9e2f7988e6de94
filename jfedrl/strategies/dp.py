"""DP-FedAvg: clipped client updates plus Gaussian noise at the server.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models" (ICLR), DP-FedAvg with flat clipping: each client update
Delta_k = w_k - w_global is scaled to L2 norm at most S (`dp_clip`), the
clipped updates are averaged with equal weights, and Gaussian noise
N(0, (z S / n)^2) is added per coordinate, z being the noise multiplier
(`strategy.dp_fedavg.noise`). One client changes the average by at most S / n, so the noise
std is z times that sensitivity: user-level (here client-level) privacy for
one round. The (epsilon, delta) spent over the rounds is tracked on the host
by `jfedrl.strategies.privacy` (Renyi DP accountant of the sampled Gaussian mechanism),
which also enforces `dp_epsilon_budget`.

Unlike the paper's fixed-denominator estimator (expected participants qW),
n is the number of *valid* clients this round (the round masks non-finite
updates), so the sensitivity bound holds for the clients actually averaged.
Not in the seeds: users of federated learning expect a private rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jfedrl.schema.checks import (
    ConfigError,
    require,
    require_choice,
    require_positive,
    require_range,
)
from jfedrl.strategies.base import ClientInfo, Strategy, normalized_weights, stateless
from jfedrl.strategies.dp_config import BUDGET_ACTIONS


def clip_factors(client_params, global_params, clip: float) -> tuple[jax.Array, jax.Array]:
    """Per-client scale min(1, S / ||Delta_k||) and the update norms ||Delta_k||, `[K]` each."""
    sq = [
        jnp.sum(
            jnp.square(c.astype(jnp.float32) - g.astype(jnp.float32)).reshape(c.shape[0], -1),
            axis=1,
        )
        for c, g in zip(jax.tree.leaves(client_params), jax.tree.leaves(global_params), strict=True)
    ]
    norms = jnp.sqrt(sum(sq))
    return jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-12)), norms


def dp_fedavg(section, num_clients: int | None = None) -> Strategy:
    """DP-FedAvg with clip norm `clip` and noise multiplier `noise` (`strategy.dp_fedavg`)."""
    clip, noise_multiplier = section.clip, section.noise

    def combine(global_params, client_params, info: ClientInfo, key):
        scale, norms = clip_factors(client_params, global_params, clip)
        weights = normalized_weights(jnp.ones_like(info.num_steps), info.mask)
        n_valid = info.mask.sum()
        noise_std = noise_multiplier * clip / jnp.maximum(n_valid, 1).astype(jnp.float32)
        leaves, treedef = jax.tree.flatten(global_params)
        keys = jax.random.split(key, len(leaves))

        def leaf(c, g, k):
            w = (weights * scale).reshape((-1,) + (1,) * (c.ndim - 1))
            delta = jnp.sum(w * (c.astype(jnp.float32) - g.astype(jnp.float32)), axis=0)
            noise = noise_std * jax.random.normal(k, g.shape, jnp.float32)
            return (g.astype(jnp.float32) + delta + noise).astype(g.dtype)

        new = jax.tree.unflatten(
            treedef,
            [
                leaf(c, g, k)
                for c, g, k in zip(jax.tree.leaves(client_params), leaves, keys, strict=True)
            ],
        )
        metrics = {
            "weights": weights,
            "noise_multiplier": jnp.asarray(noise_multiplier, jnp.float32),
            "noise_std": noise_std,
            "clipped_fraction": jnp.sum(info.mask & (norms > clip)) / jnp.maximum(n_valid, 1),
            "update_norm_mean": jnp.sum(jnp.where(info.mask, norms, 0.0)) / jnp.maximum(n_valid, 1),
        }
        return new, metrics

    return stateless(combine)


def validate(config) -> None:
    """Checks `strategy.dp_fedavg`; a `stop` budget must allow at least the first round."""
    from jfedrl.strategies import privacy

    section, path = config.strategy.dp_fedavg, "strategy.dp_fedavg"
    require_positive(f"{path}.clip", section.clip)
    require_positive(f"{path}.noise", section.noise, strict=False)
    require_range(f"{path}.delta", section.delta, 0, 1, low_open=True, high_open=True)
    budget = section.epsilon_budget
    require(budget >= 0, f"{path}.epsilon_budget", ">= 0 (0: none)", budget)
    require_choice(f"{path}.budget_action", section.budget_action, BUDGET_ACTIONS)
    accountant = privacy.accountant(config)
    if accountant.budget > 0 and accountant.action == "stop":
        first = accountant.epsilon(1)
        if first > accountant.budget:
            raise ConfigError(
                f"{path}.epsilon_budget: {accountant.budget:g} is below the epsilon of one "
                f"round, {first:.4g} (noise = {section.noise:g}, sampling rate "
                f"{accountant.sampling_rate:g}, delta = {accountant.delta:g}); raise the "
                f"budget or {path}.noise"
            )
