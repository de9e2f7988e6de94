"""Proximal policy optimisation for one federated client.

Maths: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped
surrogate, adaptive KL penalty); Schulman et al. 2016 (GAE); Tomar et al. 2020,
"Mirror Descent Policy Optimization" (MDPO); Li et al. 2020, "Federated
Optimization in Heterogeneous Networks" (FedProx proximal term).

Features of the systems this replaces (FedRL, federated PPO): the objectives `none`
(r_t A_t), `clip`, `kl` (fixed or adaptive beta) and `mdpo`, each with or
without the communication term towards the global policy or the weighted
mixture of the peers' policies; RLlab FRL's L2 (FedProx) regulariser.

One `local_update` = `num_steps x num_envs` environment steps, then
`update_epochs x num_minibatches` gradient steps. It is a pure function of one
client's state; the simulator vmaps it over clients.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jfedrl.algorithms import common, networks, onpolicy
from jfedrl.algorithms.base import Algorithm, Reference
from jfedrl.algorithms.ppo_config import OBJECTIVE_HINTS, PPOConfig
from jfedrl.config import Config, schedule_horizon, schedule_restarts
from jfedrl.schema.checks import ConfigError, require_choice, require_range


class PPOState(struct.PyTreeNode):
    """Everything one client carries between local updates."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    """Return of the running episode, per environment."""
    last_return: jax.Array
    """Return of the last finished episode, per environment (0 before any)."""
    kl_coef: jax.Array
    """beta of the `kl` / `mdpo` objectives (adapted if `kl_target` > 0)."""


Transition = onpolicy.Transition


def validate(config: Config) -> None:
    """Checks the PPO section; raises `ConfigError` naming the field."""
    ppo = config.algo.ppo
    path = "algo.ppo"
    common.require_counts(
        path, ppo, ("num_envs", "num_steps", "update_epochs", "num_minibatches", "mixture_samples")
    )
    batch = ppo.num_envs * ppo.num_steps
    if batch % ppo.num_minibatches:
        raise ConfigError(
            f"{path}.num_minibatches: must divide num_envs * num_steps = "
            f"{ppo.num_envs} * {ppo.num_steps} = {batch}, got {ppo.num_minibatches}"
        )
    common.require_fields_positive(path, ppo, ("learning_rate", "clip_eps", "max_grad_norm"))
    common.require_discount(path, ppo)
    require_range(f"{path}.gae_lambda", ppo.gae_lambda, 0.0, 1.0)
    common.require_fields_positive(
        path,
        ppo,
        ("ent_coef", "vf_coef", "kl_coef", "kl_target", "comm_coef", "prox_mu"),
        strict=False,
    )
    common.require_network(path, ppo)
    objectives = ("clip", "none", "kl", "mdpo")
    require_choice(f"{path}.objective", ppo.objective, objectives, OBJECTIVE_HINTS)
    require_choice(f"{path}.comm_reference", ppo.comm_reference, ("global", "mixture"))


def make_optimizer(
    ppo: PPOConfig, total_gradient_steps: int, restarted: Any = None
) -> optax.GradientTransformation:
    """Adam with global-norm clipping and an optional linear LR anneal.

    `restarted`: the anneal as a schedule with `federation.schedule_restarts`
    (`common.restarted_linear`), used instead of the one-segment anneal.
    """
    if ppo.anneal_lr and restarted is not None:
        lr = restarted
    elif ppo.anneal_lr:
        lr = optax.linear_schedule(ppo.learning_rate, 0.0, max(total_gradient_steps, 1))
    else:
        lr = ppo.learning_rate
    return optax.chain(optax.clip_by_global_norm(ppo.max_grad_norm), optax.adam(lr, eps=1e-5))


def comm_kl(
    key: jax.Array,
    network: networks.ActorCritic,
    ppo: PPOConfig,
    continuous: bool,
    dist: jax.Array,
    reference: Reference,
    obs: jax.Array,
) -> jax.Array:
    """Per-sample KL of the communication term (FedRL), `[B]`.

    KL[ref || pi] for `none` / `clip` / `kl`, KL[pi || ref] for `mdpo`, where
    ref is the broadcast global policy (`comm_reference: global`) or the
    mixture sum_i w_i pi_i of the peers' last-round policies (`mixture`). The
    reference gets no gradient. Every KL is in closed form except a Gaussian
    mixture's, which has none: there it is the Monte-Carlo estimate of
    `networks.kl_from_mixture_mc` / `kl_to_mixture_mc` with
    `ppo.mixture_samples` samples per state, drawn from `key`.
    """
    reverse = ppo.objective == "mdpo"
    if ppo.comm_reference == "mixture":
        peer_dists, _ = jax.vmap(network.apply, in_axes=(0, None))(reference.peer_params, obs)
        peer_dists = jax.lax.stop_gradient(peer_dists)
        weights = reference.peer_weights
        if continuous:
            if reverse:
                return networks.kl_to_mixture_mc(
                    key, dist, peer_dists, weights, ppo.mixture_samples
                )
            return networks.kl_from_mixture_mc(key, peer_dists, weights, dist, ppo.mixture_samples)
        ref = networks.mixture_logits(peer_dists, weights)
    else:
        ref = jax.lax.stop_gradient(network.apply(reference.global_params, obs)[0])
    return networks.kl(dist, ref, continuous) if reverse else networks.kl(ref, dist, continuous)


def loss(
    params: Any,
    minibatch: tuple[Transition, jax.Array, jax.Array],
    kl_coef: jax.Array,
    reference: Reference,
    key: jax.Array,
    *,
    network: networks.ActorCritic,
    ppo: PPOConfig,
    continuous: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The PPO loss of one minibatch (minimised), and its parts.

    total = L_pi + vf_coef L_V - ent_coef H + comm_coef C + mu/2 ||w - w_global||^2,
    with r = pi(a|s) / pi_old(a|s) and A the per-minibatch standardised GAE
    advantages, L_pi is by `ppo.objective` (FedRL, Schulman et al. 2017, Tomar
    et al. 2020):

    - `clip`: -mean(min(r A, clip(r, 1 - eps, 1 + eps) A));
    - `none`: -mean(r A);
    - `kl`:   -mean(r A) + beta mean KL[pi_old || pi];
    - `mdpo`: -mean(r A) + beta mean KL[pi || pi_old];

    C is the mean of `comm_kl` (0 unless `comm_coef` > 0), L_V the clipped value
    loss 0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)) and
    H the mean entropy.

    Args:
        params: the client's network params.
        minibatch: `(transitions, advantages, returns)`, leading axis = sample.
        kl_coef: beta (the client's current, possibly adapted, value).
        reference: the broadcast global params and the peers (communication, FedProx).
        key: draws the Monte-Carlo samples of a Gaussian mixture KL (else unused).
        network: the actor-critic module.
        ppo: the PPO config section.
        continuous: Gaussian (True) or categorical (False) policy.

    Returns:
        The total loss and a dict of its parts (`pg_loss`, `value_loss`,
        `entropy`, `approx_kl` = mean KL[pi_old || pi], `comm_kl`, `prox`).
    """
    t, adv, target = minibatch
    dist, value = network.apply(params, t.obs)
    log_prob = networks.log_prob(dist, t.action, continuous)
    ratio = jnp.exp(log_prob - t.log_prob)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    kl_old_new = networks.kl(t.dist, dist, continuous).mean()  # also the approx_kl metric
    if ppo.objective == "clip":
        clipped = jnp.clip(ratio, 1.0 - ppo.clip_eps, 1.0 + ppo.clip_eps)
        pg_loss = -jnp.minimum(ratio * adv, clipped * adv).mean()
    else:
        pg_loss = -(ratio * adv).mean()
        if ppo.objective == "kl":
            pg_loss = pg_loss + kl_coef * kl_old_new
        elif ppo.objective == "mdpo":
            pg_loss = pg_loss + kl_coef * networks.kl(dist, t.dist, continuous).mean()
    comm = jnp.zeros(())
    if common.switched_on(ppo.comm_coef):
        comm = comm_kl(key, network, ppo, continuous, dist, reference, t.obs).mean()
    # Clipped value loss, as in the reference PPO implementations.
    value_clipped = t.value + jnp.clip(value - t.value, -ppo.clip_eps, ppo.clip_eps)
    v_loss = 0.5 * jnp.maximum((value - target) ** 2, (value_clipped - target) ** 2).mean()
    ent = networks.entropy(dist, continuous).mean()
    prox = common.prox_term(params, reference.global_params, ppo.prox_mu)
    total = pg_loss + ppo.vf_coef * v_loss - ppo.ent_coef * ent + ppo.comm_coef * comm + prox
    aux = {
        "pg_loss": pg_loss,
        "value_loss": v_loss,
        "entropy": ent,
        "approx_kl": kl_old_new,
        "comm_kl": comm,
        "prox": prox,
    }
    return total, aux


def build(config: Config, env, env_params) -> Algorithm:
    """PPO for `env`; `env_params` is one client's (unbatched) default params."""
    ppo = config.algo.ppo
    agent = onpolicy.setup(env, env_params, ppo)
    network, continuous = agent.network, agent.network.continuous
    # The anneal's horizon is fixed at the run's start, so a longer resumed run holds the end value.
    per_round = config.federation.local_updates * ppo.update_epochs * ppo.num_minibatches
    gradient_steps = schedule_horizon(config.federation) * per_round
    restarts = schedule_restarts(config.federation)  # `--extend restart` (docs/algorithms.md)
    restarted = common.restarted_linear(ppo.learning_rate, 0.0, gradient_steps, restarts, per_round)
    optimizer = make_optimizer(ppo, gradient_steps, restarted)
    batch_size = ppo.num_envs * ppo.num_steps
    minibatch_size = batch_size // ppo.num_minibatches

    def init(key, client_env_params) -> PPOState:
        fields = onpolicy.init_fields(key, agent, optimizer, client_env_params, ppo.num_envs)
        return PPOState(**fields, kl_coef=jnp.asarray(ppo.kl_coef, jnp.float32))

    grad_fn = jax.grad(
        functools.partial(loss, network=network, ppo=ppo, continuous=continuous), has_aux=True
    )

    def local_update(key, state: PPOState, client_env_params, reference: Reference):
        key_rollout, key_epochs = jax.random.split(key)
        state, batch, episodes = onpolicy.rollout(
            key_rollout, agent, state, client_env_params, ppo.num_steps, ppo.gamma
        )
        adv, target = onpolicy.advantages(network, state, batch, ppo.gamma, ppo.gae_lambda)
        # The loss reads no rewards or dones: they stay out of the per-epoch shuffle.
        batch = batch.replace(reward=None, done=None)
        flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), (batch, adv, target))

        def epoch(carry, epoch_key):
            def minibatch_step(carry, inputs):
                minibatch, loss_key = inputs
                params, opt_state = carry
                grads, aux = grad_fn(params, minibatch, state.kl_coef, reference, loss_key)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), aux

            order = jax.random.permutation(epoch_key, batch_size)
            shuffled = jax.tree.map(
                lambda x: x[order].reshape((ppo.num_minibatches, minibatch_size) + x.shape[1:]),
                flat,
            )
            # Only the Monte-Carlo mixture KL (continuous actions) draws from these keys.
            loss_keys = jax.random.split(jax.random.fold_in(epoch_key, 1), ppo.num_minibatches)
            return jax.lax.scan(minibatch_step, carry, (shuffled, loss_keys))

        (params, opt_state), aux = jax.lax.scan(
            epoch,
            (state.params, state.opt_state),
            jax.random.split(key_epochs, ppo.update_epochs),
        )
        metrics = jax.tree.map(jnp.mean, aux)
        kl_coef = state.kl_coef
        if common.switched_on(ppo.kl_target):
            kl_now = metrics["approx_kl"]
            kl_coef = jnp.where(kl_now > 1.5 * ppo.kl_target, kl_coef * 2.0, kl_coef)
            kl_coef = jnp.where(kl_now < ppo.kl_target / 1.5, kl_coef / 2.0, kl_coef)
        metrics["train_return"] = jnp.mean(state.last_return)
        metrics["episodes"] = episodes.astype(jnp.float32)
        state = state.replace(params=params, opt_state=opt_state, kl_coef=kl_coef)
        return state, metrics

    return Algorithm(
        init=init,
        local_update=local_update,
        get_params=lambda state: state.params,
        set_params=lambda state, params: state.replace(params=params),
        act=onpolicy.make_act(agent),
        env_steps_per_update=batch_size,
        needs_peers=common.switched_on(ppo.comm_coef) and ppo.comm_reference == "mixture",
    )
