"""What a dead requestor left on its yagna: agreements still approved, invoices unpaid.

A requestor killed mid-round (kill -9, a lost machine) never terminates its
agreements nor accepts its providers' invoices: yagna keeps the agreements
`Approved` and the providers keep their activities, so a provider that holds one
agreement at a time stays busy for the resumed run, and the invoices of the
dead run stay `RECEIVED` (yapapi accepts only invoices of its own run's
agreements). `clean_up` runs once when the golem executor starts, before the
demand is published, on the requestor's own yagna (`GET
/market-api/v1/agreements`, `GET /payment-api/v1/invoices`, yagna 0.17.6):

- Every agreement in state `Approved` with this node as requestor is a dead
  run's (one run per yagna daemon is the rule; a second live run on the same
  daemon would lose its agreements) and is terminated, reason "requestor
  restarted". Its provider is free for the new demand.
- Every invoice addressed to this node in state `RECEIVED` is an earlier run's
  (the new run has no agreement yet) and is accepted in full, once per
  agreement (an agreement with an invoice already `ACCEPTED` or `SETTLED` gets
  none accepted, so nothing is paid twice), within `golem.budget` counted over
  these invoices, from an allocation made for them (per payment platform and
  payer address, expiring after a day). The provider did that work; what
  the dead run did after its last checkpoint is redone and paid again by the
  new run's own agreements, which is the cost of the restart.
- Invoices the providers send after the termination arrive later; the next
  start settles them by the same rule. Debit notes are never accepted here:
  the invoice closes the agreement.

One log line says what was done; the app key is never logged (it is only
sent in the `Authorization` header).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

log = logging.getLogger("jfedrl.offload")

TERMINATE_REASON = "requestor restarted"
PAID_STATES = ("ACCEPTED", "SETTLED")


class MarketPayments(Protocol):
    """The few REST calls `clean_up` needs (`YagnaRest` on a live daemon)."""

    def approved_agreements(self) -> list[str]: ...

    def terminate(self, agreement_id: str, reason: str) -> None: ...

    def invoices(self) -> list[dict[str, Any]]: ...

    def allocate(self, platform: str, address: str, amount: Decimal) -> str: ...

    def accept(self, invoice_id: str, amount: Decimal, allocation_id: str) -> None: ...


@dataclass
class Leftovers:
    """What `clean_up` found and did."""

    terminated: list[str] = field(default_factory=list)
    accepted: dict[str, Decimal] = field(default_factory=dict)
    """Agreement id -> the accepted invoice's amount (GLM)."""
    skipped: list[str] = field(default_factory=list)
    """Invoice ids left as they are (a second invoice of a paid agreement, over budget)."""
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        total = sum(self.accepted.values(), Decimal(0))
        parts = [
            f"golem: leftovers of an earlier run: {len(self.terminated)} agreement(s) "
            f"terminated, {len(self.accepted)} invoice(s) accepted ({total} GLM)",
        ]
        if self.skipped:
            parts.append(f"{len(self.skipped)} invoice(s) left unpaid")
        if self.errors:
            parts.append(f"{len(self.errors)} call(s) failed: {self.errors[0]}")
        return ", ".join(parts)


def _amount(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def clean_up(client: MarketPayments, identity: str, budget: float) -> Leftovers:
    """Terminates a dead run's agreements and settles its invoices (module docstring).

    Args:
        client: the requestor's yagna (REST) or a stand-in.
        identity: this requestor's node id (`GET /me`); invoices for others are ignored.
        budget: the most GLM accepted here in all (`golem.budget`).

    Returns:
        What was terminated, accepted, skipped and what failed; never raises for a
        failed call (the run goes on, the line names the first failure).
    """
    done = Leftovers()
    try:
        agreements = client.approved_agreements()
    except Exception as error:
        agreements = []
        done.errors.append(f"listing agreements: {type(error).__name__}: {error}")
    for agreement_id in agreements:
        try:
            client.terminate(agreement_id, TERMINATE_REASON)
            done.terminated.append(agreement_id)
        except Exception as error:
            done.errors.append(f"terminating {agreement_id}: {type(error).__name__}: {error}")
    try:
        invoices = [
            invoice
            for invoice in client.invoices()
            if str(invoice.get("recipientId", "")).lower() == identity.lower()
        ]
    except Exception as error:
        invoices = []
        done.errors.append(f"listing invoices: {type(error).__name__}: {error}")
    paid = {inv.get("agreementId") for inv in invoices if inv.get("status") in PAID_STATES}
    left = Decimal(str(budget))
    chosen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for invoice in sorted(invoices, key=lambda inv: str(inv.get("timestamp", ""))):
        if invoice.get("status") != "RECEIVED":
            continue
        agreement_id = invoice.get("agreementId")
        amount = _amount(invoice.get("amount"))
        if agreement_id in paid or amount > left:
            done.skipped.append(str(invoice.get("invoiceId")))
            continue
        paid.add(agreement_id)
        left -= amount
        key = (str(invoice.get("paymentPlatform", "")), str(invoice.get("payerAddr", "")))
        chosen.setdefault(key, []).append(invoice)
    for (platform, address), group in chosen.items():
        try:
            total = sum((_amount(inv.get("amount")) for inv in group), Decimal(0))
            allocation_id = client.allocate(platform, address, total)
        except Exception as error:
            done.errors.append(f"allocating for {platform}: {type(error).__name__}: {error}")
            done.skipped.extend(str(inv.get("invoiceId")) for inv in group)
            continue
        for invoice in group:
            amount = _amount(invoice.get("amount"))
            try:
                client.accept(str(invoice["invoiceId"]), amount, allocation_id)
                done.accepted[str(invoice.get("agreementId"))] = amount
            except Exception as error:
                done.errors.append(
                    f"accepting {invoice.get('invoiceId')}: {type(error).__name__}: {error}"
                )
                done.skipped.append(str(invoice.get("invoiceId")))
    return done


class YagnaRest:
    """`MarketPayments` over yagna's REST API (urllib; the key only in the header)."""

    def __init__(self, url: str, key: str, timeout: float = 10.0):
        self._url = url.rstrip("/")
        self._key = key
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self._url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                raw = response.read(1 << 22)
        except urllib.error.HTTPError as error:
            detail = error.read(300).decode(errors="replace").strip().replace("\n", " ")
            raise RuntimeError(f"{method} {path} answered HTTP {error.code} {detail}") from None
        return json.loads(raw) if raw.strip() else None

    def approved_agreements(self) -> list[str]:
        entries = self._call("GET", "/market-api/v1/agreements?state=Approved") or []
        return [
            str(entry["id"])
            for entry in entries
            if str(entry.get("role", "Requestor")).lower() == "requestor"
        ]

    def terminate(self, agreement_id: str, reason: str) -> None:
        self._call(
            "POST",
            f"/market-api/v1/agreements/{urllib.parse.quote(agreement_id)}/terminate",
            {"message": reason},
        )

    def invoices(self) -> list[dict[str, Any]]:
        return self._call("GET", "/payment-api/v1/invoices?maxItems=1000") or []

    def allocate(self, platform: str, address: str, amount: Decimal) -> str:
        now = datetime.now(timezone.utc)
        body = {
            "allocationId": "",
            "address": address,
            "paymentPlatform": platform,
            "totalAmount": str(amount),
            "spentAmount": "0",
            "remainingAmount": "0",
            "timestamp": now.isoformat(),
            "timeout": (now + timedelta(days=1)).isoformat(),
            "makeDeposit": False,
        }
        answer = self._call("POST", "/payment-api/v1/allocations", body) or {}
        return str(answer["allocationId"])

    def accept(self, invoice_id: str, amount: Decimal, allocation_id: str) -> None:
        self._call(
            "POST",
            f"/payment-api/v1/invoices/{urllib.parse.quote(invoice_id)}/accept",
            {"totalAmountAccepted": str(amount), "allocationId": allocation_id},
        )


def clean_up_yagna(url: str, key: str, identity: str, budget: float) -> Leftovers:
    """`clean_up` on the daemon at `url`, logged in one line."""
    done = clean_up(YagnaRest(url, key), identity, budget)
    log.info(done.line())
    return done
