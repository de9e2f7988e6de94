"""One spelling of a field: underscores in flags, dotted keys in train YAML (issue 20)."""

from __future__ import annotations

import pytest

from jfedrl.cli import main
from jfedrl.cli.app import build_parser, config_from_args
from jfedrl.config import load_yaml
from jfedrl.schema.checks import ConfigError


def _config(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_flags_spelled_as_config_yaml_spells_them_are_accepted():
    config = _config(
        "--algo.ppo.learning_rate",
        "1e-3",
        "--ppo.num_envs=3",
        "--federation.num_clients",
        "5",
        "--log.run-dir",
        "runs/a_b",  # a value keeps its underscores
    )
    assert config.algo.ppo.learning_rate == 1e-3 and config.algo.ppo.num_envs == 3
    assert config.federation.num_clients == 5 and config.log.run_dir == "runs/a_b"
    assert build_parser().parse_args(["train", "--host_devices", "2"]).host_devices == 2


def test_an_unknown_flag_is_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--algo.ppo.learning_rat", "1e-3"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --algo.ppo.learning-rat" in capsys.readouterr().err


NESTED = """
algo:
  ppo:
    learning_rate: 0.001
    num_envs: 3
federation:
  num_clients: 5
"""
DOTTED = """
algo.ppo.learning_rate: 0.001
algo.ppo.num-envs: 3
federation.num_clients: 5
"""
MIXED = """
algo:
  ppo.learning_rate: 0.001
algo.ppo:
  num_envs: 3
federation:
  num_clients: 5
"""


@pytest.mark.parametrize("text", [NESTED, DOTTED, MIXED], ids=["nested", "dotted", "mixed"])
def test_train_yaml_takes_dotted_keys_nested_maps_or_a_mix(text, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = load_yaml(path)
    assert config.algo.ppo.learning_rate == 1e-3 and config.algo.ppo.num_envs == 3
    assert config.federation.num_clients == 5
    assert config.algo.ppo.gamma == 0.99  # the rest stays at its defaults


def test_dotted_keys_reach_into_dict_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env.ranges.length: [0.3, 0.9]\nenv:\n  ranges:\n    masspole: [0.05, 0.2]\n")
    assert load_yaml(path).env.ranges == {"length": [0.3, 0.9], "masspole": [0.05, 0.2]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "algo.ppo.learning_rate: 1\nalgo:\n  ppo:\n    learning_rate: 2\n",
            "algo.ppo.learning_rate: given twice",
        ),
        (
            "federation.num_clients: 1\nfederation.num-clients: 2\n",
            "federation.num_clients: given twice",
        ),
        ("algo.ppo.learning_rat: 1\n", "algo.ppo.learning_rat: unknown config field"),
        ("seed.x: 1\n", "seed: expected"),
    ],
    ids=["nested-and-dotted", "dash-and-underscore", "unknown", "not-a-section"],
)
def test_a_field_given_twice_or_unknown_is_one_line_naming_it(text, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(path)
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jfedrl: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
