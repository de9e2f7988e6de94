"""Partial participation, update validation and multi-device sharding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl.config import participants_per_round
from jfedrl.round.local import local_training, sample_participants
from jfedrl.round.simulator import make_simulator
from jfedrl.schema.checks import ConfigError
from jfedrl.validation import validate
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent

SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
from tests.helpers import tiny_config
from jfedrl.round.simulator import make_simulator
clients, participation = int(sys.argv[1]), float(sys.argv[2])
extra = json.loads(sys.argv[3])
sim = make_simulator(tiny_config(federation__num_clients=clients,
                                 federation__participation=participation, **extra))
state = sim.init(jax.random.PRNGKey(0))
state, metrics = sim.run_block(state, 3)
leaves = [np.ravel(np.asarray(x)).tolist() for x in jax.tree.leaves(state.global_params)]
print(json.dumps({"devices": jax.device_count(), "padded": sim.padded_participants,
                  "params": leaves,
                  "returns": np.asarray(metrics["train_return_mean"]).tolist(),
                  "participants": np.asarray(metrics["participants"]).tolist()}))
"""


def _run(clients, participation, devices, **extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, str(clients), str(participation), json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# 5 of 6 clients per round on 4 devices: padded to 8, neither count divides 4.
def test_sharded_over_4_devices_equals_one_device():
    clients, participation = 6, 5
    one = _run(clients, participation, 1)
    four = _run(clients, participation, 4)
    assert one["devices"] == 1 and four["devices"] == 4
    # 5 participants: 5 slots on one device, padded to 8 on four (3 masked slots).
    assert (one["padded"], four["padded"]) == (5, 8)
    assert one["participants"] == four["participants"]
    for a, b in zip(one["params"], four["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["returns"], four["returns"], rtol=1e-5)


def test_sharded_with_stale_starts_stragglers_and_peers_equals_one_device():
    """The per-device local training gets each input's right split: stale start params
    (one per client), stragglers' update counts (one per client), peers (replicated)."""
    extra = {
        "federation__staleness": 2,
        "federation__straggler_prob": 0.5,
        "algo__ppo__comm_coef": 0.1,
        "algo__ppo__comm_reference": "mixture",
    }
    one = _run(4, 1.0, 1, **extra)
    two = _run(4, 1.0, 2, **extra)
    assert (one["devices"], two["devices"]) == (1, 2)
    for a, b in zip(one["params"], two["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["returns"], two["returns"], rtol=1e-5)


def test_participants_are_a_reproducible_sample_of_the_right_size():
    ids = sample_participants(jax.random.PRNGKey(3), 10, 4)
    again = sample_participants(jax.random.PRNGKey(3), 10, 4)
    other = sample_participants(jax.random.PRNGKey(4), 10, 4)
    assert ids.shape == (4,) and len(set(ids.tolist())) == 4
    assert ids.tolist() == again.tolist() and ids.tolist() != other.tolist()
    assert sorted(ids.tolist()) == ids.tolist() and max(ids.tolist()) < 10


def test_participation_fraction_and_count():
    assert (
        participants_per_round(
            tiny_config(federation__num_clients=10, federation__participation=0.5).federation
        )
        == 5
    )
    assert (
        participants_per_round(
            tiny_config(federation__num_clients=10, federation__participation=3).federation
        )
        == 3
    )
    with pytest.raises(ConfigError, match="federation.participation: 12.0 exceeds"):
        validate(tiny_config(federation__num_clients=10, federation__participation=12))


@pytest.fixture(scope="module")
def partial_sim():
    return make_simulator(tiny_config(federation__num_clients=5, federation__participation=0.4))


def test_non_participants_keep_their_local_state(partial_sim):
    state = partial_sim.init(jax.random.PRNGKey(0))
    new_state, metrics = jax.jit(partial_sim.round_step)(state)
    chosen = set(np.asarray(metrics["participants"]).tolist())
    assert len(chosen) == 2 and int(metrics["clients_participating"]) == 2
    for client in range(5):
        old = jax.tree.map(lambda x, c=client: x[c], state.clients)
        new = jax.tree.map(lambda x, c=client: x[c], new_state.clients)
        same = all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True)
        )
        assert same == (client not in chosen), client


def test_non_finite_updates_are_excluded_and_counted(partial_sim):
    sim = make_simulator(tiny_config(federation__num_clients=4))
    state = sim.init(jax.random.PRNGKey(1))
    inputs = jax.jit(sim.begin_round)(state)
    clients, local_metrics = jax.jit(
        lambda i: local_training(
            sim.algorithm, 2, i.client_keys, i.clients, i.env_params, i.reference
        )
    )(inputs)
    # Client 1 returns NaN params (a diverged or malicious update).
    poisoned = clients.replace(params=jax.tree.map(lambda x: x.at[1].set(jnp.nan), clients.params))
    new_state, metrics = jax.jit(sim.aggregate)(state, inputs, poisoned, local_metrics)
    assert int(metrics["clients_excluded"]) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_state.global_params))
    honest = jax.tree.map(lambda x: x[jnp.array([0, 2, 3])].mean(0), clients.params)
    for a, b in zip(jax.tree.leaves(new_state.global_params), jax.tree.leaves(honest), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The rejected client keeps its pre-round state.
    for a, b in zip(
        jax.tree.leaves(jax.tree.map(lambda x: x[1], new_state.clients)),
        jax.tree.leaves(jax.tree.map(lambda x: x[1], state.clients)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # Every client rejected: the global params stay as they were.
    all_bad = clients.replace(params=jax.tree.map(lambda x: x * jnp.nan, clients.params))
    kept, metrics = jax.jit(sim.aggregate)(state, inputs, all_bad, local_metrics)
    assert int(metrics["clients_excluded"]) == 4
    for a, b in zip(
        jax.tree.leaves(kept.global_params), jax.tree.leaves(state.global_params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
