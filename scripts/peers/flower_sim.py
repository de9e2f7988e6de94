"""(c) Flower's simulation engine (Ray) with the same SB3 PPO clients.

The idiomatic Flower >= 1.20 Message API: a `ClientApp` whose `train` loads
the broadcast arrays into the client's SB3 PPO, runs `learn` and replies with
its parameters and `num-examples`; a `ServerApp` running Flower's `FedAvg`
strategy, with the global policy evaluated centrally through `evaluate_fn`
(timed apart, like the other systems' evaluation).

Flower's `ClientApp`s are stateless between rounds (they may even run in a
different Ray actor each round), so a client's SB3 model -- Adam moments,
running environments, step counter -- is kept where Flower says to keep
client state, `context.state`, as a pickled blob; that is what matches the
other two systems, where clients keep their optimiser state and environments.
Ray is started before the simulation (the same `ray.init` call Flower would
make) so its start-up time shows up in setup, not in round 1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from scripts.peers.common import BenchSpec, PeakMemory, Recorder, now, versions

PACKAGES = ("flwr", "ray", "stable-baselines3", "torch", "gymnasium", "numpy")
STATE_KEY = "sb3-client"


def make_client_app(spec: BenchSpec):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import cloudpickle
        import torch

        from scripts.peers import sb3_common as sb3

        torch.set_num_threads(max(1, spec.torch_threads))
        client = int(context.node_config["partition-id"])
        if STATE_KEY in context.state:
            model = cloudpickle.loads(context.state[STATE_KEY]["blob"])
        else:
            model = sb3.make_client(spec, client)
        sb3.set_params(model, msg.content["arrays"].to_torch_state_dict())
        model.learn(total_timesteps=spec.steps_per_client_round, reset_num_timesteps=False)
        context.state[STATE_KEY] = ConfigRecord({"blob": cloudpickle.dumps(model)})
        content = RecordDict(
            {
                "arrays": ArrayRecord(sb3.get_params(model)),
                "metrics": MetricRecord(
                    {"num-examples": spec.steps_per_client_round, "steps": model.num_timesteps}
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def make_server_app(spec: BenchSpec, recorder: Recorder, evaluator, eval_policy, initial):
    from flwr.app import ArrayRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from scripts.peers import sb3_common as sb3

    app = ServerApp()
    marks: dict[str, Any] = {"last_end": None, "steps": []}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        start = now()
        sb3.set_params(eval_policy, arrays.to_torch_state_dict())
        returns = evaluator(eval_policy.policy)
        end = now()
        if server_round == 0:
            recorder.setup_s = start - recorder.start
            recorder.eval_setup_s += end - start
        else:
            flat = [float(x) for x in returns.reshape(-1)]
            recorder.add_round(start - marks["last_end"], end - start, flat)
        marks["last_end"] = end
        return MetricRecord({"eval_return_mean": float(returns.mean())})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=spec.clients,
            min_available_nodes=spec.clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=spec.rounds,
            evaluate_fn=evaluate_fn,
        )

    return app


def run(spec: BenchSpec, start: float) -> dict[str, Any]:
    """Runs the task; `start` is the worker process's first timestamp."""
    memory = PeakMemory()
    import ray
    from flwr.simulation import run_simulation

    from scripts.peers import sb3_common as sb3

    sb3.set_torch_threads(spec)
    recorder = Recorder("flower", spec, start)
    # The model every client starts from (client 0's init, as in the SB3 loop).
    eval_model = sb3.make_client(spec, 0)
    initial = sb3.get_params(eval_model)
    evaluator = sb3.Evaluator(spec)

    # What Flower's Ray backend does when Ray is not running yet, timed here.
    t = now()
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        include_dashboard=False,
        num_cpus=spec.flower_actors,
        logging_level="ERROR",
    )
    ray_start_s = now() - t

    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": spec.flower_actors},
    }
    run_simulation(
        server_app=make_server_app(spec, recorder, evaluator, eval_model, initial),
        client_app=make_client_app(spec),
        num_supernodes=spec.clients,
        backend_config=backend_config,
    )
    result_memory = memory.stop()
    if len(recorder.rounds) != spec.rounds:
        raise RuntimeError(f"Flower ran {len(recorder.rounds)} of {spec.rounds} rounds")
    recorder.extra.update(
        {
            "ray_start_s": ray_start_s,
            "flower_actors": spec.flower_actors,
            "torch_threads_per_actor": max(1, spec.torch_threads),
        }
    )
    return recorder.result(result_memory, versions(PACKAGES))
