"""DP-FedAvg's privacy ledger: epsilon per round, and the budget's stop / warn."""

import json
import logging
import subprocess
import sys

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from jfedrl.run import runner
from jfedrl.schema.checks import ConfigError
from jfedrl.strategies import privacy
from jfedrl.validation import validate
from tests.helpers import tiny_config, with_run_dir

DELTA = 1e-5
NOISE = 1.1


def direct_epsilon(z, q, rounds, delta=DELTA):
    """dp-accounting called directly: RDP of `rounds` Poisson-sampled Gaussians."""
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


def dp_config(**overrides):
    fields = {
        "strategy__name": "dp_fedavg",
        "strategy__dp_fedavg__noise": NOISE,
        "strategy__dp_fedavg__delta": DELTA,
        "federation__participation": 2,  # 2 of 3 clients: q = 2/3
    }
    fields.update(overrides)
    return tiny_config(**fields)


@pytest.mark.parametrize(
    "z, q, rounds", [(1.1, 2 / 3, 1), (1.1, 2 / 3, 4), (0.8, 0.01, 100), (2.0, 1.0, 10)]
)
def test_epsilon_matches_dp_accounting(z, q, rounds):
    assert privacy.epsilon(z, q, rounds, DELTA) == pytest.approx(
        direct_epsilon(z, q, rounds), rel=1e-12
    )


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    eps = [privacy.epsilon(NOISE, 0.1, r, DELTA) for r in (0, 1, 10, 100)]
    assert eps[0] == 0.0 and eps[1] < eps[2] < eps[3]
    assert privacy.epsilon(2 * NOISE, 0.1, 10, DELTA) < eps[2]
    assert privacy.epsilon(0.0, 0.1, 1, DELTA) == float("inf")


def test_accountant_reads_the_config():
    accountant = privacy.accountant(dp_config(strategy__dp_fedavg__epsilon_budget=7.0))
    assert accountant == privacy.Accountant(NOISE, 2 / 3, DELTA, 7.0, "stop")
    assert privacy.accountant(tiny_config()) is None  # fedavg: no guarantee, no ledger


def test_last_round_within_budget_is_the_boundary():
    accountant = privacy.Accountant(NOISE, 0.05, DELTA, budget=2.0, action="stop")
    last = accountant.last_round_within_budget(10_000)
    assert 0 < last < 10_000
    assert direct_epsilon(NOISE, 0.05, last) <= 2.0 < direct_epsilon(NOISE, 0.05, last + 1)
    assert accountant.rounds_allowed(last - 3, 10) == 3
    with pytest.raises(privacy.PrivacyBudgetExhausted, match=f"round {last + 1} would spend"):
        accountant.rounds_allowed(last, 1)
    warn = privacy.Accountant(NOISE, 0.05, DELTA, budget=2.0, action="warn")
    assert warn.rounds_allowed(last, 10) == 10


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_annotate_reports_epsilon_and_warns_once_past_the_budget():
    eps = [direct_epsilon(NOISE, 0.5, r) for r in (1, 2, 3)]
    budget = (eps[0] + eps[1]) / 2
    accountant = privacy.Accountant(NOISE, 0.5, DELTA, budget=budget, action="warn")
    records = [{"round": r} for r in (1, 2, 3)]
    handler = ListHandler()
    logging.getLogger("jfedrl").addHandler(handler)
    try:
        accountant.annotate(records)
    finally:
        logging.getLogger("jfedrl").removeHandler(handler)
    assert [r["dp_epsilon"] for r in records] == pytest.approx(eps, rel=1e-12)
    assert all(r["dp_delta"] == DELTA for r in records)
    warnings = [m for m in handler.messages if "exceeds strategy.dp_fedavg.epsilon_budget" in m]
    assert len(warnings) == 1 and warnings[0].startswith("round 2:")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("strategy.dp_fedavg.delta", 0.0, "strategy.dp_fedavg.delta: must be in \\(0, 1\\)"),
        ("strategy.dp_fedavg.delta", 1.0, "strategy.dp_fedavg.delta: must be in \\(0, 1\\)"),
        (
            "strategy.dp_fedavg.epsilon_budget",
            -1.0,
            "strategy.dp_fedavg.epsilon_budget: must be >= 0",
        ),
        (
            "strategy.dp_fedavg.budget_action",
            "halt",
            "strategy.dp_fedavg.budget_action: 'halt' is not allowed",
        ),
        ("strategy.dp_fedavg.epsilon_budget", 0.01, "below the epsilon of one round"),
    ],
)
def test_bad_dp_fields_fail_at_validation(field, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(dp_config(**{field.replace(".", "__"): value}))


@pytest.fixture(scope="module")
def budget():
    """Between the epsilon of rounds 2 and 3: the first block (2 rounds) fits, no more."""
    return (direct_epsilon(NOISE, 2 / 3, 2) + direct_epsilon(NOISE, 2 / 3, 3)) / 2


@pytest.mark.slow
def test_run_reports_epsilon_each_round_and_stops_at_the_budget(tmp_path, budget):
    config = with_run_dir(dp_config(strategy__dp_fedavg__epsilon_budget=budget), tmp_path / "dp")
    with pytest.raises(privacy.PrivacyBudgetExhausted, match="round 3 would spend"):
        runner.train(config, quiet=True)
    records = [json.loads(x) for x in (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["dp_epsilon"] == pytest.approx(
            direct_epsilon(NOISE, 2 / 3, record["round"]), rel=1e-12
        )
        assert record["dp_delta"] == DELTA
    assert (tmp_path / "dp" / "checkpoints" / "2").is_dir()  # the last round within budget
    # Resuming under the same budget stops at once; a raised budget continues.
    with pytest.raises(privacy.PrivacyBudgetExhausted, match="stopped after round 2"):
        runner.train(runner.resume_config(tmp_path / "dp"), resume=True, quiet=True)
    raised = runner.resume_config(tmp_path / "dp", {"strategy.dp_fedavg.epsilon_budget": 100.0})
    result = runner.train(raised, resume=True, quiet=True)
    assert [r["round"] for r in result.records] == [1, 2, 3, 4]
    assert result.records[-1]["dp_epsilon"] == pytest.approx(
        direct_epsilon(NOISE, 2 / 3, 4), rel=1e-12
    )


def test_other_strategies_never_import_dp_accounting():
    code = (
        "import sys; from jfedrl.run import runner; from jfedrl import cli; "
        "from jfedrl.validation import validate;"
        "from tests.helpers import tiny_config; validate(tiny_config());"
        "assert 'dp_accounting' not in sys.modules, 'imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
