"""One validation pass: a bad value in any section fails `jfedrl train` at once.

`jfedrl.validation.validate` runs before the run folder is created and before
anything compiles; each case checks the error names the field, that nothing
was written, and that XLA compiled nothing (counted through jax.monitoring).
"""

from __future__ import annotations

import jax
import pytest

from jfedrl import cli, plugins
from jfedrl.config import Config
from jfedrl.schema import checks
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import override
from jfedrl.validation import validate

# The event jax._src.dispatch records for each XLA compile.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# (flags after `jfedrl train`, the field the error must start with)
BAD = {
    "env.name": (["--env", "CartPole"], "env.name"),
    "env.variant": (["--variant", "wild"], "env.variant"),
    "env.drift": (["--drift", "zigzag"], "env.drift"),
    "env.drift_params": (["--drift", "linear", "--env.drift-params", "tau"], "env.drift_params"),
    "env.ranges": (["--env.ranges", "{length: [0.9, 0.1]}"], "env.ranges"),
    "env.disturbance": (
        ["--env", "Breakout-MinAtar", "--env.disturbance", "impulse"],
        "env.disturbance",
    ),
    "env.disturbance_scale": (
        ["--env.disturbance", "obs_noise", "--env.disturbance-scale", "0"],
        "env.disturbance_scale",
    ),
    "algo.name": (["--algo", "a3c"], "algo.name"),
    "algo.ppo": (["--ppo.learning-rate", "0"], "algo.ppo.learning_rate"),
    "algo.a2c": (["--algo", "a2c", "--a2c.gamma", "0"], "algo.a2c.gamma"),
    "algo.dqn": (["--algo", "dqn", "--dqn.batch-size", "0"], "algo.dqn.batch_size"),
    "algo.td3": (
        ["--algo", "td3", "--env", "Pendulum-v1", "--td3.batch-size", "0"],
        "algo.td3.batch_size",
    ),
    "algo.sac": (
        ["--algo", "sac", "--env", "Pendulum-v1", "--sac.tau", "0"],
        "algo.sac.tau",
    ),
    "strategy.name": (["--strategy", "fedsgd"], "strategy.name"),
    "strategy.fedadam": (
        ["--strategy", "fedadam", "--fedadam.beta1", "1"],
        "strategy.fedadam.beta1",
    ),
    "strategy.clip_update_norm": (
        ["--strategy.clip-update-norm", "-1"],
        "strategy.clip_update_norm",
    ),
    "federation.num_clients": (["--clients", "0"], "federation.num_clients"),
    "federation.dropout_prob": (["--federation.dropout-prob", "1"], "federation.dropout_prob"),
    "log": (["--log.eval-episodes", "0"], "log.eval_episodes"),
    "offload.executor": (["--executor", "rya"], "offload.executor"),
    "offload.shards": (["--shards", "0"], "offload.shards"),
    "offload (local)": (
        ["--executor", "local", "--offload.task-timeout", "0"],
        "offload.task_timeout",
    ),
    "offload.golem": (
        ["--executor", "golem", "--golem.image-hash", "abc", "--golem.budget", "0"],
        "offload.golem.budget",
    ),
    "distributed": (
        ["--distributed", "--distributed.num-processes", "2", "--distributed.process-id", "2"],
        "distributed.process_id",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _imports_done():
    """Imports JAX and every registry once, so the cases time validation alone."""
    validate(Config())


@pytest.mark.parametrize(("flags", "field"), list(BAD.values()), ids=list(BAD))
def test_a_bad_value_fails_train_before_anything_is_written(
    flags, field, tmp_path, monkeypatch, capsys
):
    executor = flags[flags.index("--executor") + 1] if "--executor" in flags else "inprocess"
    if field != "offload.executor" and executor not in plugins.executors():
        pytest.skip(f"the {executor!r} executor (package offload) is not installed")
    monkeypatch.chdir(tmp_path)  # the default run folder would be ./runs/...
    compiles = []

    def count_compiles(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(count_compiles)
    try:
        code = cli.main(["train", "--no-progress", *flags])
    finally:
        jax.monitoring.unregister_event_duration_listener(count_compiles)
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"jfedrl: error: {field}:"), error
    assert list(tmp_path.iterdir()) == []
    assert compiles == [], f"{len(compiles)} XLA compile(s) before the error"


def test_every_section_has_a_bad_case():
    sections = {field.split(".")[0] for _, field in BAD.values()}
    algos = {field.split(".")[1] for _, field in BAD.values() if field.startswith("algo.")}
    assert sections == {"env", "algo", "strategy", "federation", "log", "offload", "distributed"}
    assert algos >= {"name", "ppo", "a2c", "dqn", "td3"}


def test_validate_runs_the_selected_executors_own_checks(monkeypatch):
    def refuse(config):
        raise ConfigError(f"offload.fake: refused {config.offload.shards} shards")

    fake = plugins.ExecutorSpec(name="fake", make_runner=lambda sim, run_dir: None, validate=refuse)
    monkeypatch.setattr(
        plugins, "executors", lambda: {"inprocess": plugins.INPROCESS, "fake": fake}
    )
    validate(Config())
    with pytest.raises(ConfigError, match=r"^offload\.fake: refused 1 shards$"):
        validate(override(Config(), {"offload.executor": "fake"}))
    with pytest.raises(
        ConfigError, match=r"^offload\.executor: 'golem' is not allowed; allowed: inprocess, fake\."
    ):
        validate(override(Config(), {"offload.executor": "golem"}))


def test_config_error_is_a_value_error():
    assert issubclass(checks.ConfigError, ValueError)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: checks.require_positive("a.b", 0), "a.b: must be > 0, got 0"),
        (lambda: checks.require_positive("a.b", -1, strict=False), "a.b: must be >= 0, got -1"),
        (
            lambda: checks.require_range("a.b", 1.0, 0, 1, high_open=True),
            "a.b: must be in [0, 1), got 1.0",
        ),
        (
            lambda: checks.require_range("a.b", 0, 0, 2, low_open=True),
            "a.b: must be in (0, 2], got 0",
        ),
        (
            lambda: checks.require_range("a.b", float("nan"), 0, 1),
            "a.b: must be in [0, 1], got nan",
        ),
        (lambda: checks.require(False, "a.b", "even", 3), "a.b: must be even, got 3"),
        (
            lambda: checks.require_choice("a.b", "mena", ("mean", "krum")),
            "a.b: 'mena' is not allowed; allowed: mean, krum. Did you mean 'mean'?",
        ),
        (
            lambda: checks.require_choice("a.b", "DDPG", ("ppo", "td3"), {"ddpg": "use td3"}),
            "a.b: 'DDPG' is not allowed; allowed: ppo, td3. use td3.",
        ),
        (
            lambda: checks.require_finite("", {"x": (1.0, float("inf"))}),
            ".x[1]: must be a finite number, got inf",
        ),
    ],
)
def test_check_messages_name_the_field_and_the_bound(check, message):
    with pytest.raises(ConfigError) as error:
        check()
    assert str(error.value) == message


def test_checks_pass_good_values():
    checks.require_positive("a", 1e-9)
    checks.require_positive("a", 0, strict=False)
    checks.require_range("a", 0.5, 0, 1, low_open=True, high_open=True)
    checks.require_choice("a", "x", ("x",))
    checks.require_finite("", {"x": [1.0, 2]})
