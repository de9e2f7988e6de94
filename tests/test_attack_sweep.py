"""A sweep over attacks: setups differing only in their (update or env) attack share
one compiled program, the run's attack a traced index, and each run equals the same
setup trained alone."""

from __future__ import annotations

import pytest
import yaml

from jfedrl.attacks.round import AttackChoice
from jfedrl.experiments import sweep, traced
from jfedrl.run.outputs import read_metrics
from tests.helpers import compiled_programs, tiny_config
from tests.test_sweep import TINY, _assert_equal_to_alone

#: 4 clients, 2 of them Byzantine: an update attack with a diagnostic (alie), one
#: without (sign_flip) and two env attacks of different kinds, under one rule.
BASE = TINY | {
    "federation": TINY["federation"] | {"num_clients": 4},
    "attack": {"fraction": 0.5},
}
ATTACKS = ["alie", "sign_flip", "random_action", "reward_flip"]
SEED = 3


def _config(name: str):
    return tiny_config(
        federation__num_clients=4, attack__fraction=0.5, attack__name=name, seed=SEED
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack-sweep")
    path = root / "sweep.yaml"
    data = {"name": "attacks", "base": BASE, "grid": {"attack.name": ATTACKS}, "seeds": [SEED]}
    path.write_text(yaml.safe_dump(data))
    with compiled_programs() as names:
        result = sweep.run_sweep(path, root / "out", progress=False, quiet=True)
    return result, names


def test_attacks_share_one_program(swept):
    result, compiled = swept
    assert result.compiles == [1] and not result.interrupted
    assert compiled.count("jit(_run_block_vmapped)") == 1, compiled
    parsed = sweep.load(result.sweep_dir / "sweep.yaml")
    assert [g.traced for g in sweep.plan_groups(parsed)] == [(traced.ATTACK,)]
    assert "traced: attack.name" in sweep.describe_groups(parsed)[1]


def test_none_is_grouped_apart():
    configs = [_config(name) for name in ("none", "alie", "reward_flip")]
    keys = [str(traced.static_part(c).attack.name) for c in configs]
    assert keys[0] == "none" and keys[1] == keys[2] == traced.SWITCHED_ATTACK


def test_update_attack_run_equals_the_run_alone(swept, tmp_path):
    result, _ = swept
    assert "attack/alie_z" in read_metrics(result.run_dirs[0])[-1]
    assert "attack/alie_z" not in read_metrics(result.run_dirs[1])[-1]  # sign_flip's run
    _assert_equal_to_alone(result.run_dirs[0], _config("alie"), tmp_path)


@pytest.mark.slow  # an env attack of the same program; one run alone is in the default run
def test_env_attack_run_equals_the_run_alone(swept, tmp_path):
    result, _ = swept
    _assert_equal_to_alone(result.run_dirs[2], _config("random_action"), tmp_path)


def test_runs_differ_by_their_attack(swept):
    result, _ = swept
    losses = [read_metrics(d)[-1]["pg_loss"] for d in result.run_dirs]
    assert len(set(losses)) == len(ATTACKS)


def test_foreign_keys_are_the_other_attacks_diagnostics():
    choice = AttackChoice(("alie", "scale", "sign_flip"))
    choice.metric_keys.update(
        {"alie": ("attack/alie_z",), "scale": ("attack/scale_factor",), "sign_flip": ()}
    )
    assert choice.foreign_keys("sign_flip") == {"attack/alie_z", "attack/scale_factor"}
    assert choice.foreign_keys("alie") == {"attack/scale_factor"}
    assert choice.with_index(1).metric_keys is choice.metric_keys
