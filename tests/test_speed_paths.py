"""The speed paths: host device layout and `train --dry-run` (the GPU check: test_gpu_scripts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jfedrl import cli
from jfedrl.run.devices import FLAG, clients_that_fit, default_host_devices


@pytest.mark.parametrize(
    ("participants", "cores", "expected"),
    [(1, 2, 1), (2, 2, 2), (3, 2, 2), (16, 4, 4), (5, 4, 3), (6, 4, 3), (64, 8, 8)],
)
def test_default_host_devices_fewest_that_minimise_the_slowest_device(
    participants, cores, expected
):
    assert default_host_devices(participants, cores) == expected


def test_default_host_devices_names_bad_counts():
    with pytest.raises(ValueError, match="participants and cores"):
        default_host_devices(0, 2)


def test_clients_that_fit_is_linear_above_the_fixed_part():
    # 10 clients take 1100 bytes of which 100 are fixed: 100 bytes per client.
    assert clients_that_fit(1100, 10, capacity=2100, fixed_bytes=100) == 20
    assert clients_that_fit(1100, 10, capacity=2100) == 19  # no fixed part: 110 per client


_PROBE = (
    "import os, sys; from jfedrl.run.devices import configure_host_devices as c; "
    "layout = c(int(sys.argv[1]), None if sys.argv[2] == '-' else int(sys.argv[2])); "
    "import jax; print(layout.devices, layout.source, jax.local_device_count(), "
    "os.environ.get('XLA_FLAGS', '-'))"
)


def _probe(participants: int, requested: str, *, before: str = "", **env: str) -> list[str]:
    """The layout chosen in a fresh process, after running the code `before`."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JFEDRL_HOST_DEVICES")}
    out = subprocess.run(
        [sys.executable, "-c", before + _PROBE, str(participants), requested],
        env={**base, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_host_devices_flag_beats_env_and_jax_sees_them():
    devices, source, seen, *_ = _probe(8, "3", JFEDRL_HOST_DEVICES="2")
    assert (devices, source, seen) == ("3", "flag", "3")


def test_host_devices_env_then_xla_flags_kept():
    assert _probe(8, "-", JFEDRL_HOST_DEVICES="2")[:3] == ["2", "env", "2"]
    kept = _probe(8, "-", XLA_FLAGS=f"--xla_cpu_use_thunk_runtime=true {FLAG}=3")
    assert kept[:3] == ["3", "XLA_FLAGS", "3"]
    assert "--xla_cpu_use_thunk_runtime=true" in kept[3:]


def test_host_devices_set_after_import_jax_through_jax_num_cpu_devices():
    # `import jax` first (as `prepare_process` does): the count still applies, and
    # `$XLA_FLAGS` is left alone (children of the process inherit no device count).
    out = _probe(1, "4", before="import jax; ")
    assert out == ["4", "flag", "4", "-"]


def test_host_devices_once_the_backend_started_are_reported_not_set():
    out = _probe(1, "4", before="import jax; jax.devices(); ")
    assert out[:-1] == ["1", "backend", "already", "initialised", "1"]


def test_host_devices_lost_to_a_started_backend_are_named_in_the_layout_line():
    import jax

    from jfedrl.run.devices import configure_host_devices

    jax.devices()  # started, as by a plugin that computes with JAX when imported
    layout = configure_host_devices(8, jax.local_device_count("cpu") + 3)
    assert layout.source == "backend already initialised"
    assert layout.wanted == layout.devices + 3
    wanted = f"{layout.devices} XLA host device(s), not the {layout.devices + 3} wanted"
    assert layout.describe().startswith(wanted) and "plugin" in layout.describe()
    same = configure_host_devices(8, jax.local_device_count("cpu"))
    assert same.describe().endswith("(backend already initialised; CPU backend only)")


def test_host_devices_bad_count_is_refused_even_after_jax_started():
    from jfedrl.run.devices import configure_host_devices

    with pytest.raises(ValueError, match="--host-devices: must be a whole number >= 1"):
        configure_host_devices(2, 0)


def test_dry_run_compiles_prints_memory_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = cli.main(
        [
            "train",
            "--dry-run",
            "--quiet",
            "--clients",
            "2",
            "--rounds",
            "1",
            "--local-updates",
            "1",
            "--algo.ppo.num-envs",
            "2",
            "--algo.ppo.num-steps",
            "8",
            "--algo.ppo.update-epochs",
            "1",
            "--algo.ppo.num-minibatches",
            "1",
            "--algo.ppo.hidden-sizes",
            "8",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "compiled 1 round(s) of 2 clients" in out
    assert "memory estimate per device:" in out
    assert "clients fit" in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no runs/


def test_start_up_imports_only_what_the_run_needs():
    probe = (
        "import sys; import jfedrl.cli.app; cli = set(sys.modules); "
        "jfedrl.cli.app.startup.prepare_process(); import jfedrl.run.runner; "
        "print(sorted({'jax', 'matplotlib'} & cli), 'scipy.stats' in sys.modules, "
        "type(sys.modules['seaborn']).__name__); "
        "import seaborn; assert callable(seaborn.color_palette); "
        "print(type(sys.modules['seaborn']).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    # The CLI parses flags without jax (`jfedrl config` never loads it); once the
    # process is prepared (`jfedrl.run.startup`, what `main` does) a run loads neither
    # seaborn nor scipy.stats (gymnax imports them to render) until something draws.
    assert out == ["[]", "False", "_Deferred", "module"]


def test_rollout_bootstraps_truncations_as_a_per_step_critic_would():
    """The final observations' critic runs batched after the rollout: same rewards."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import envs
    from jfedrl.algorithms import acting, networks, onpolicy, ppo
    from tests.helpers import tiny_config

    config = tiny_config()
    env, params = envs.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=6)  # truncations within 20 steps
    algorithm = ppo.build(config, env, params)
    agent = onpolicy.setup(env, params, config.algo.ppo)
    state = algorithm.init(jax.random.PRNGKey(0), params)
    key, gamma = jax.random.PRNGKey(1), 0.9

    def per_step(carry, step_key):  # the bootstrap as it was: one critic call per step
        key_act, key_env = jax.random.split(step_key)
        dist, _ = agent.network.apply(state.params, carry.obs)
        action = networks.sample(key_act, dist, False)
        carry, out = acting.step(key_env, env, params, carry, action)
        value = agent.network.apply(state.params, out.final_obs, method=networks.ActorCritic.value)
        cut = jnp.logical_and(out.truncated, jnp.logical_not(out.terminated))
        return carry, (out.reward + gamma * jnp.where(cut, value, 0.0), cut)

    _, batch, _ = jax.jit(lambda k: onpolicy.rollout(k, agent, state, params, 20, gamma))(key)
    _, (expected, cut) = jax.lax.scan(per_step, acting.carry_of(state), jax.random.split(key, 20))
    assert bool(cut.any())
    np.testing.assert_allclose(batch.reward, expected, rtol=1e-6)


def test_full_participation_skips_the_client_gather_and_scatter_with_equal_results():
    """Every client every round: the round's gather/scatter of client states are identities.

    The simulator skips them at trace time. The round's two ends forced through them
    (begin_round's gather, aggregate's scatter) give the same values bit for bit, and
    the lowered round holds one gather and one scatter more per client-state leaf.
    """
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jfedrl.round.layout import ClientLayout
    from jfedrl.round.simulator import Simulator, make_simulator
    from tests.helpers import equal_trees, tiny_config

    class GatheringLayout(ClientLayout):
        everyone = property(lambda self: False)  # the general path (partial participation)

    class Gathering(Simulator):
        @property
        def layout(self) -> ClientLayout:
            return GatheringLayout(
                self.num_clients, self.num_participants, self.mesh, self.multiprocess
            )

    # A client count the devices divide (an earlier test may have split the host).
    fast = make_simulator(tiny_config(federation__num_clients=2 * jax.device_count()))
    slow = Gathering(**{f.name: getattr(fast, f.name) for f in dataclasses.fields(fast)})
    assert fast.everyone and not slow.everyone
    state = fast.init(jax.random.PRNGKey(0))

    def ends(sim, state):  # a round without its local training: new params, fixed metrics
        inputs = sim.begin_round(state)
        trained = jax.tree.map(lambda x: x + jnp.ones_like(x), inputs.clients)
        metrics = {"train_return": jnp.ones((2, sim.num_clients))}
        return inputs, sim.aggregate(state, inputs, trained, metrics)

    lowered = [jax.jit(ends, static_argnums=0).lower(sim, state) for sim in (fast, slow)]
    texts = [low.as_text() for low in lowered]
    leaves = len(jax.tree.leaves(state.clients))
    gathers = [t.count("stablehlo.gather") + t.count("stablehlo.dynamic_gather") for t in texts]
    scatters = [t.count("stablehlo.scatter") for t in texts]
    assert gathers[1] - gathers[0] >= leaves and scatters[1] - scatters[0] >= leaves
    out_fast, out_slow = (low.compile()(state) for low in lowered)
    assert equal_trees(out_fast, out_slow)


_DRAWS = (
    "import jax, jax.numpy as jnp, numpy as np\n"
    "def draws(key):\n"
    "    a, b = jax.random.split(key)\n"
    "    logits = jax.random.normal(a, (6, 3))\n"
    "    keys = jax.random.key_data(jax.random.split(jax.random.fold_in(b, 5), 4))\n"
    "    return keys, logits, jax.random.categorical(b, logits), jax.random.permutation(a, 9)\n"
    "values = jax.jit(jax.vmap(draws))(jax.random.split(jax.random.PRNGKey(7), 3))\n"
)


def test_threefry_on_cpu_is_unrolled_with_bit_identical_draws():
    """jfedrl lowers `jax.random`'s hash without XLA while loops; the draws do not change."""
    import jax
    import numpy as np

    import jfedrl.round.simulator  # noqa: F401  (registers the unrolled lowering)

    scope: dict = {}
    exec(_DRAWS, scope)  # the same program, jitted in this process
    compiled = jax.jit(jax.vmap(scope["draws"])).lower(jax.random.split(jax.random.PRNGKey(7), 3))
    assert " while(" not in compiled.compile().as_text()
    # A fresh interpreter without jfedrl keeps JAX's rolled loop: the reference values.
    probe = _DRAWS + "print([np.asarray(v).tolist() for v in values])"
    fresh = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    reference = json.loads(fresh)
    assert len(reference) == 4
    for ours, theirs in zip(scope["values"], reference, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.slow
def test_interleaved_bench_times_both_programs_in_turns():
    from scripts import bench_throughput

    row = bench_throughput.interleaved_one(2, 0.2, 1)
    assert row["calls"]["jfedrl"] == row["calls"]["reference"] >= 3
    # Same shape on both sides: a round of 2 clients is 2 x 4 updates x 4 envs x 128 steps.
    steps = {
        n: s * row["run_seconds"][n] / row["calls"][n]
        for n, s in row["env_steps_per_second"].items()
    }
    assert steps["jfedrl"] == pytest.approx(steps["reference"]) == 2 * 4 * 4 * 128
    assert all(seconds > 0 for seconds in row["compile_seconds"].values())
