"""The market now: which providers would take this run's tasks, and at what price.

`jfedrl offload golem-offers` (and `jfedrl train --executor golem --dry-run`)
publish the run's demand (the same constraints the executor uses: image
runtime, memory, disk, CPU threads, GPU, subnet) straight on the yagna market
REST API, collect the offers that answer for a few seconds, and withdraw the
demand. No allocation is made, no agreement proposed: nothing is spent.

The GLM estimate is arithmetic on the offers' linear prices
(`golem.com.pricing.model.linear.coeffs` over `golem.com.usage.vector`): each
shard on one of the cheapest providers for `seconds` of a task, plus the
start fee of each agreement once per run. It is an estimate: real task times
are only known after a round, and a provider bills by its own counters.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from offload.archive import OffloadError
from offload.golem_config import GolemConfig
from offload.yagna import api_url, app_key, check_yagna, constraints, import_yapapi


@dataclass(frozen=True)
class Offer:
    """One provider's offer, as far as planning a run goes."""

    provider: str
    name: str
    cpu_threads: int
    mem_gib: float
    storage_gib: float
    runtime: str
    gpu: str
    start: float
    """GLM per agreement (the fixed coefficient)."""
    per_hour: float
    """GLM per hour of activity (golem.usage.duration_sec)."""
    per_cpu_hour: float
    """GLM per CPU-hour (golem.usage.cpu_sec)."""

    def task_cost(self, seconds: float) -> float:
        """GLM for one task of `seconds`, every thread busy (an upper bound on CPU time)."""
        hours = seconds / 3600.0
        return self.per_hour * hours + self.per_cpu_hour * hours * self.cpu_threads


def offer_from(properties: dict[str, Any], issuer: str) -> Offer:
    """An `Offer` from an offer's properties (missing ones read as 0 / '')."""
    coeffs = [float(c) for c in properties.get("golem.com.pricing.model.linear.coeffs") or []]
    vector = list(properties.get("golem.com.usage.vector") or [])
    prices = dict(zip(vector, coeffs, strict=False))
    start = coeffs[len(vector)] if len(coeffs) > len(vector) else 0.0
    gpu = next(
        (str(v) for k, v in sorted(properties.items()) if ".gpu." in k and k.endswith("model")),
        "",
    )
    return Offer(
        provider=issuer,
        name=str(properties.get("golem.node.id.name", "")),
        cpu_threads=int(properties.get("golem.inf.cpu.threads", 0) or 0),
        mem_gib=float(properties.get("golem.inf.mem.gib", 0) or 0),
        storage_gib=float(properties.get("golem.inf.storage.gib", 0) or 0),
        runtime=str(properties.get("golem.runtime.name", "")),
        gpu=gpu,
        start=start,
        per_hour=prices.get("golem.usage.duration_sec", 0.0) * 3600.0,
        per_cpu_hour=prices.get("golem.usage.cpu_sec", 0.0) * 3600.0,
    )


def _call(url: str, key: str, method: str, path: str, body: Any = None, timeout: float = 20.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read(1 << 22)
    return json.loads(text) if text.strip() else None


def market_offers(config: GolemConfig, wait: float = 10.0) -> list[Offer]:
    """The offers matching the run's demand that arrive within `wait` seconds.

    Raises:
        OffloadError: in one line, if yagna is unreachable or refuses the key or the demand.
    """
    import_yapapi()  # `constraints` words the demand as the executor's yapapi does
    url, key = api_url(), app_key()
    identity = check_yagna(url, key)
    expiration = datetime.now(timezone.utc) + timedelta(minutes=5)
    demand = {
        "properties": {
            "golem.node.debug.subnet": config.subnet,
            "golem.srv.comp.expiration": int(expiration.timestamp() * 1000),
            f"golem.com.payment.platform.{_platform(config)}.address": identity,
        },
        "constraints": f"(&{constraints(config)}(golem.node.debug.subnet={config.subnet}))",
    }
    market = url
    try:
        subscription = _call(market, key, "POST", "/market-api/v1/demands", demand)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise OffloadError(f"golem: yagna at {url} refused the demand: {error}") from None
    offers: dict[str, Offer] = {}
    end = time.monotonic() + wait
    try:
        while time.monotonic() < end:
            timeout = max(0.5, min(2.0, end - time.monotonic()))
            path = f"/market-api/v1/demands/{subscription}/events?timeout={timeout:g}&maxEvents=100"
            try:
                events = _call(market, key, "GET", path, timeout=timeout + 10) or []
            except urllib.error.HTTPError as error:
                if error.code != 408:
                    raise OffloadError(f"golem: the market answered HTTP {error.code}") from None
                events = []
            for event in events:
                proposal = event.get("proposal") if isinstance(event, dict) else None
                if not proposal:
                    continue
                issuer = str(proposal.get("issuerId", ""))
                offers[issuer] = offer_from(proposal.get("properties") or {}, issuer)
    finally:
        try:
            _call(market, key, "DELETE", f"/market-api/v1/demands/{subscription}")
        except (urllib.error.URLError, OSError, ValueError):
            pass
    return sorted(offers.values(), key=lambda o: (o.task_cost(3600.0) + o.start, o.name))


def _platform(config: GolemConfig) -> str:
    token = "tglm" if config.payment_network in ("holesky", "goerli", "rinkeby") else "glm"
    return f"{config.payment_driver}-{config.payment_network}-{token}"


def describe_offers(config: GolemConfig, offers: list[Offer]) -> list[str]:
    """The lines `jfedrl offload golem-offers` prints."""
    demand = f"{constraints(config)} on subnet {config.subnet!r}"
    if not offers:
        return [f"golem: no offer matches {demand} (payment {_platform(config)})"]
    lines = [f"golem: {len(offers)} provider(s) offer {demand} (payment {_platform(config)}):"]
    lines.append(
        f"  {'provider':<44} {'name':<16} {'threads':>7} {'mem GiB':>8} {'gpu':<14} "
        f"{'start':>8} {'GLM/h':>8} {'GLM/cpu-h':>9}"
    )
    for o in offers:
        lines.append(
            f"  {o.provider:<44} {o.name[:16]:<16} {o.cpu_threads:>7} {o.mem_gib:>8.1f} "
            f"{(o.gpu or '-')[:14]:<14} {o.start:>8.4g} {o.per_hour:>8.4g} {o.per_cpu_hour:>9.4g}"
        )
    return lines


@dataclass(frozen=True)
class Estimate:
    """GLM a run is likely to cost, from the offers on the market now."""

    providers: int
    per_round: float
    start_fees: float
    rounds_in_budget: int


def estimate(
    offers: list[Offer], shards: int, seconds: float, budget: float, max_workers: int
) -> Estimate | None:
    """Each shard's task on one of the cheapest providers for `seconds`, start fees once.

    With fewer providers than shards, a provider runs several shards' tasks one after
    another (`offload.golem.spare_wait`): the GLM per round is the same sum of task times.
    """
    if not offers:
        return None
    used = sorted(offers, key=lambda o: o.task_cost(seconds))[: max(1, min(shards, max_workers))]
    per_task = sum(o.task_cost(seconds) for o in used) / len(used)
    per_round = per_task * shards
    start_fees = sum(o.start for o in used)
    left = budget - start_fees
    rounds = int(left // per_round) if per_round > 0 and left > 0 else (0 if left <= 0 else -1)
    return Estimate(len(used), per_round, start_fees, rounds)
