"""Synchronous advantage actor-critic (A2C) for one federated client.

Maths: Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement
Learning" (A3C: n-step returns, entropy bonus, shared RMSProp statistics; its
synchronous variant A2C, as in OpenAI Baselines, waits for all actors and takes
one gradient step on their batch); Schulman et al. 2016 (GAE(lambda)); Li et
al. 2020 (FedProx proximal term).

Features of the systems this replaces: MARL trains A3C workers whose gradients
update one shared network and ships the weights to a parent that combines
them. Here the `num_envs` vectorised environments of a client are A3C's
parallel actor-learners made synchronous (the same expected gradient, without
the stale-gradient noise), and the federation plays the parent/child part.
The communication KL to the global policy follows FedRL; the L2 term RLlab FRL.

One `local_update` = `num_steps x num_envs` environment steps (the n-step
rollout), then ONE gradient step on the whole batch. With `gae_lambda = 1`
the advantage is exactly the n-step return minus the value (A3C's
`R = r_t + gamma R` backward recursion bootstrapped from V(s_{t+n})); with
`gae_lambda < 1` it is GAE. Discrete (categorical) and continuous (diagonal
Gaussian) actions share `networks.ActorCritic`. Federation: `get_params` is
the whole actor-critic; the optimiser statistics stay on the client.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jfedrl.algorithms import common, networks, onpolicy
from jfedrl.algorithms.a2c_config import A2CConfig
from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.config import Config, schedule_horizon, schedule_restarts
from jfedrl.schema.checks import require_choice, require_range


class A2CState(struct.PyTreeNode):
    """Everything one client carries between local updates."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    """Return of the running episode, per environment."""
    last_return: jax.Array
    """Return of the last finished episode, per environment (0 before any)."""


def validate(config: Config) -> None:
    """Checks the `algo.a2c` section; raises `ConfigError` naming the field."""
    a2c = config.algo.a2c
    path = "algo.a2c"
    common.require_counts(path, a2c, ("num_envs", "num_steps"))
    common.require_fields_positive(path, a2c, ("learning_rate", "max_grad_norm"))
    common.require_discount(path, a2c)
    require_range(f"{path}.gae_lambda", a2c.gae_lambda, 0.0, 1.0)
    names = ("ent_coef", "vf_coef", "comm_coef", "prox_mu")
    common.require_fields_positive(path, a2c, names, strict=False)
    common.require_network(path, a2c)
    require_choice(f"{path}.optimizer", a2c.optimizer, ("rmsprop", "adam"))


def make_optimizer(
    a2c: A2CConfig, total_gradient_steps: int, restarted: Any = None
) -> optax.GradientTransformation:
    """Global-norm clipping, then RMSProp or Adam.

    RMSProp as in Mnih et al. 2016 and the Baselines / PyTorch A2C: decay 0.99 and
    eps 1e-5 added outside the square root. `restarted`: the anneal as a schedule
    with `federation.schedule_restarts` (`common.restarted_linear`).
    """
    if a2c.anneal_lr and restarted is not None:
        lr = restarted
    elif a2c.anneal_lr:
        lr = optax.linear_schedule(a2c.learning_rate, 0.0, max(total_gradient_steps, 1))
    else:
        lr = a2c.learning_rate
    if a2c.optimizer == "rmsprop":
        step = optax.rmsprop(lr, decay=0.99, eps=1e-5, eps_in_sqrt=False)
    else:
        step = optax.adam(lr, eps=1e-5)
    return optax.chain(optax.clip_by_global_norm(a2c.max_grad_norm), step)


def loss(
    params: Any,
    batch: onpolicy.Transition,
    adv: jax.Array,
    returns: jax.Array,
    reference: Reference,
    *,
    network: networks.ActorCritic,
    a2c: A2CConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The A2C loss of one rollout (minimised), and its parts.

    total = -mean(log pi(a|s) A) + vf_coef 0.5 mean((V - R)^2) - ent_coef H
    + comm_coef mean KL[pi_global || pi] + mu/2 ||w - w_global||^2, with A
    standardised if `normalize_advantages` (Mnih et al. 2016; FedRL's KL).

    Args:
        params: the client's network params.
        batch: the rollout's transitions (any leading axes).
        adv: advantages, the shape of `batch.reward` (no gradient flows into them).
        returns: value targets, the same shape.
        reference: the broadcast global params (communication KL, FedProx).
        network: the actor-critic module.
        a2c: the A2C config section.

    Returns:
        The total loss and a dict of its parts (`pg_loss`, `value_loss`, `entropy`,
        `comm_kl`, `prox`).
    """
    continuous = network.continuous
    dist, value = network.apply(params, batch.obs)
    log_prob = networks.log_prob(dist, batch.action, continuous)
    if a2c.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = -jnp.mean(log_prob * adv)
    v_loss = 0.5 * jnp.mean((value - returns) ** 2)
    ent = jnp.mean(networks.entropy(dist, continuous))
    comm = jnp.zeros(())
    if common.switched_on(a2c.comm_coef):
        ref_dist, _ = network.apply(reference.global_params, batch.obs)
        comm = jnp.mean(networks.kl(jax.lax.stop_gradient(ref_dist), dist, continuous))
    prox = common.prox_term(params, reference.global_params, a2c.prox_mu)
    total = pg_loss + a2c.vf_coef * v_loss - a2c.ent_coef * ent + a2c.comm_coef * comm + prox
    aux = {"pg_loss": pg_loss, "value_loss": v_loss, "entropy": ent, "comm_kl": comm}
    aux["prox"] = prox
    return total, aux


def build(config: Config, env, env_params) -> Algorithm:
    """A2C for `env`; `env_params` is one client's (unbatched) default params."""
    a2c = config.algo.a2c
    agent = onpolicy.setup(env, env_params, a2c)
    horizon = schedule_horizon(config.federation)  # fixed at the run's start
    per_round = config.federation.local_updates
    restarts = schedule_restarts(config.federation)  # `--extend restart`
    restarted = common.restarted_linear(
        a2c.learning_rate, 0.0, horizon * per_round, restarts, per_round
    )
    optimizer = make_optimizer(a2c, horizon * per_round, restarted)

    def init(key, client_env_params) -> A2CState:
        fields = onpolicy.init_fields(key, agent, optimizer, client_env_params, a2c.num_envs)
        return A2CState(**fields)

    grad_fn = jax.grad(functools.partial(loss, network=agent.network, a2c=a2c), has_aux=True)

    def local_update(key, state: A2CState, client_env_params, reference: Reference):
        state, batch, episodes = onpolicy.rollout(
            key, agent, state, client_env_params, a2c.num_steps, a2c.gamma
        )
        adv, returns = onpolicy.advantages(agent.network, state, batch, a2c.gamma, a2c.gae_lambda)
        adv, returns = jax.lax.stop_gradient((adv, returns))
        grads, metrics = grad_fn(state.params, batch, adv, returns, reference)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["train_return"] = jnp.mean(state.last_return)
        metrics["episodes"] = episodes.astype(jnp.float32)
        return state.replace(params=params, opt_state=opt_state), metrics

    return Algorithm(
        init=init,
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=lambda state, params: state.replace(params=params),
        act=onpolicy.make_act(agent),
        env_steps_per_update=a2c.num_envs * a2c.num_steps,
    )
