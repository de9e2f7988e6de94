"""(b) The SB3 loop: one SB3 PPO per client, trained one after another, FedAvg.

This is seed 000's design (DeRL: train an SB3 agent per worker, average the
"DNA") done in one process without its bugs: every client starts from the same
global parameters, the average is the true (n_k / n) mean over all clients
rather than an iterative pairwise halving, environments and step counters
continue across rounds (`reset_num_timesteps=False`), and the learning-rate
anneal spans the whole run.
"""

from __future__ import annotations

from typing import Any

from scripts.peers.common import BenchSpec, PeakMemory, Recorder, now, versions


def run(spec: BenchSpec, start: float) -> dict[str, Any]:
    """Runs the task; `start` is the worker process's first timestamp."""
    memory = PeakMemory()
    from scripts.peers import sb3_common as sb3

    sb3.set_torch_threads(spec)
    recorder = Recorder("sb3_loop", spec, start)
    clients = [sb3.make_client(spec, i) for i in range(spec.clients)]
    global_params = sb3.get_params(clients[0])
    for model in clients[1:]:
        sb3.set_params(model, global_params)
    recorder.setup_s = now() - start

    t = now()
    evaluate = sb3.Evaluator(spec)
    recorder.eval_setup_s = now() - t

    weights = [float(spec.steps_per_client_round)] * spec.clients
    for _ in range(spec.rounds):
        t = now()
        trained = []
        for model in clients:
            sb3.set_params(model, global_params)
            model.learn(total_timesteps=spec.steps_per_client_round, reset_num_timesteps=False)
            trained.append(sb3.get_params(model))
        global_params = sb3.fedavg(trained, weights)
        train_s = now() - t
        t = now()
        sb3.set_params(clients[0], global_params)  # reloaded anyway at the next round
        returns = evaluate(clients[0].policy)
        eval_s = now() - t
        recorder.add_round(train_s, eval_s, [float(x) for x in returns.reshape(-1)])

    steps, expected = sum(m.num_timesteps for m in clients), spec.steps_per_round * spec.rounds
    if steps != expected:
        raise RuntimeError(f"SB3 ran {steps} env steps, expected {expected}")
    recorder.extra.update(sb3.describe_threads())
    return recorder.result(memory.stop(), versions(sb3.PACKAGES))
