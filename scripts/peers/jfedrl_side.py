"""(a) jfedrl: the whole federated round vmapped over clients and jitted.

Rounds run one at a time (`run_block(state, 1)`, compiled ahead of time so
compilation is timed apart from training) and the global policy is evaluated
between rounds with `Simulator.evaluate`, timed apart as well.
"""

from __future__ import annotations

from typing import Any

from scripts.peers.common import BenchSpec, PeakMemory, Recorder, now, versions

PACKAGES = ("jfedrl", "jax", "jaxlib", "flax", "optax", "gymnax", "numpy")


def make_config(spec: BenchSpec):
    """The jfedrl `Config` for the shared task (every PPO field set explicitly)."""
    from jfedrl.algorithms.ppo_config import PPOConfig
    from jfedrl.config import (
        AlgoConfig,
        Config,
        EnvConfig,
        FederationConfig,
        LogConfig,
        StrategyConfig,
    )

    ppo = PPOConfig(
        num_envs=spec.num_envs,
        num_steps=spec.num_steps,
        update_epochs=spec.update_epochs,
        num_minibatches=spec.num_minibatches,
        learning_rate=spec.learning_rate,
        anneal_lr=spec.anneal_lr,
        gamma=spec.gamma,
        gae_lambda=spec.gae_lambda,
        clip_eps=spec.clip_eps,
        ent_coef=spec.ent_coef,
        vf_coef=spec.vf_coef,
        max_grad_norm=spec.max_grad_norm,
        hidden_sizes=tuple(spec.hidden),
        activation="tanh",
        objective="clip",
    )
    return Config(
        seed=spec.seed,
        env=EnvConfig(name="CartPole-v1"),
        algo=AlgoConfig(name="ppo", ppo=ppo),
        strategy=StrategyConfig(name="fedavg"),
        federation=FederationConfig(
            num_clients=spec.clients, rounds=spec.rounds, local_updates=spec.local_updates
        ),
        log=LogConfig(eval_episodes=spec.eval_episodes),
    )


def run(spec: BenchSpec, start: float, cache_dir: str | None, cache_state: str) -> dict[str, Any]:
    """Runs the task; `start` is the worker process's first timestamp.

    Args:
        spec: the shared task.
        start: `time.perf_counter()` at process start (imports count as setup).
        cache_dir: JAX persistent compilation cache folder (None: off).
        cache_state: `cold` or `warm`, recorded in the result.

    Returns:
        The result dict (see `common.Recorder.result`).
    """
    memory = PeakMemory()
    import jax

    from jfedrl.round.simulator import Simulator, make_simulator

    if cache_dir:
        from jfedrl.run.runner import enable_compilation_cache

        enable_compilation_cache(cache_dir)
    recorder = Recorder("jfedrl", spec, start)
    sim = make_simulator(make_config(spec))
    if sim.env_steps_per_round != spec.steps_per_round:
        raise RuntimeError(
            f"jfedrl runs {sim.env_steps_per_round} env steps per round, "
            f"the spec says {spec.steps_per_round}"
        )
    state = jax.block_until_ready(jax.jit(sim.init)(jax.random.PRNGKey(spec.seed)))
    recorder.setup_s = now() - start

    t = now()
    lowered = Simulator.run_block.lower(sim, state, 1)
    trace_s = now() - t
    run_round = lowered.compile()
    recorder.compile_s = now() - t

    t = now()
    eval_key = jax.random.PRNGKey(spec.seed + 1)
    evaluate = Simulator.evaluate.lower(sim, state, eval_key).compile()
    recorder.eval_setup_s = now() - t

    for index in range(spec.rounds):
        t = now()
        state, _ = run_round(state)
        jax.block_until_ready(state)
        train_s = now() - t
        t = now()
        returns = jax.device_get(evaluate(state, jax.random.fold_in(eval_key, index)))
        eval_s = now() - t
        recorder.add_round(train_s, eval_s, [float(x) for x in returns.reshape(-1)])

    recorder.extra.update(
        {
            "compilation_cache": cache_state if cache_dir else "off",
            "eval_compile_s": recorder.eval_setup_s,
            "compile_trace_lower_s": trace_s,
            "compile_xla_s": recorder.compile_s - trace_s,
            "devices": [str(d) for d in jax.devices()],
        }
    )
    return recorder.result(memory.stop(), versions(PACKAGES))
