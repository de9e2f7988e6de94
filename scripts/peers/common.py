"""What every compared system shares: the task spec, timers, memory, results.

Only the standard library and psutil are imported here, so every side (the
jfedrl venv and a Flower venv without jax) can import it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import Any

REWARD_THRESHOLD = 475.0
"""CartPole-v1's "solved" return (gymnasium's `reward_threshold`)."""


@dataclass(frozen=True)
class BenchSpec:
    """One federated PPO task on CartPole-v1, identical for every system.

    Defaults are PureJaxRL's / CleanRL's CartPole PPO settings, which are also
    jfedrl's `PPOConfig` defaults: 4 envs x 128 steps per local update, 4
    epochs of 4 minibatches, lr 2.5e-4 annealed linearly to 0 over the run,
    2x64 tanh actor and critic.
    """

    clients: int = 4
    rounds: int = 16
    local_updates: int = 4
    num_envs: int = 4
    num_steps: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    eval_episodes: int = 4
    seed: int = 0
    torch_threads: int = 1
    """Threads for torch (0: torch's default, one per core). One is SB3's best
    on a small CPU: torch's two threads ran it 5-10x slower here under load."""
    flower_actors: int = 2
    """Flower simulation: clients trained in parallel (Ray actors)."""

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def steps_per_client_round(self) -> int:
        return self.local_updates * self.steps_per_update

    @property
    def steps_per_round(self) -> int:
        return self.clients * self.steps_per_client_round

    @property
    def minibatch_size(self) -> int:
        return self.steps_per_update // self.num_minibatches

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSpec:
        data = dict(data)
        data["hidden"] = tuple(data.get("hidden", (64, 64)))
        return cls(**data)


class PeakMemory:
    """Peak resident memory and CPU time of this process and its descendants.

    `ru_maxrss` is exact for this process; a sampling thread (every
    `interval` seconds) adds the children, e.g. Ray's workers for Flower.
    CPU seconds (user + system, all threads, all processes) measure the work
    done independently of how busy the machine is, unlike wall time.
    """

    def __init__(self, interval: float = 0.05):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._peak_tree = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree_rss(self) -> int:
        total = 0
        try:
            processes = [self._process, *self._process.children(recursive=True)]
        except Exception:  # noqa: BLE001 - a process may vanish while listed
            return 0
        for proc in processes:
            try:
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self._cpu[proc.pid] = times.user + times.system
            except Exception:  # noqa: BLE001
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak_tree = max(self._peak_tree, self._tree_rss())
            self._stop.wait(self._interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        times = self._process.cpu_times()
        self._cpu[self._process.pid] = times.user + times.system
        return {
            "cpu_s": sum(self._cpu.values()),
            "peak_rss_mb": max(self_peak, self._peak_tree) / 2**20,
            "peak_rss_self_mb": self_peak / 2**20,
            "peak_rss_tree_sampled_mb": self._peak_tree / 2**20,
        }


def versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


class Recorder:
    """Collects the phases of one system's run into the shared result format.

    Wall time (the headline) = setup + compile + training; evaluation of the
    global policy after every round is timed apart and excluded, on every
    side, since it is a measurement protocol and not part of the training.
    """

    def __init__(self, system: str, spec: BenchSpec, start: float):
        self.system = system
        self.spec = spec
        self.start = start
        self.setup_s = 0.0
        self.compile_s = 0.0
        self.eval_setup_s = 0.0
        self.extra: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        self.load_start = os.getloadavg()

    def add_round(self, train_s: float, eval_s: float, returns: list[float]) -> None:
        previous = self.rounds[-1]["wall_s"] if self.rounds else self.setup_s + self.compile_s
        mean = sum(returns) / len(returns)
        self.rounds.append(
            {
                "round": len(self.rounds) + 1,
                "train_s": train_s,
                "wall_s": previous + train_s,
                "eval_s": eval_s,
                "eval_return_mean": mean,
                "eval_return_min": min(returns),
                "eval_return_max": max(returns),
            }
        )

    def result(self, memory: dict[str, float], packages: dict[str, str]) -> dict[str, Any]:
        spec = self.spec
        train_s = sum(r["train_s"] for r in self.rounds)
        wall_s = self.setup_s + self.compile_s + train_s
        steps = spec.steps_per_round * len(self.rounds)
        later = self.rounds[1:]
        later_s = sum(r["train_s"] for r in later)
        reached = next((r for r in self.rounds if r["eval_return_mean"] >= REWARD_THRESHOLD), None)
        return {
            "system": self.system,
            "clients": spec.clients,
            "rounds": len(self.rounds),
            "local_updates": spec.local_updates,
            "env_steps_per_client_round": spec.steps_per_client_round,
            "env_steps_total": steps,
            "setup_s": self.setup_s,
            "compile_s": self.compile_s,
            "train_s": train_s,
            "wall_s": wall_s,
            "eval_s": self.eval_setup_s + sum(r["eval_s"] for r in self.rounds),
            "steps_per_s": steps / train_s if train_s > 0 else None,
            "steps_per_s_wall": steps / wall_s if wall_s > 0 else None,
            # Rounds 2.. only: leaves out one-time work inside round 1 (Flower's actors).
            "steps_per_s_after_round1": (
                spec.steps_per_round * len(later) / later_s if later_s > 0 else None
            ),
            "time_to_475_s": reached["wall_s"] if reached else None,
            "round_to_475": reached["round"] if reached else None,
            "final_eval_return": self.rounds[-1]["eval_return_mean"] if self.rounds else None,
            "per_round": self.rounds,
            "extrapolated": False,
            "loadavg_start": list(self.load_start),
            "loadavg_end": list(os.getloadavg()),
            "spec": spec.to_dict(),
            "packages": packages,
            **memory,
            "steps_per_cpu_s": steps / memory["cpu_s"] if memory.get("cpu_s") else None,
            **self.extra,
        }


def now() -> float:
    return time.perf_counter()
