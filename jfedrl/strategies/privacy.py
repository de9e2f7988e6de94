"""Differential-privacy accounting for `dp_fedavg`, on the host between blocks.

Each `dp_fedavg` round is a sampled Gaussian mechanism (Mironov et al. 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism"): a client
takes part with probability q = participants per round / num_clients, its
clipped update has sensitivity S / n in the average, and the noise std is
z S / n, z = `strategy.dp_fedavg.noise`. The rounds compose, and the Rényi-DP (RDP)
accountant of Google's `dp-accounting` library turns the composition into
the (ε, δ) spent so far, δ = `strategy.dp_fedavg.delta` (Abadi et al. 2016 moments
accountant; McMahan et al. 2018 account DP-FedAvg the same way).

Two assumptions, stated because they matter:

- Adjacency is add/remove one *client* (user-level privacy), as in McMahan
  et al. 2018.
- The simulator samples a fixed number of clients without replacement; the
  accountant treats this as Poisson sampling with the same rate q (the usual
  approximation, also McMahan et al.'s). With full participation (q = 1)
  there is no subsampling and the bound is that of plain Gaussian composition.

Only the host calls this module (the jitted round never does), and
`dp_accounting` is imported on first use, so runs of other strategies never
load it.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

from jfedrl.config import Config, participants_per_round

log = logging.getLogger("jfedrl")


class PrivacyBudgetExhausted(RuntimeError):
    """The next round would spend more than `strategy.dp_fedavg.epsilon_budget`."""


@functools.lru_cache(maxsize=4096)
def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """ε after `rounds` sampled Gaussian mechanisms, by the RDP accountant.

    Args:
        noise_multiplier: z, the noise std over the sensitivity (0: no privacy).
        sampling_rate: q in (0, 1], the probability a client takes part in a round.
        rounds: number of composed rounds (0 spends nothing).
        delta: the δ of the (ε, δ) guarantee.

    Returns:
        ε (inf when z = 0).
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    event = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    accountant = RdpAccountant()
    absl = logging.getLogger("absl")  # fractional orders that do not converge are logged
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        accountant.compose(event, rounds)
        return float(accountant.get_epsilon(delta))
    finally:
        absl.setLevel(level)


@dataclass(frozen=True)
class Accountant:
    """The privacy ledger of one `dp_fedavg` run (pure: ε depends only on the round)."""

    noise_multiplier: float
    sampling_rate: float
    delta: float
    budget: float
    """ε budget; 0: none."""
    action: str
    """`stop` or `warn` at the budget."""

    def epsilon(self, rounds: int) -> float:
        """ε spent after `rounds` rounds."""
        return epsilon(self.noise_multiplier, self.sampling_rate, int(rounds), self.delta)

    def last_round_within_budget(self, limit: int) -> int:
        """The largest r <= `limit` with ε(r) <= budget (`limit` if there is no budget)."""
        if self.budget <= 0 or self.epsilon(limit) <= self.budget:
            return limit
        low, high = 0, limit  # ε(low) <= budget < ε(high); ε grows with r
        while high - low > 1:
            middle = (low + high) // 2
            if self.epsilon(middle) <= self.budget:
                low = middle
            else:
                high = middle
        return low

    def rounds_allowed(self, first_round: int, num_rounds: int) -> int:
        """How many of the next `num_rounds` rounds fit in the budget (`stop` only).

        Raises:
            PrivacyBudgetExhausted: not even round `first_round + 1` fits.
        """
        if self.budget <= 0 or self.action != "stop":
            return num_rounds
        last = self.last_round_within_budget(first_round + num_rounds)
        if last <= first_round:
            raise PrivacyBudgetExhausted(
                f"strategy.dp_fedavg.epsilon_budget: round {first_round + 1} would spend "
                f"epsilon = {self.epsilon(first_round + 1):.4g} > {self.budget:g} "
                f"(delta = {self.delta:g}); stopped after round {first_round}, whose checkpoint "
                "is intact. Raise strategy.dp_fedavg.epsilon_budget or "
                "strategy.dp_fedavg.noise, or set strategy.dp_fedavg.budget_action: warn"
            )
        return last - first_round

    def annotate(self, records: list[dict[str, Any]]) -> None:
        """Adds `dp_epsilon` and `dp_delta` to each round's record; warns past the budget.

        ε is None when it is infinite (z = 0), as JSON has no infinity.
        """
        for record in records:
            eps = self.epsilon(record["round"])
            record["dp_epsilon"] = eps if math.isfinite(eps) else None
            record["dp_delta"] = self.delta
            over = self.budget > 0 and eps > self.budget
            if over and self.epsilon(record["round"] - 1) <= self.budget:
                log.warning(
                    "round %d: epsilon = %.4g exceeds strategy.dp_fedavg.epsilon_budget = %g "
                    "(delta = %g); continuing (strategy.dp_fedavg.budget_action: warn)",
                    record["round"],
                    eps,
                    self.budget,
                    self.delta,
                )


def accountant(config: Config) -> Accountant | None:
    """The run's accountant, or None for strategies without a privacy guarantee."""
    if config.strategy.name != "dp_fedavg":
        return None
    fed = config.federation
    return Accountant(
        noise_multiplier=float(config.strategy.dp_fedavg.noise),
        sampling_rate=participants_per_round(fed) / fed.num_clients,
        delta=float(config.strategy.dp_fedavg.delta),
        budget=float(config.strategy.dp_fedavg.epsilon_budget),
        action=config.strategy.dp_fedavg.budget_action,
    )
