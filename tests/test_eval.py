"""`jfedrl eval`: a run's checkpoint evaluates to the run's own last eval_return."""

from __future__ import annotations

import numpy as np
import pytest

from jfedrl import evaluate, runner
from jfedrl.config import ConfigError
from tests.helpers import tiny_config, with_run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return runner.train(with_run_dir(tiny_config(), run_dir), progress=False, quiet=True)


def test_eval_reproduces_the_runs_last_eval_return(trained, tmp_path):
    result = evaluate.evaluate_run(trained.run_dir)
    assert result.round == 4 and result.returns.shape == (3, 2)
    assert result.mean == pytest.approx(trained.final_eval_return, rel=1e-6)
    chosen = evaluate.evaluate_run(trained.run_dir, clients=[2, 0])
    np.testing.assert_allclose(chosen.returns, result.returns[[2, 0]])
    md = evaluate.save(chosen, tmp_path)
    assert md.name == "round_4.md" and "| 2 |" in md.read_text()
    assert (tmp_path / "round_4.csv").read_text().count("\n") == 1 + 2 * 2


def test_eval_names_a_bad_client_id(trained):
    with pytest.raises(ConfigError, match="--clients: ids must be in 0..2"):
        evaluate.evaluate_run(trained.run_dir, clients=[3])
