"""The module-level losses of A2C, DQN and TD3 against a direct NumPy computation.

Each loss is evaluated on a tiny fixed batch with fixed params and compared with
the same formula written out in NumPy (the networks' forward passes included),
so a change to a loss term, a sign or a coefficient fails here on its own.
(PPO's objectives: tests/test_ppo_objectives.py.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl.algorithms import a2c, dqn, networks, offpolicy, onpolicy, td3
from jfedrl.algorithms.a2c_config import A2CConfig
from jfedrl.algorithms.base import Reference
from jfedrl.algorithms.dqn_config import DQNConfig
from jfedrl.algorithms.td3_config import TD3Config

B, OBS, ACTIONS = 6, 3, 2
RNG = np.random.default_rng(0)
OBS_BATCH = RNG.normal(size=(B, OBS)).astype(np.float32)
NEXT_OBS = RNG.normal(size=(B, OBS)).astype(np.float32)
REWARD = RNG.normal(size=B).astype(np.float32)
TERMINAL = np.array([0, 1, 0, 0, 1, 0], np.float32)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _perturb(params, seed, scale=0.3):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def _mlp(layers, x, act):
    """Dense layers in order, `act` between them (not after the last)."""
    for i, layer in enumerate(layers):
        x = x @ layer["kernel"] + layer["bias"]
        if i < len(layers) - 1:
            x = act(x)
    return x


def _dense_layers(module_params):
    return [module_params[f"Dense_{i}"] for i in range(len(module_params))]


def _sq_dist(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(np.sum((np.asarray(x) - np.asarray(y)) ** 2) for x, y in pairs)


def _log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _relu(x):
    return np.maximum(x, 0.0)


# ------------------------------------------------------------------ A2C


@pytest.mark.parametrize("normalize", [True, False])
def test_a2c_loss_matches_numpy(normalize):
    cfg = dataclasses.replace(
        A2CConfig(),
        hidden_sizes=(4,),
        activation="tanh",
        vf_coef=0.7,
        ent_coef=0.05,
        comm_coef=0.3,
        prox_mu=0.2,
        normalize_advantages=normalize,
    )
    network = networks.ActorCritic(ACTIONS, False, 1, (4,), "tanh")
    params = _perturb(network.init(jax.random.PRNGKey(1), jnp.zeros(OBS)), 2)
    global_params = _perturb(params, 3)
    action = np.array([0, 1, 1, 0, 1, 0], np.int32)
    adv = RNG.normal(size=B).astype(np.float32)
    returns = RNG.normal(size=B).astype(np.float32)
    batch = onpolicy.Transition(
        obs=OBS_BATCH,
        action=action,
        log_prob=np.zeros(B, np.float32),
        dist=np.zeros((B, ACTIONS), np.float32),
        value=np.zeros(B, np.float32),
        reward=REWARD,
        done=np.zeros(B, bool),
    )
    total, aux = a2c.loss(
        params, batch, adv, returns, Reference(global_params), network=network, a2c=cfg
    )

    p, g = _np(params)["params"], _np(global_params)["params"]
    logp = _log_softmax(_mlp(_dense_layers(p["actor"]), OBS_BATCH, np.tanh))
    value = _mlp(_dense_layers(p["critic"]), OBS_BATCH, np.tanh)[:, 0]
    ref_logp = _log_softmax(_mlp(_dense_layers(g["actor"]), OBS_BATCH, np.tanh))
    a = (adv - adv.mean()) / (adv.std() + 1e-8) if normalize else adv
    pg = -np.mean(logp[np.arange(B), action] * a)
    v_loss = 0.5 * np.mean((value - returns) ** 2)
    ent = np.mean(-np.sum(np.exp(logp) * logp, -1))
    comm = np.mean(np.sum(np.exp(ref_logp) * (ref_logp - logp), -1))
    prox = 0.5 * 0.2 * _sq_dist(params, global_params)
    expected = pg + 0.7 * v_loss - 0.05 * ent + 0.3 * comm + prox
    for name, want in [("pg_loss", pg), ("value_loss", v_loss), ("entropy", ent)]:
        np.testing.assert_allclose(aux[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(aux["comm_kl"], comm, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux["prox"], prox, rtol=1e-5)
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ DQN


def _q_numpy(params):
    p = _np(params)["params"]
    layers = [p[f"torso_{i}"] for i in range(len(p) - 1)] + [p["q_head"]]
    return lambda obs: _mlp(layers, obs, _relu)


@pytest.mark.parametrize("double, kind", [(False, "mse"), (True, "huber")])
def test_dqn_loss_matches_numpy(double, kind):
    cfg = dataclasses.replace(
        DQNConfig(), hidden_sizes=(4,), gamma=0.9, double=double, loss=kind, prox_mu=0.1
    )
    network = dqn.QNetwork(ACTIONS, 1, (4,), "relu", False)
    params = _perturb(network.init(jax.random.PRNGKey(1), jnp.zeros(OBS)), 2, 1.0)
    target_params = _perturb(params, 3, 1.0)
    global_params = _perturb(params, 4)
    action = np.array([1, 0, 1, 1, 0, 0], np.int32)
    batch = offpolicy.Transition(OBS_BATCH, action, REWARD, NEXT_OBS, TERMINAL)
    total, aux = dqn.loss(
        params, target_params, batch, Reference(global_params), network=network, dqn=cfg
    )

    q, q_target = _q_numpy(params), _q_numpy(target_params)
    q_taken = q(OBS_BATCH)[np.arange(B), action]
    chooser = q(NEXT_OBS) if double else q_target(NEXT_OBS)
    next_value = q_target(NEXT_OBS)[np.arange(B), chooser.argmax(-1)]
    error = q_taken - (REWARD + 0.9 * (1 - TERMINAL) * next_value)
    if kind == "huber":
        td = np.mean(np.where(np.abs(error) <= 1, 0.5 * error**2, np.abs(error) - 0.5))
    else:
        td = 0.5 * np.mean(error**2)
    prox = 0.5 * 0.1 * _sq_dist(params, global_params)
    np.testing.assert_allclose(aux["td_loss"], td, rtol=1e-5)
    np.testing.assert_allclose(aux["q_mean"], q_taken.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, td + prox, rtol=1e-5)


# ------------------------------------------------------------------ TD3


def _td3_problem(ddpg: bool):
    num_qs = 1 if ddpg else 2
    nets = td3.Networks(
        td3.Actor(ACTIONS, 1, (4,), "relu"), td3.Critic(num_qs, 1, (4,), "relu"), 1, (ACTIONS,)
    )
    obs0, action0 = jnp.zeros(OBS), jnp.zeros(ACTIONS)
    params = {
        "actor": nets.actor.init(jax.random.PRNGKey(1), obs0),
        "critic": nets.critic.init(jax.random.PRNGKey(2), obs0, action0),
    }
    params = _perturb(params, 3, 0.5)
    return nets, params, _perturb(params, 4), _perturb(params, 5)


def _actor_np(actor_params):
    layers = _dense_layers(_np(actor_params)["params"]["MLP_0"])
    return lambda obs: np.tanh(_mlp(layers, obs, _relu))


def _critics_np(critic_params):
    p = _np(critic_params)["params"]
    mlps = [_dense_layers(p[f"MLP_{i}"]) for i in range(len(p))]
    return lambda obs, a: np.stack(
        [_mlp(m, np.concatenate([obs, a], -1), _relu)[:, 0] for m in mlps]
    )


@pytest.mark.parametrize("ddpg", [False, True])
def test_td3_critic_loss_matches_numpy(ddpg):
    cfg = dataclasses.replace(TD3Config(), gamma=0.95, noise_clip=0.3, prox_mu=0.1)
    nets, params, target_params, global_params = _td3_problem(ddpg)
    action = RNG.uniform(-1, 1, size=(B, ACTIONS)).astype(np.float32)
    noise = RNG.normal(scale=0.5, size=(B, ACTIONS)).astype(np.float32)
    batch = offpolicy.Transition(OBS_BATCH, action, REWARD, NEXT_OBS, TERMINAL)
    total, aux = td3.critic_loss(
        params["critic"],
        target_params,
        batch,
        noise,
        Reference(global_params),
        nets=nets,
        td3=cfg,
    )

    next_action = np.clip(
        _actor_np(target_params["actor"])(NEXT_OBS) + np.clip(noise, -0.3, 0.3), -1, 1
    )
    target_qs = _critics_np(target_params["critic"])(NEXT_OBS, next_action)
    y = REWARD + 0.95 * (1 - TERMINAL) * target_qs.min(0)
    qs = _critics_np(params["critic"])(OBS_BATCH, action)
    td = np.sum(np.mean((qs - y) ** 2, -1))
    prox = 0.5 * 0.1 * _sq_dist(params["critic"], global_params["critic"])
    np.testing.assert_allclose(aux["critic_loss"], td, rtol=1e-5)
    np.testing.assert_allclose(aux["q_mean"], qs[0].mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, td + prox, rtol=1e-5)


def test_td3_actor_loss_matches_numpy():
    cfg = dataclasses.replace(TD3Config(), comm_coef=0.4, prox_mu=0.1)
    nets, params, _, global_params = _td3_problem(False)
    batch = offpolicy.Transition(
        OBS_BATCH, np.zeros((B, ACTIONS), np.float32), REWARD, NEXT_OBS, TERMINAL
    )
    total, aux = td3.actor_loss(
        params["actor"], params["critic"], batch, Reference(global_params), nets=nets, td3=cfg
    )

    action = _actor_np(params["actor"])(OBS_BATCH)
    pg = -np.mean(_critics_np(params["critic"])(OBS_BATCH, action)[0])
    comm = np.mean(np.sum((action - _actor_np(global_params["actor"])(OBS_BATCH)) ** 2, -1))
    prox = 0.5 * 0.1 * _sq_dist(params["actor"], global_params["actor"])
    np.testing.assert_allclose(aux["actor_loss"], pg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["comm_l2"], comm, rtol=1e-5)
    np.testing.assert_allclose(total, pg + 0.4 * comm + prox, rtol=1e-5, atol=1e-6)
