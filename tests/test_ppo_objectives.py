"""PPO's objectives (seed 002): each loss against NumPy, the communication term,
adaptive beta, and a tiny CartPole learning run per variant."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl import algorithms
from jfedrl.algorithms import networks, ppo
from jfedrl.algorithms.base import Reference
from jfedrl.algorithms.ppo_config import PPOConfig
from jfedrl.round.environment import make_client_envs
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.convert import replace_path
from tests.helpers import tiny_config

B, OBS, PEERS = 8, 4, 3
KL_COEF, COMM_COEF, PROX_MU = 0.3, 0.7, 0.05

# ------------------------------------------------------------------ NumPy reference


def np_mlp(layers, x):
    names = sorted(layers)
    for name in names[:-1]:
        x = np.tanh(x @ layers[name]["kernel"] + layers[name]["bias"])
    return x @ layers[names[-1]]["kernel"] + layers[names[-1]]["bias"]


def np_forward(params, obs, continuous):
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)["params"]
    out = np_mlp(p["actor"], obs)
    if continuous:
        out = np.concatenate([out, np.broadcast_to(p["log_std"], out.shape)], axis=-1)
    return out, np_mlp(p["critic"], obs)[:, 0]


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_gauss_logpdf(dist, a):
    mean, log_std = np.split(dist, 2, axis=-1)
    return np.sum(
        -0.5 * ((a - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi), axis=-1
    )


def np_log_prob(dist, action, continuous):
    if continuous:
        return np_gauss_logpdf(dist, action)
    return np_log_softmax(dist)[np.arange(len(action)), action]


def np_kl(p, q, continuous):
    if continuous:
        mp, lp = np.split(p, 2, axis=-1)
        mq, lq = np.split(q, 2, axis=-1)
        sp, sq = np.exp(lp), np.exp(lq)
        return np.sum(np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5, axis=-1)
    lp, lq = np_log_softmax(p), np_log_softmax(q)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def np_entropy(dist, continuous):
    if continuous:
        log_std = np.split(dist, 2, axis=-1)[1]
        return np.sum(log_std + 0.5 * np.log(2 * np.pi * np.e), axis=-1)
    lp = np_log_softmax(dist)
    return -np.sum(np.exp(lp) * lp, axis=-1)


def np_categorical_mixture(peer_dists, weights):
    probs = np.exp(np_log_softmax(peer_dists))  # [P, B, A]
    return np.log(np.tensordot(weights, probs, axes=1))  # logits of sum_i w_i pi_i


def np_gaussian_mixture_kl(policy, peer_dists, weights, reverse):
    """KL[m || pi] (or KL[pi || m]) by quadrature on a grid, 2-D actions, per state."""
    grid = np.linspace(-7.0, 7.0, 561)
    step = grid[1] - grid[0]
    a = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 1, 2)  # [G, 1, 2]
    log_pi = np_gauss_logpdf(policy[None], a)  # [G, B]
    log_peers = np.stack([np_gauss_logpdf(d[None], a) for d in peer_dists])  # [P, G, B]
    log_m = np.log(np.tensordot(weights, np.exp(log_peers), axes=1))
    if reverse:
        return np.sum(np.exp(log_pi) * (log_pi - log_m), axis=0) * step**2
    return np.sum(np.exp(log_m) * (log_m - log_pi), axis=0) * step**2


def np_loss(cfg, continuous, params, batch, reference, comm_kl=None):
    """The loss of `ppo.loss`, written out directly; `comm_kl` overrides the comm term."""
    t, adv, target = (jax.tree.map(lambda x: np.asarray(x, np.float64), x) for x in batch)
    dist, value = np_forward(params, t.obs, continuous)
    action = np.asarray(batch[0].action)
    ratio = np.exp(np_log_prob(dist, action, continuous) - t.log_prob)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    if cfg.objective == "clip":
        clipped = np.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps)
        pg = -np.mean(np.minimum(ratio * adv, clipped * adv))
    else:
        pg = -np.mean(ratio * adv)
        if cfg.objective == "kl":
            pg += KL_COEF * np.mean(np_kl(t.dist, dist, continuous))
        if cfg.objective == "mdpo":
            pg += KL_COEF * np.mean(np_kl(dist, t.dist, continuous))
    reverse = cfg.objective == "mdpo"
    comm = 0.0
    if cfg.comm_coef > 0 and comm_kl is not None:
        comm = comm_kl
    elif cfg.comm_coef > 0:
        if cfg.comm_reference == "global":
            ref = np_forward(reference.global_params, t.obs, continuous)[0]
        else:
            peer_dists = np.stack(
                [
                    np_forward(
                        jax.tree.map(lambda x, i=i: x[i], reference.peer_params), t.obs, continuous
                    )[0]
                    for i in range(PEERS)
                ]
            )
            ref = np_categorical_mixture(peer_dists, np.asarray(reference.peer_weights, float))
        pair = (dist, ref) if reverse else (ref, dist)
        comm = np.mean(np_kl(*pair, continuous))
    v_clipped = t.value + np.clip(value - t.value, -cfg.clip_eps, cfg.clip_eps)
    v_loss = 0.5 * np.mean(np.maximum((value - target) ** 2, (v_clipped - target) ** 2))
    ent = np.mean(np_entropy(dist, continuous))
    sq = jax.tree.map(
        lambda w, g: np.sum((np.asarray(w, float) - np.asarray(g, float)) ** 2),
        params,
        reference.global_params,
    )
    prox = 0.5 * cfg.prox_mu * sum(jax.tree.leaves(sq))
    total = pg + cfg.vf_coef * v_loss - cfg.ent_coef * ent + cfg.comm_coef * comm + prox
    return total, {
        "pg_loss": pg,
        "value_loss": v_loss,
        "entropy": ent,
        "comm_kl": comm,
        "prox": prox,
    }


# ------------------------------------------------------------------ a small fixed batch


def perturb(params, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape), jnp.float32),
        params,
    )


def problem(continuous: bool):
    """A network, its params, a batch from 'old' params, and a reference."""
    action_dim = 2 if continuous else 3
    network = networks.ActorCritic(action_dim, continuous, 1, (8, 8), "tanh")
    params = perturb(network.init(jax.random.PRNGKey(0), jnp.zeros(OBS)), 1)
    old = perturb(params, 2, 0.2)
    rng = np.random.default_rng(3)
    obs = jnp.asarray(rng.normal(size=(B, OBS)), jnp.float32)
    old_dist, old_value = network.apply(old, obs)
    action = networks.sample(jax.random.PRNGKey(4), old_dist, continuous)
    t = ppo.Transition(
        obs=obs,
        action=action,
        log_prob=networks.log_prob(old_dist, action, continuous),
        dist=old_dist,
        value=old_value,
        reward=jnp.zeros(B),
        done=jnp.zeros(B, bool),
    )
    adv = jnp.asarray(rng.normal(size=B), jnp.float32)
    target = jnp.asarray(old_value + rng.normal(size=B), jnp.float32)
    peers = [perturb(params, 10 + i, 0.4) for i in range(PEERS)]
    if continuous:  # distinct spreads, so the mixture is far from any one Gaussian
        peers = [
            {"params": {**p["params"], "log_std": jnp.full(2, s, jnp.float32)}}
            for p, s in zip(peers, (-0.4, 0.0, 0.3), strict=True)
        ]
    reference = Reference(
        global_params=perturb(params, 5, 0.3),
        peer_params=jax.tree.map(lambda *x: jnp.stack(x), *peers),
        peer_weights=jnp.asarray([0.5, 0.3, 0.2], jnp.float32),
    )
    return network, params, (t, adv, target), reference


COMMS = {
    "off": {"comm_coef": 0.0, "comm_reference": "mixture"},  # mixture but off: no term
    "global": {"comm_coef": COMM_COEF, "comm_reference": "global"},
    "mixture": {"comm_coef": COMM_COEF, "comm_reference": "mixture"},
}


def cfg_for(objective, comm, **fields):
    return PPOConfig(objective=objective, prox_mu=PROX_MU, kl_coef=KL_COEF, **COMMS[comm], **fields)


def jax_loss(cfg, continuous, network, params, batch, reference, key=0):
    fn = jax.jit(
        lambda p, b, r, k: ppo.loss(
            p, b, jnp.float32(KL_COEF), r, k, network=network, ppo=cfg, continuous=continuous
        )
    )
    return fn(params, batch, reference, jax.random.PRNGKey(key))


# The Gaussian mixture KL is a Monte-Carlo estimate: tested on its own below.
CASES = [
    (space, objective, comm)
    for space in ("categorical", "gaussian")
    for objective in ("clip", "none", "kl", "mdpo")
    for comm in COMMS
    if not (space == "gaussian" and comm == "mixture")
]


@pytest.mark.parametrize("space, objective, comm", CASES)
def test_loss_matches_numpy(space, objective, comm):
    continuous = space == "gaussian"
    network, params, batch, reference = problem(continuous)
    cfg = cfg_for(objective, comm)
    total, aux = jax_loss(cfg, continuous, network, params, batch, reference)
    expected, parts = np_loss(cfg, continuous, params, batch, reference)
    for name, value in parts.items():
        np.testing.assert_allclose(float(aux[name]), value, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(total), expected, rtol=2e-5, atol=1e-6)
    if comm != "off":
        assert parts["comm_kl"] > 1e-3  # the term is really there


@pytest.mark.parametrize("objective", ["kl", "mdpo"])
def test_gaussian_mixture_kl_is_a_consistent_monte_carlo_estimate(objective):
    """KL[m || pi] (or KL[pi || m] for mdpo) against quadrature; the rest exactly."""
    network, params, batch, reference = problem(True)
    cfg = cfg_for(objective, "mixture", mixture_samples=4096)
    total, aux = jax_loss(cfg, True, network, params, batch, reference)
    peer_dists = np.stack(
        [
            np_forward(
                jax.tree.map(lambda x, i=i: x[i], reference.peer_params),
                np.asarray(batch[0].obs, float),
                True,
            )[0]
            for i in range(PEERS)
        ]
    )
    policy = np_forward(params, np.asarray(batch[0].obs, float), True)[0]
    weights = np.asarray(reference.peer_weights, float)
    exact = np.mean(np_gaussian_mixture_kl(policy, peer_dists, weights, objective == "mdpo"))
    assert exact > 0.05
    np.testing.assert_allclose(float(aux["comm_kl"]), exact, rtol=0.03)
    # Given the estimate, the loss is the NumPy loss exactly.
    expected, _ = np_loss(cfg, True, params, batch, reference, comm_kl=float(aux["comm_kl"]))
    np.testing.assert_allclose(float(total), expected, rtol=2e-5, atol=1e-6)
    # Another key, another estimate; the same key, the same estimate.
    again = jax_loss(cfg, True, network, params, batch, reference, key=0)[1]["comm_kl"]
    other = jax_loss(cfg, True, network, params, batch, reference, key=1)[1]["comm_kl"]
    assert float(again) == float(aux["comm_kl"]) != float(other)


def test_gaussian_mixture_of_identical_peers_is_the_closed_form():
    """A mixture of copies of one Gaussian is that Gaussian: the estimates agree with
    the closed-form KL up to Monte-Carlo error, KL[p || p] = 0 exactly."""
    rng = np.random.default_rng(0)
    p = jnp.asarray(np.concatenate([rng.normal(size=(5, 2)), 0.3 * rng.normal(size=(5, 2))], 1))
    q = jnp.asarray(np.concatenate([rng.normal(size=(5, 2)), 0.3 * rng.normal(size=(5, 2))], 1))
    copies, w = jnp.stack([p, p, p]), jnp.asarray([0.2, 0.5, 0.3])
    key = jax.random.PRNGKey(0)
    exact = np_kl(np.asarray(p, float), np.asarray(q, float), True)
    forward = networks.kl_from_mixture_mc(key, copies, w, q, 20000)
    backward = networks.kl_to_mixture_mc(key, q, copies, w, 20000)
    np.testing.assert_allclose(forward, exact, rtol=0.05, atol=0.02)
    np.testing.assert_allclose(
        backward, np_kl(np.asarray(q, float), np.asarray(p, float), True), rtol=0.05, atol=0.02
    )
    np.testing.assert_allclose(networks.kl_to_mixture_mc(key, p, copies, w, 16), 0.0, atol=1e-5)


# ------------------------------------------------------------------ the local update


def _ppo_config(**fields):
    config = tiny_config(federation__num_clients=1)
    for name, value in fields.items():
        config = replace_path(config, f"algo.ppo.{name}", value)
    return config


def _one_update(config, num_updates=1):
    envs = make_client_envs(config.env, 1)
    algo = algorithms.make(config, envs.env, envs.default_params)
    env_params = jax.tree.map(lambda x: x[0], envs.client_params(jax.random.PRNGKey(0)))
    state = algo.init(jax.random.PRNGKey(1), env_params)
    global_params = algo.get_params(state)
    reference = Reference(
        global_params,
        jax.tree.map(lambda x: jnp.stack([x, x]), global_params),
        jnp.asarray([0.5, 0.5]),
    )
    update = jax.jit(algo.local_update)
    for i in range(num_updates):
        state, metrics = update(jax.random.PRNGKey(2 + i), state, env_params, reference)
    return state, metrics, algo


@pytest.mark.slow
def test_comm_coef_zero_is_the_plain_objective():
    for objective in ("kl", "mdpo"):
        plain, _, _ = _one_update(_ppo_config(objective=objective))
        off, _, algo = _one_update(
            _ppo_config(objective=objective, comm_coef=0.0, comm_reference="mixture")
        )
        assert not algo.needs_peers
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(off), strict=True):
            np.testing.assert_array_equal(a, b)
    # A positive coefficient changes the update (the comparison can fail).
    on, metrics, algo = _one_update(
        _ppo_config(objective="mdpo", comm_coef=1.0, comm_reference="mixture")
    )
    assert algo.needs_peers and float(metrics["comm_kl"]) > 0
    assert not np.array_equal(
        on.params["params"]["actor"]["Dense_0"]["kernel"],
        off.params["params"]["actor"]["Dense_0"]["kernel"],
    )


def test_adaptive_beta_moves_in_the_documented_direction():
    """Schulman et al. 2017 sec. 4: beta x2 when KL > 1.5 target, / 2 when KL < target / 1.5."""
    far, metrics, _ = _one_update(_ppo_config(objective="kl", kl_coef=0.5, kl_target=1e-7), 2)
    assert float(metrics["approx_kl"]) > 1.5e-7
    assert float(far.kl_coef) == 2.0
    near, metrics, _ = _one_update(_ppo_config(objective="kl", kl_coef=0.5, kl_target=10.0), 2)
    assert float(metrics["approx_kl"]) < 10.0 / 1.5
    assert float(near.kl_coef) == 0.125
    fixed, _, _ = _one_update(_ppo_config(objective="kl", kl_coef=0.5), 2)
    assert float(fixed.kl_coef) == 0.5


@pytest.mark.slow
def test_continuous_mixture_runs_in_the_federated_round():
    """Pendulum with the Monte-Carlo mixture KL: finite, and the term is active."""
    config = tiny_config(
        env__name="Pendulum-v1",
        algo__ppo__comm_coef=1.0,
        algo__ppo__comm_reference="mixture",
        algo__ppo__mixture_samples=2,
        federation__rounds=2,
    )
    sim = make_simulator(config)
    state, metrics = sim.run_block(sim.init(jax.random.PRNGKey(0)), 2)
    assert sim.algorithm.needs_peers
    # An unbiased estimate of a small KL may fall below 0; it must be there and finite.
    assert np.all(np.isfinite(metrics["comm_kl"])) and np.all(metrics["comm_kl"] != 0)


# ------------------------------------------------------------------ learning

VARIANTS = {
    "none": {"objective": "none"},
    "kl_fixed": {"objective": "kl", "kl_coef": 0.5},
    "kl_adaptive": {"objective": "kl", "kl_coef": 0.5, "kl_target": 0.01},
    "mdpo": {"objective": "mdpo", "kl_coef": 0.5},
    "kl_comm_global": {"objective": "kl", "kl_coef": 0.5, "comm_coef": 1.0},
    "mdpo_comm_mixture": {
        "objective": "mdpo",
        "kl_coef": 0.5,
        "comm_coef": 1.0,
        "comm_reference": "mixture",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_learns_cartpole(variant):
    config = tiny_config(
        federation__num_clients=4,
        federation__rounds=8,
        federation__local_updates=4,
        algo__ppo__num_envs=4,
        algo__ppo__num_steps=64,
        algo__ppo__num_minibatches=4,
        algo__ppo__update_epochs=4,
        algo__ppo__hidden_sizes=[64, 64],
    )
    config = dataclasses.replace(config, seed=0)
    for name, value in VARIANTS[variant].items():
        config = replace_path(config, f"algo.ppo.{name}", value)
    sim = make_simulator(config)
    state, metrics = sim.run_block(sim.init(jax.random.PRNGKey(0)), 8)
    final_eval = float(sim.evaluate(state, jax.random.PRNGKey(9)).mean())
    returns = np.asarray(metrics["train_return_mean"])
    # Random CartPole policies last ~20 steps.
    assert returns[-1] >= 2.0 * returns[0], returns
    assert final_eval >= 150.0, (final_eval, returns)
