"""The names users type: `fedprox`, nearest-name suggestions, where features live,
and a `jfedrl envs` listing free of third-party warnings."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jfedrl import algorithms
from jfedrl.algorithms import with_fedprox
from jfedrl.algorithms.base import Reference
from jfedrl.cli.app import build_parser, config_from_args
from jfedrl.round.environment import make_client_envs
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import replace_path
from jfedrl.validation import validate
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _cli_config(*flags):
    return config_from_args(build_parser().parse_args(["train", *flags]))


def test_fedprox_strategy_routes_prox_mu_to_the_algorithm():
    config = _cli_config("--strategy", "fedprox", "--strategy.fedprox.mu", "0.25", "--algo", "a2c")
    validate(config)
    assert config.strategy.name == "fedprox" and config.algo.a2c.prox_mu == 0.0
    routed = with_fedprox(config)
    assert routed.algo.a2c.prox_mu == 0.25 and routed.algo.ppo.prox_mu == 0.0
    fedavg = replace_path(config, "strategy.name", "fedavg")
    assert with_fedprox(fedavg) == fedavg  # other strategies are left alone


def _one_update(config):
    envs = make_client_envs(config.env, 1)
    algo = algorithms.make(config, envs.env, envs.default_params)
    env_params = jax.tree.map(lambda x: x[0], envs.client_params(jax.random.PRNGKey(0)))
    state = algo.init(jax.random.PRNGKey(1), env_params)
    # The global params sit away from the client's, so the proximal term pulls.
    far = jax.tree.map(lambda x: x + 0.5, algo.get_params(state))
    state, metrics = jax.jit(algo.local_update)(
        jax.random.PRNGKey(2), state, env_params, Reference(far)
    )
    return algo.get_params(state), metrics


@pytest.mark.slow
def test_fedprox_is_fedavg_plus_the_algorithms_proximal_term():
    base = tiny_config(federation__num_clients=1)
    fedprox, fedprox_metrics = _one_update(
        replace_path(replace_path(base, "strategy.name", "fedprox"), "strategy.fedprox.mu", 0.5)
    )
    by_hand, _ = _one_update(replace_path(base, "algo.ppo.prox_mu", 0.5))
    plain, _ = _one_update(base)
    for a, b in zip(jax.tree.leaves(fedprox), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(fedprox_metrics["prox"]) > 0
    kernel = ("params", "actor", "Dense_0", "kernel")

    def leaf(tree):
        for k in kernel:
            tree = tree[k]
        return np.asarray(tree)

    assert not np.array_equal(leaf(fedprox), leaf(plain))
    # The server side is fedavg: the same aggregation on the same inputs.
    sim = make_simulator(replace_path(base, "strategy.name", "fedprox"))
    assert sim.algorithm is not None and sim.config.strategy.name == "fedprox"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"strategy.fedprox.mu": 0.0}, "strategy.fedprox.mu: must be > 0"),
        ({"algo.ppo.prox_mu": 0.1}, "algo.ppo.prox_mu: 0.1 contradicts strategy.fedprox.mu=0.01"),
    ],
)
def test_fedprox_rejects_a_missing_or_contradicting_mu(fields, message):
    config = tiny_config(strategy__name="fedprox")
    for path, value in fields.items():
        config = replace_path(config, path, value)
    with pytest.raises(ConfigError, match=message):
        validate(config)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("strategy.name", "fedprx", "Did you mean 'fedprox'?"),
        ("strategy.name", "trimmed", "Did you mean 'trimmed_mean'?"),
        ("strategy.name", "pso", "evolutionary.algorithm pso"),
        ("strategy.name", "fedasync", "--federation.staleness K"),
        ("strategy.name", "clip", "--strategy.clip-update-norm S"),
        ("algo.name", "ddpg", "--algo td3 --td3.ddpg true"),
        ("algo.name", "double_dqn", "--algo dqn --dqn.double true"),
        ("algo.name", "a3c", "--algo a2c"),
        ("algo.name", "mdpo", "--ppo.objective mdpo"),
        ("algo.name", "pp0", "Did you mean 'ppo'?"),
        ("env.name", "cartpole", "Did you mean 'CartPole-v1'?"),
        ("env.variant", "extrem", "Did you mean 'extreme'?"),
        ("env.drift", "sinus", "Did you mean 'sinusoidal'?"),
        ("env.disturbance", "impuls", "Did you mean 'impulse'?"),
        ("offload.executor", "locl", "Did you mean 'local'?"),
        ("offload.quantize", "int9", "Did you mean 'int8'?"),
        ("federation.sampling", "weight", "Did you mean 'weighted'?"),
        ("algo.ppo.objective", "adaptive_kl", "--ppo.objective kl --ppo.kl-target"),
        ("algo.ppo.objective", "clipped", "Did you mean 'clip'?"),
        ("strategy.reward_weighted.weighting", "softmx", "Did you mean 'softmax'?"),
        ("strategy.multi_krum.weighting", "steps", "Did you mean 'num_steps'?"),
    ],
)
def test_unknown_names_suggest_the_nearest_or_say_where(path, value, expected):
    config = replace_path(tiny_config(federation__num_clients=8), path, value)
    owner = {
        "strategy.reward_weighted.weighting": "reward_weighted",
        "strategy.multi_krum.weighting": "multi_krum",
    }
    if path in owner:  # a strategy's own field is checked when that strategy runs
        config = replace_path(config, "strategy.name", owner[path])
    with pytest.raises(ValueError) as error:
        make_simulator(config)  # validates, then builds the envs: nothing compiles
    message = str(error.value)
    assert expected in message, message
    assert f"{value!r}" in message and "allowed" in message


def test_unknown_algorithm_option_suggests_the_nearest():
    config = tiny_config(algo__name="dqn", algo__dqn__loss="hubber")
    with pytest.raises(ConfigError, match="algo.dqn.loss: .*Did you mean 'huber'"):
        validate(config)


def test_unknown_config_fields_suggest_the_nearest():
    with pytest.raises(ConfigError, match="federation.num_client: .*Did you mean 'num_clients'"):
        replace_path(tiny_config(), "federation.num_client", 3)
    from jfedrl.config import from_dict

    with pytest.raises(ConfigError, match="strategy.krum.ff: .*Did you mean 'f'"):
        from_dict({"strategy": {"krum": {"ff": 1}}})


def test_registry_lookups_suggest_too():
    from jfedrl import strategies

    with pytest.raises(ValueError, match="Did you mean 'fedavg'"):
        strategies.get("fedavgg")
    with pytest.raises(ValueError, match="Did you mean 'td3'"):
        algorithms.get("td4")


@pytest.mark.slow
def test_envs_listing_has_no_third_party_warnings():
    out = subprocess.run(
        [sys.executable, "-m", "jfedrl.cli", "envs"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "brax-halfcheetah" in out.stdout  # the env whose MuJoCo model used to warn
    for stream in (out.stdout, out.stderr):
        assert "settotalmass" not in stream and "warning" not in stream.lower(), stream[-2000:]


def test_third_party_quiet_restores_stderr(capfd):
    from jfedrl.cli.app import third_party_quiet

    with third_party_quiet():
        os.write(2, b"from C\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "from C" not in err and "after" in err
