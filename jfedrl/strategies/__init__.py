"""Aggregation strategies, behind one registry: `register`, `get`, `make`.

Each strategy module cites its paper; docs/strategies.md describes every rule
and its config fields.
"""

from __future__ import annotations

from jfedrl.schema.checks import ConfigError, not_allowed, require
from jfedrl.strategies import averaging, dp, evolutionary, fednova, reward, robust, server_opt
from jfedrl.strategies.base import (
    ClientInfo,
    Strategy,
    StrategySpec,
    flatten_clients,
    keep_if_empty,
    normalized_weights,
    stateless,
    unflatten,
    weighted_mean,
)

_REGISTRY: dict[str, StrategySpec] = {}


def register(spec: StrategySpec) -> None:
    """Adds a strategy; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"strategy {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> StrategySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(not_allowed("strategy.name", name, names())) from None


def make(strategy_config, num_clients: int | None = None) -> Strategy:
    """Builds the strategy named by `strategy_config.name`.

    Args:
        strategy_config: the `StrategyConfig`.
        num_clients: length of the client axis `aggregate` will receive (the
            participants per round, plus padding if any); required by rules
            with per-client server state (`evolutionary`).
    """
    return get(strategy_config.name).build(strategy_config, num_clients)


def _with_common_checks(validate):
    """Adds the checks on fields every strategy shares."""

    def checked(config) -> None:
        clip = config.strategy.clip_update_norm
        require(clip >= 0, "strategy.clip_update_norm", ">= 0 (0: off)", clip)
        validate(config)

    return checked


def _none(config) -> None:
    return None


def _validate_fedprox(config) -> None:
    """FedProx's mu must be positive and not contradict the algorithm's own `prox_mu`."""
    mu = config.strategy.prox_mu
    require(mu > 0, "strategy.prox_mu", "> 0 for fedprox", mu)
    section = getattr(config.algo, config.algo.name, None)
    own = getattr(section, "prox_mu", None)
    if own is None:
        raise ConfigError(
            f"strategy.name: 'fedprox' needs an algorithm with a proximal term "
            f"(algo.<name>.prox_mu); {config.algo.name!r} has none"
        )
    if own not in (0.0, mu):
        raise ConfigError(
            f"algo.{config.algo.name}.prox_mu: {own!r} contradicts strategy.prox_mu={mu!r} "
            "under fedprox; set only strategy.prox_mu (or use fedavg with the algorithm's)"
        )


_BUILTIN = (
    ("fedavg", averaging.fedavg, "mean weighted by env steps n_k/n (McMahan 2017)", _none),
    ("mean", averaging.mean, "unweighted mean (seed 000 Average)", _none),
    (
        "fedprox",
        averaging.fedavg,
        "fedavg + the clients' proximal term mu/2 ||w - w_global||^2, mu = prox_mu (Li 2020)",
        _validate_fedprox,
    ),
    (
        "reward_weighted",
        reward.reward_weighted,
        "mean weighted by return, min-shifted or softmax (seed 000 Weighted Average)",
        reward.validate,
    ),
    (
        "evolutionary",
        evolutionary.evolutionary,
        "differential evolution / particle swarm over clients (seed 000 Evolutionary)",
        evolutionary.validate,
    ),
    (
        "fedavgm",
        server_opt.fedavgm,
        "server SGD with momentum on the pseudo-gradient (Hsu 2019)",
        server_opt.validator(("momentum",)),
    ),
    (
        "fedadam",
        server_opt.fedadam,
        "server Adam on the pseudo-gradient (Reddi 2021)",
        server_opt.validator(("betas", "tau")),
    ),
    (
        "fedyogi",
        server_opt.fedyogi,
        "server Yogi on the pseudo-gradient (Reddi 2021)",
        server_opt.validator(("betas", "tau")),
    ),
    (
        "fedadagrad",
        server_opt.fedadagrad,
        "server Adagrad on the pseudo-gradient (Reddi 2021)",
        server_opt.validator(("tau",)),
    ),
    ("median", robust.median, "coordinate-wise median (Yin 2018)", _none),
    (
        "trimmed_mean",
        robust.trimmed_mean,
        "coordinate-wise trimmed mean, trim_beta per side (Yin 2018)",
        robust.validate_trimmed_mean,
    ),
    ("krum", robust.krum, "Krum selection (Blanchard 2017)", robust.validate_krum),
    (
        "multi_krum",
        robust.multi_krum,
        "mean of the krum_m best Krum scores (Blanchard 2017)",
        robust.validate_multi_krum,
    ),
    (
        "dp_fedavg",
        dp.dp_fedavg,
        "clipped updates + Gaussian noise (McMahan 2018)",
        dp.validate,
    ),
    ("fednova", fednova.fednova, "normalised averaging for unequal local steps (Wang 2020)", _none),
)

for _name, _build, _description, _validate in _BUILTIN:
    register(StrategySpec(_name, _build, _description, _with_common_checks(_validate)))

__all__ = [
    "ClientInfo",
    "Strategy",
    "StrategySpec",
    "flatten_clients",
    "get",
    "keep_if_empty",
    "make",
    "names",
    "normalized_weights",
    "register",
    "stateless",
    "unflatten",
    "weighted_mean",
]
