"""Tiny configs shared by the tests (compile fast on 2 CPU cores)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging

import jax
import numpy as np

from jfedrl.config import Config
from jfedrl.schema.convert import override


def tiny_config(**overrides) -> Config:
    """A few clients, short rollouts, no TensorBoard/plot/progress.

    Keyword names use `__` for dots: `federation__num_clients=3`.
    """
    config = Config()
    base = {
        "federation.num_clients": 3,
        "federation.rounds": 4,
        "federation.local_updates": 2,
        "algo.ppo.num_envs": 2,
        "algo.ppo.num_steps": 16,
        "algo.ppo.num_minibatches": 2,
        "algo.ppo.update_epochs": 2,
        "algo.ppo.hidden_sizes": [16, 16],
        "log.rounds_per_block": 2,
        "log.eval_episodes": 2,
        "log.tensorboard": False,
        "log.plot": False,
        "log.progress": False,
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return override(config, base)


def with_run_dir(config: Config, run_dir) -> Config:
    return dataclasses.replace(config, log=dataclasses.replace(config.log, run_dir=str(run_dir)))


def equal_trees(a, b) -> bool:
    """True if two pytrees have the same leaves, bit for bit."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(leaves_a) != len(leaves_b):
        return False
    pairs = zip(leaves_a, leaves_b, strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


def row(tree, i):
    """Client `i` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


@contextlib.contextmanager
def compiled_programs():
    """Yields a list that collects jax's compiled program names ("jit(NAME)") in the block."""
    names: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Finished XLA compilation of "):
                names.append(message.split(" of ", 1)[1].split(" in ")[0])

    handler, jax_log = Collect(logging.WARNING), logging.getLogger("jax")
    jax_log.addHandler(handler)
    try:
        with jax.log_compiles():
            yield names
    finally:
        jax_log.removeHandler(handler)


class Terminal(io.StringIO):
    """A captured stderr that says it is a terminal (the bar is drawn only on one)."""

    def isatty(self):
        return True
