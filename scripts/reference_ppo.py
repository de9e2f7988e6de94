"""A plain one-file federated PPO, as a user would write it: the benchmark's yardstick.

PureJaxRL-style (`make_round(config) -> round(state)`), one device, no jfedrl
imports: C clients each run `local_updates` PPO updates on their own CartPole
(gymnax), vmapped, then FedAvg replaces every client's params with the mean.
Same shapes and hyperparameters as `scripts/bench_throughput.py`'s jfedrl
config: 4 envs x 128 steps, 4 epochs x 4 minibatches, MLP 2x64 tanh, Adam
2.5e-3 (no annealing here: a constant costs the same), clip 0.2, GAE
0.99/0.95, entropy 0.01, value 0.5, grad norm 0.5.

Usage (prints one JSON line: compile seconds, env steps/s):
    python -m scripts.reference_ppo --clients 64 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import time
from typing import NamedTuple

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import optax

from scripts.bench_throughput import hlo_op_counts, time_blocks  # the benchmark's own

NUM_ENVS, NUM_STEPS, EPOCHS, MINIBATCHES, LOCAL_UPDATES = 4, 128, 4, 4, 4
LR, GAMMA, LAMBDA, CLIP, ENT, VF, MAX_NORM = 2.5e-3, 0.99, 0.95, 0.2, 0.01, 0.5, 0.5


class ActorCritic(nn.Module):
    actions: int

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.orthogonal
        a = nn.tanh(nn.Dense(64, kernel_init=init(2**0.5))(x))
        a = nn.tanh(nn.Dense(64, kernel_init=init(2**0.5))(a))
        logits = nn.Dense(self.actions, kernel_init=init(0.01))(a)
        c = nn.tanh(nn.Dense(64, kernel_init=init(2**0.5))(x))
        c = nn.tanh(nn.Dense(64, kernel_init=init(2**0.5))(c))
        return logits, nn.Dense(1, kernel_init=init(1.0))(c)[..., 0]


class Client(NamedTuple):
    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array
    key: jax.Array


def make_round(clients: int):
    """Returns (init(key) -> stacked clients, fed_round(clients) -> (clients, loss))."""
    env, env_params = gymnax.make("CartPole-v1")
    net = ActorCritic(env.action_space(env_params).n)
    tx = optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.adam(LR, eps=1e-5))

    def init_client(key):
        k_net, k_env, key = jax.random.split(key, 3)
        params = net.init(k_net, jnp.zeros(env.observation_space(env_params).shape))
        obs, env_state = jax.vmap(env.reset, (0, None))(
            jax.random.split(k_env, NUM_ENVS), env_params
        )
        return Client(params, tx.init(params), env_state, obs, key)

    def loss_fn(params, batch):
        obs, action, logp_old, adv, target = batch
        logits, value = net.apply(params, obs)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, action[:, None], 1)[:, 0]
        ratio = jnp.exp(logp - logp_old)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - CLIP, 1 + CLIP) * adv).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        return pg + VF * ((value - target) ** 2).mean() - ENT * entropy

    def local_update(client: Client, _):
        def step(carry, _):
            env_state, obs, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            logits, value = net.apply(client.params, obs)
            action = jax.random.categorical(k_act, logits)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
            obs2, env_state, reward, terminated, truncated, _ = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(k_env, NUM_ENVS), env_state, action, env_params
            )
            done = jnp.logical_or(terminated, truncated)
            return (env_state, obs2, key), (obs, action, logp, value, reward, done.astype(float))

        (env_state, obs, key), traj = jax.lax.scan(
            step, (client.env_state, client.obs, client.key), None, NUM_STEPS
        )
        t_obs, t_action, t_logp, t_value, t_reward, t_done = traj
        _, last_value = net.apply(client.params, obs)

        def gae(carry, x):
            advantage, next_value = carry
            value, reward, done = x
            delta = reward + GAMMA * next_value * (1 - done) - value
            advantage = delta + GAMMA * LAMBDA * (1 - done) * advantage
            return (advantage, value), advantage

        _, adv = jax.lax.scan(
            gae,
            (jnp.zeros_like(last_value), last_value),
            (t_value, t_reward, t_done),
            reverse=True,
        )
        batch = (t_obs, t_action, t_logp, adv, adv + t_value)
        batch = jax.tree.map(lambda x: x.reshape((NUM_STEPS * NUM_ENVS,) + x.shape[2:]), batch)

        def epoch(carry, _):
            params, opt_state, key = carry
            key, k_perm = jax.random.split(key)
            perm = jax.random.permutation(k_perm, NUM_STEPS * NUM_ENVS)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((MINIBATCHES, -1) + x.shape[1:]), batch
            )

            def minibatch(carry, mb):
                params, opt_state = carry
                loss, grads = jax.value_and_grad(loss_fn)(params, mb)
                updates, opt_state = tx.update(grads, opt_state)
                return (optax.apply_updates(params, updates), opt_state), loss

            (params, opt_state), losses = jax.lax.scan(minibatch, (params, opt_state), shuffled)
            return (params, opt_state, key), losses.mean()

        (params, opt_state, key), losses = jax.lax.scan(
            epoch, (client.params, client.opt_state, key), None, EPOCHS
        )
        return Client(params, opt_state, env_state, obs, key), losses.mean()

    def client_round(client: Client):
        return jax.lax.scan(local_update, client, None, LOCAL_UPDATES)

    def fed_round(stacked: Client):
        stacked, losses = jax.vmap(client_round)(stacked)
        mean = jax.tree.map(lambda x: jnp.broadcast_to(x.mean(0), x.shape), stacked.params)
        return stacked._replace(params=mean), losses.mean()

    def init(key):
        return jax.vmap(init_client)(jax.random.split(key, clients))

    return init, fed_round


def measure(clients: int, seconds: float) -> dict:
    """Compile seconds and env steps/s of the reference round at `clients` clients."""
    init, fed_round = make_round(clients)
    state = jax.jit(init)(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = jax.jit(fed_round, donate_argnums=0).lower(state).compile()
    compile_seconds = time.perf_counter() - start
    _, rounds, run_seconds = time_blocks(compiled, state, seconds)
    steps = clients * LOCAL_UPDATES * NUM_ENVS * NUM_STEPS * rounds
    return {
        "clients": clients,
        "compile_seconds": compile_seconds,
        "env_steps_per_second": steps / run_seconds,
        "devices": jax.device_count(),
        "hlo_ops": hlo_op_counts(compiled),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.clients, args.seconds)))


if __name__ == "__main__":
    main()
