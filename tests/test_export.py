"""`jfedrl export`: the docs' NumPy snippet, run verbatim, acts as jfedrl's own policy."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfedrl import cli
from jfedrl.experiments.export import export_policy
from jfedrl.run import runner
from tests.helpers import tiny_config, with_run_dir

DOCS = Path(__file__).resolve().parent.parent / "docs" / "experiments.md"


def snippet() -> str:
    """The python block right after `<!-- export-snippet -->` in docs/experiments.md."""
    found = re.search(r"<!-- export-snippet -->\n```python\n(.*?)```", DOCS.read_text(), re.S)
    assert found, "docs/experiments.md lost its export snippet"
    return found.group(1)


def snippet_act(folder: Path):
    """Runs the docs' snippet in `folder` (where policy.npz is); returns its `act`, its output."""
    namespace: dict = {}
    printed = io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(snippet(), "docs/experiments.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace["act"], printed.getvalue()


def observations(simulator, count: int = 64) -> np.ndarray:
    """Observations a policy meets: random resets, spread wider than a reset's."""
    env, params = simulator.envs.env, simulator.envs.default_params
    keys = jax.random.split(jax.random.PRNGKey(1), count)
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    noise = jax.random.normal(jax.random.PRNGKey(2), obs.shape)
    return np.asarray(obs + noise * jnp.maximum(jnp.abs(obs), 1.0), np.float32)


def assert_acts_alike(config, params, folder: Path) -> None:
    """The snippet's actions equal `config`'s algorithm's `act(params, obs)`."""
    from jfedrl.round.simulator import make_simulator

    act, printed = snippet_act(folder)
    assert printed.strip()  # the snippet acts on a zero observation
    simulator = make_simulator(config)
    for obs in observations(simulator):
        mine = np.asarray(act(obs))
        theirs = np.asarray(simulator.algorithm.act(params, jnp.asarray(obs)))
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = with_run_dir(tiny_config(), run_dir)
    result = runner.train(config, progress=False, quiet=True)
    return result


def test_the_docs_snippet_acts_as_the_global_policy(trained, tmp_path):
    exported = export_policy(trained.run_dir, tmp_path / "policy.npz")
    meta = exported.meta
    assert meta["algorithm"] == "ppo" and meta["output"] == "argmax" and meta["round"] == 4
    assert meta["layer_sizes"] == [4, 16, 16, 2] and meta["params"] == "global"
    assert meta["action_space"] == {"type": "discrete", "n": 2}
    assert_acts_alike(tiny_config(), trained.state.global_params, tmp_path)


def test_client_export_holds_that_clients_own_params(trained, tmp_path):
    exported = export_policy(trained.run_dir, tmp_path / "c1.npz", client=1)
    own = trained.state.clients.params["params"]["actor"]["Dense_0"]["kernel"][1]
    np.testing.assert_array_equal(exported.layers[0][0], np.asarray(own))
    glob = trained.state.global_params["params"]["actor"]["Dense_0"]["kernel"]
    assert not np.array_equal(exported.layers[0][0], np.asarray(glob))
    assert exported.meta["params"] == "client 1"


def test_cli_export_refuses_an_existing_file_and_bad_ids(trained, tmp_path, capsys):
    out = tmp_path / "policy.npz"
    run = str(trained.run_dir)
    assert cli.main(["export", run, "--round", "2", "--out", str(out)]) == 0
    assert "of round 2" in capsys.readouterr().out
    before = out.read_bytes()
    assert cli.main(["export", run, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--out:" in error and "--force" in error
    assert out.read_bytes() == before  # nothing already written is lost
    assert cli.main(["export", run, "--out", str(out), "--force"]) == 0
    assert "of round 4" in capsys.readouterr().out
    assert cli.main(["export", run, "--client", "3", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--client: must be in 0..2, got 3" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "y.npz")]) == 2
    assert "export: " in capsys.readouterr().err and not (tmp_path / "y.npz").exists()


@pytest.mark.slow  # a continuous-action run of each family: two more compiled rounds
@pytest.mark.parametrize(
    "overrides",
    [
        {"env__name": "Pendulum-v1"},
        {
            "env__name": "Pendulum-v1",
            "algo__name": "td3",
            "algo__td3__hidden_sizes": [8],
            "algo__td3__buffer_size": 256,
            "algo__td3__gradient_steps": 2,
        },
        {
            "algo__name": "dqn",
            "algo__dqn__hidden_sizes": [8],
            "algo__dqn__buffer_size": 256,
            "algo__dqn__gradient_steps": 2,
            "algo__dqn__dueling": True,
        },
    ],
    ids=["ppo-box", "td3", "dueling-dqn"],
)
def test_the_docs_snippet_acts_as_other_policies(overrides, tmp_path):
    config = with_run_dir(tiny_config(federation__rounds=2, **overrides), tmp_path / "run")
    result = runner.train(config, progress=False, quiet=True)
    export_policy(result.run_dir, tmp_path / "policy.npz")
    assert_acts_alike(config, result.state.global_params, tmp_path)
