"""Stable-Baselines3 PPO clients set up to match jfedrl's PPO, and their FedAvg.

Matching choices (see docs/benchmarks.md for the full list):

- Network: `net_arch=dict(pi=[64, 64], vf=[64, 64])`, tanh, orthogonal init
  (SB3's defaults; the same as jfedrl's separate actor and critic MLPs).
- Optimiser: one Adam (eps 1e-5) over all parameters, global grad-norm clip.
- Value loss: SB3 uses `mse` where jfedrl (PureJaxRL / CleanRL) uses
  `0.5 * mse` with PPO2-style value clipping. SB3 gets `vf_coef / 2` so the
  value term has the same weight; SB3 has no PPO2-style value clipping
  (`clip_range_vf` clips differently), so it is left off.
- Learning-rate anneal: jfedrl anneals linearly to 0 over all rounds.
  `FedPPO` makes SB3's schedule read the progress over the whole federated
  run instead of over one `learn` call.
- Optimiser state stays on the client (not averaged), on both sides: a client
  overwrites its parameters with the global ones each round and keeps its Adam
  moments, exactly what jfedrl's `set_params` does.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from scripts.peers.common import BenchSpec

PACKAGES = ("stable-baselines3", "torch", "gymnasium", "numpy")


class FedPPO(PPO):
    """PPO whose learning-rate anneal spans the whole federated run.

    SB3 computes `progress_remaining` per `learn` call; across rounds of
    `learn(..., reset_num_timesteps=False)` it must instead be the fraction of
    the client's total steps over all rounds, as in jfedrl's optax schedule.
    """

    run_timesteps: int = 1

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        self._current_progress_remaining = max(0.0, 1.0 - num_timesteps / self.run_timesteps)


def set_torch_threads(spec: BenchSpec) -> None:
    if spec.torch_threads > 0:
        torch.set_num_threads(spec.torch_threads)


def make_client(spec: BenchSpec, client: int) -> FedPPO:
    """One client's SB3 PPO with its own 4 CartPole-v1 envs."""
    seed = spec.seed * 10_000 + client
    env = make_vec_env("CartPole-v1", n_envs=spec.num_envs, seed=seed)
    lr = spec.learning_rate
    model = FedPPO(
        "MlpPolicy",
        env,
        learning_rate=(lambda progress: lr * progress) if spec.anneal_lr else lr,
        n_steps=spec.num_steps,
        batch_size=spec.minibatch_size,
        n_epochs=spec.update_epochs,
        gamma=spec.gamma,
        gae_lambda=spec.gae_lambda,
        clip_range=spec.clip_eps,
        clip_range_vf=None,
        normalize_advantage=True,
        ent_coef=spec.ent_coef,
        vf_coef=spec.vf_coef / 2,
        max_grad_norm=spec.max_grad_norm,
        policy_kwargs={
            "net_arch": {"pi": list(spec.hidden), "vf": list(spec.hidden)},
            "activation_fn": torch.nn.Tanh,
            "ortho_init": True,
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.run_timesteps = spec.rounds * spec.steps_per_client_round
    return model


def get_params(model: PPO) -> dict[str, torch.Tensor]:
    """The federated part: the policy's parameters (a detached copy)."""
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


def set_params(model: PPO, params: dict[str, torch.Tensor]) -> None:
    """Loads params in place; Adam keeps its references and its moments."""
    model.policy.load_state_dict(params)


def fedavg(params: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """FedAvg, sum_k (n_k / n) w_k, over all clients at once (McMahan et al. 2017).

    Seed 000 averaged iteratively, `avg = (avg + w_k) / 2`, which weights the
    last client 1/2 and the first 1/2^(K-1); this is the plain weighted mean.
    """
    total = float(sum(weights))
    out = {}
    for name in params[0]:
        stacked = torch.stack([p[name] * (w / total) for p, w in zip(params, weights, strict=True)])
        out[name] = stacked.sum(0)
    return out


class Evaluator:
    """Deterministic evaluation of one policy: `episodes` per client env.

    The same protocol as `jfedrl.Simulator.evaluate`: every client's env runs
    `episodes` episodes of the argmax policy, capped at 500 steps by
    CartPole-v1's time limit; all C x episodes episodes step as one batch.
    """

    def __init__(self, spec: BenchSpec):
        self.count = spec.clients * spec.eval_episodes
        self.shape = (spec.clients, spec.eval_episodes)
        self.envs = [gym.make("CartPole-v1") for _ in range(self.count)]
        self.seed = spec.seed * 10_000 + 5_000
        self.calls = 0

    def __call__(self, policy) -> np.ndarray:
        seed = self.seed + self.calls * self.count
        self.calls += 1
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])
        totals = np.zeros(self.count)
        running = np.ones(self.count, dtype=bool)
        while running.any():
            index = np.flatnonzero(running)
            actions, _ = policy.predict(obs[index], deterministic=True)
            for i, action in zip(index, actions, strict=True):
                obs[i], reward, terminated, truncated, _ = self.envs[i].step(int(action))
                totals[i] += reward
                running[i] = not (terminated or truncated)
        return totals.reshape(self.shape)


def describe_threads() -> dict[str, Any]:
    return {"torch_threads": torch.get_num_threads()}
