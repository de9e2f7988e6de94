"""A scripted provider agent: PROTOCOL-LEVEL simulation of `ya-provider`.

It drives a real provider `yagna` daemon through its REST API with that
node's app key, as ya-provider does: publishes an offer (runtime `vm`,
resources, linear pay-as-you-go pricing, an erc20-holesky-tglm platform
address equal to its node id, the test's subnet), answers every demand
proposal with a counter-offer, approves agreements, starts one exe-unit
stand-in (`tests.golemnet.exeunit`, a subprocess) per created activity and
stops it when the activity is destroyed, sends debit notes while activities
run, and when an agreement is terminated issues and sends an invoice, then
watches whether the requestor accepts it. Nothing is isolated or executed on
Golem: the exe-unit runs commands on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from tests.golemnet.daemons import Daemon
from tests.golemnet.procs import kill_marked

log = logging.getLogger("golemnet.agent")

REPO_ROOT = Path(__file__).resolve().parents[2]
BEHAVIOURS = ("ok", "fail", "corrupt", "truncate", "die")
USAGE_VECTOR = ["golem.usage.duration_sec", "golem.usage.cpu_sec"]
PLATFORM = "erc20-holesky-tglm"
POLL = 1.0


@dataclass(frozen=True)
class Price:
    """A provider's linear pay-as-you-go price, in GLM."""

    per_hour: float = 0.1
    per_cpu_sec: float = 0.0001
    start: float = 0.01

    def coeffs(self) -> list[float]:
        """Coefficients in the order of `golem.com.usage.vector`, then the fixed price."""
        return [self.per_hour / 3600.0, self.per_cpu_sec, self.start]


@dataclass(frozen=True)
class ProviderSpec:
    """One simulated provider.

    Args:
        name: its `golem.node.id.name`.
        behaviour: "ok"; "fail" (every `run` exits 1 with a message on stderr);
            "corrupt" (flips one byte of every file the requestor downloads);
            "truncate" (halves every downloaded file); "die" (kills its daemon,
            agent and exe-units 1 s into its first `run` command).
        price: its pricing.
        mem_gib, storage_gib, cpu_threads: the resources it offers.
        debit_note_interval: seconds between debit notes per running activity
            (0: none).
        subnet: its `golem.node.debug.subnet` if not the network's, so that one
            network can hold providers that only some requestors see.
        max_agreements: most agreements it holds at once (a ya-provider whose one
            preset offers all its resources holds one); further proposals and
            agreements are rejected until one ends.
        env: extra environment of its exe-units' commands (e.g. `JFEDRL_FAULT`, so
            that one provider's worker returns wrong results).
    """

    name: str
    behaviour: str = "ok"
    price: Price = field(default_factory=Price)
    mem_gib: float = 8.0
    storage_gib: float = 20.0
    cpu_threads: int = 4
    debit_note_interval: float = 0.0
    subnet: str | None = None
    max_agreements: int = 1
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, not {self.behaviour!r}")


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z")


class ProviderAgent:
    """The agent threads of one provider (see the module docstring)."""

    def __init__(self, spec: ProviderSpec, daemon: Daemon, subnet: str, root: Path, tag: str):
        self.spec = spec
        self.daemon = daemon
        self.subnet = spec.subnet or subnet
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.stop_event = threading.Event()
        self.lock = threading.RLock()
        self.threads: list[threading.Thread] = []
        self.subscription = ""
        self.exeunits: dict[str, subprocess.Popen] = {}
        self.activity_agreement: dict[str, str] = {}
        self.activity_started: dict[str, float] = {}
        self.agreements: dict[str, dict] = {}
        self.countered: set[str] = set()
        self.invoiced: set[str] = set()
        self._stats = dict(
            offers=[],
            proposals=0,
            agreements=[],
            activities=[],
            destroyed_activities=[],
            invoices=[],
            debit_notes=[],
            terminations={},
            rejected=0,
            errors=[],
            died=False,
        )
        self.log_path = self.root / "agent.log"
        self._log = open(self.log_path, "a", buffering=1)

    # -- plumbing

    def note(self, message: str, *args) -> None:
        text = message % args if args else message
        self._log.write(f"{iso()} {self.spec.name}: {text}\n")

    def api(self, method: str, path: str, body=None, timeout: float = 15.0):
        return self.daemon.request(method, path, body, timeout=timeout)

    def poll(self, path: str) -> list:
        """One long-poll for events: [] on a timeout (HTTP 408) or a passing error."""
        try:
            return self.api("GET", path, timeout=POLL + 10) or []
        except urllib.error.HTTPError as error:
            if error.code != 408:
                self.note("GET %s: HTTP %s %s", path.split("?")[0], error.code, error.read()[:300])
                self.stop_event.wait(0.5)
        except (OSError, ValueError) as error:
            if not self.dead():
                self.note("GET %s failed: %s", path.split("?")[0], error)
                self.stop_event.wait(0.5)
        return []

    def spawn(self, target, *args) -> None:
        thread = threading.Thread(
            target=self._guard, args=(target, *args), name=f"{self.spec.name}-{target.__name__}"
        )
        thread.daemon = True
        thread.start()
        self.threads.append(thread)

    def _guard(self, target, *args) -> None:
        try:
            target(*args)
        except Exception as error:  # recorded: a test may assert there were none
            if not self.stop_event.is_set() and self.daemon.alive():
                self.note("ERROR in %s: %s: %s", target.__name__, type(error).__name__, error)
                with self.lock:
                    self._stats["errors"].append(f"{target.__name__}: {error}")

    def offer(self) -> dict:
        spec = self.spec
        properties = {
            "golem.node.id.name": spec.name,
            "golem.node.debug.subnet": self.subnet,
            "golem.inf.mem.gib": spec.mem_gib,
            "golem.inf.storage.gib": spec.storage_gib,
            "golem.inf.cpu.threads": spec.cpu_threads,
            "golem.inf.cpu.cores": spec.cpu_threads,
            "golem.inf.cpu.architecture": "x86_64",
            "golem.runtime.name": "vm",
            "golem.runtime.version": "0.0.0-golemnet",
            "golem.runtime.capabilities": ["vpn"],
            "golem.activity.caps.transfer.protocol": ["gftp"],
            "golem.srv.caps.multi-activity": True,
            "golem.com.scheme": "payu",
            "golem.com.pricing.model": "linear",
            "golem.com.pricing.model.linear.coeffs": spec.price.coeffs(),
            "golem.com.usage.vector": USAGE_VECTOR,
            f"golem.com.payment.platform.{PLATFORM}.address": self.daemon.node_id,
            "golem.com.payment.protocol.version": "3",
        }
        constraints = f"(&(golem.node.debug.subnet={self.subnet}))"
        return {"properties": properties, "constraints": constraints}

    # -- life cycle

    def start(self) -> None:
        self.subscription = self.api("POST", "/market-api/v1/offers", self.offer())
        self.note("offer published: %s", self.subscription)
        with self.lock:
            self._stats["offers"].append(self.subscription)
        self.spawn(self.market_loop)
        self.spawn(self.agreement_loop)
        self.spawn(self.activity_loop)
        self.spawn(self.payment_loop)

    def stop(self) -> None:
        self.stop_event.set()
        for activity_id in list(self.exeunits):
            self.stop_exeunit(activity_id, "provider stopped", grace=2.0)
        for thread in self.threads:
            thread.join(timeout=5)
        self._log.close()

    def dead(self) -> bool:
        if (self.root / "died").exists() or not self.daemon.alive():
            if not self._stats["died"]:
                with self.lock:
                    self._stats["died"] = True
                self.stop_event.set()
            return True
        return self.stop_event.is_set()

    # -- market

    def market_loop(self) -> None:
        path = f"/market-api/v1/offers/{self.subscription}/events?timeout={POLL}&maxEvents=20"
        while not self.dead():
            for event in self.poll(path):
                kind = event.get("eventType")
                if kind == "ProposalEvent":
                    self.spawn(self.counter, event["proposal"])
                elif kind == "AgreementEvent":
                    self.spawn(self.approve, event["agreement"])
                elif kind == "ProposalRejectedEvent":
                    self.note("proposal rejected: %s", event.get("reason"))

    def busy(self) -> bool:
        """Whether it holds `max_agreements` agreements not yet terminated."""
        with self.lock:
            active = set(self._stats["agreements"]) - set(self._stats["terminations"])
        return len(active) >= self.spec.max_agreements

    def counter(self, proposal: dict) -> None:
        proposal_id = proposal["proposalId"]
        if proposal_id in self.countered:
            return
        self.countered.add(proposal_id)
        if self.busy():
            self.api(
                "POST",
                f"/market-api/v1/offers/{self.subscription}/proposals/{proposal_id}/reject",
                {"message": "busy: no free resources", "golem.proposal.code": "Busy"},
            )
            with self.lock:
                self._stats["rejected"] += 1
            self.note("rejected proposal %s: busy", proposal_id)
            return
        answer = self.api(
            "POST",
            f"/market-api/v1/offers/{self.subscription}/proposals/{proposal_id}",
            self.offer(),
        )
        with self.lock:
            self._stats["proposals"] += 1
        self.note("countered proposal %s with %s", proposal_id, answer)

    def approve(self, agreement: dict) -> None:
        agreement_id = agreement["agreementId"]
        if self.busy():
            self.api(
                "POST",
                f"/market-api/v1/agreements/{agreement_id}/reject",
                {"message": "busy: no free resources", "golem.proposal.code": "Busy"},
            )
            with self.lock:
                self._stats["rejected"] += 1
            self.note("rejected agreement %s: busy", agreement_id)
            return
        with self.lock:
            self.agreements[agreement_id] = agreement
        self.api("POST", f"/market-api/v1/agreements/{agreement_id}/approve?timeout=10", None, 20)
        with self.lock:
            self._stats["agreements"].append(agreement_id)
        self.note("approved agreement %s", agreement_id)

    def agreement_loop(self) -> None:
        after = iso()
        seen = set()
        while not self.dead():
            path = f"/market-api/v1/agreementEvents?timeout={POLL}&afterTimestamp={after}"
            for event in self.poll(path):
                after = event.get("eventDate", after)
                key = (event.get("eventType"), event.get("agreementId"))
                if key in seen:
                    continue
                seen.add(key)
                if event.get("eventType") == "AgreementTerminatedEvent":
                    agreement_id = event["agreementId"]
                    reason = event.get("reason") or {}
                    with self.lock:
                        self._stats["terminations"][agreement_id] = {
                            "terminator": event.get("terminator"),
                            "reason": reason.get("message") if isinstance(reason, dict) else reason,
                            "details": reason,
                        }
                    self.note("agreement %s terminated: %s", agreement_id, reason)
                    self.spawn(self.invoice, agreement_id)

    # -- activities

    def activity_loop(self) -> None:
        after = iso(datetime.now(timezone.utc) - timedelta(minutes=1))
        seen = set()
        while not self.dead():
            path = f"/activity-api/v1/events?timeout={POLL}&maxEvents=20&afterTimestamp={after}"
            for event in self.poll(path):
                after = event.get("eventDate", after)
                kind, activity_id = event.get("eventType"), event.get("activityId")
                if isinstance(kind, dict):  # {"CreateActivity": {...}} in yagna 0.17
                    kind = next(iter(kind), None)
                if (kind, activity_id) in seen:
                    continue
                seen.add((kind, activity_id))
                if kind == "CreateActivity":
                    self.start_exeunit(activity_id, event.get("agreementId", ""))
                elif kind == "DestroyActivity":
                    self.spawn(self.stop_exeunit, activity_id, "destroyed by the requestor")

    def start_exeunit(self, activity_id: str, agreement_id: str) -> None:
        directory = self.root / f"activity-{activity_id}"
        directory.mkdir(parents=True, exist_ok=True)
        config = dict(
            activity_id=activity_id,
            activity_dir=str(directory),
            gsb_url=self.daemon.gsb_url,
            behaviour=self.spec.behaviour,
            provider_dir=str(self.root),
            provider_tag=self.tag,
            kill_pids=[self.daemon.process.pid] if self.daemon.process else [],
            env=dict(self.spec.env),
        )
        config_path = directory / "exeunit.json"
        config_path.write_text(json.dumps(config))
        env = dict(os.environ, GOLEMNET_PROVIDER=self.tag)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(directory / "exeunit.log", "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.golemnet.exeunit", str(config_path)],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self.lock:
            self.exeunits[activity_id] = process
            self.activity_agreement[activity_id] = agreement_id
            self.activity_started[activity_id] = time.time()
            self._stats["activities"].append(activity_id)
        self.note(
            "activity %s (agreement %s): exe-unit pid %d", activity_id, agreement_id, process.pid
        )
        if self.spec.debit_note_interval > 0:
            self.spawn(self.debit_notes, activity_id)

    def stop_exeunit(self, activity_id: str, reason: str, grace: float = 5.0) -> None:
        with self.lock:
            process = self.exeunits.pop(activity_id, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=5)
        kill_marked("GOLEMNET_ACTIVITY", activity_id)
        if self.usage(activity_id).get("state") != "Terminated" and self.daemon.alive():
            try:
                self.api(
                    "PUT",
                    f"/activity-api/v1/activity/{activity_id}/state",
                    {"state": ["Terminated", None], "reason": reason},
                )
            except (OSError, ValueError) as error:
                self.note("could not set activity %s Terminated: %s", activity_id, error)
        with self.lock:
            self._stats["destroyed_activities"].append(activity_id)
        self.note("activity %s stopped: %s", activity_id, reason)

    def usage(self, activity_id: str) -> dict:
        try:
            return json.loads((self.root / f"activity-{activity_id}" / "usage.json").read_text())
        except (OSError, ValueError):
            return {}

    # -- payments

    def amount_due(self, activity_ids) -> Decimal:
        coeffs = self.spec.price.coeffs()
        total = Decimal(0)
        for activity_id in activity_ids:
            usage = self.usage(activity_id).get("usage") or [
                time.time() - self.activity_started.get(activity_id, time.time()),
                0.0,
            ]
            total += Decimal(repr(coeffs[-1]))
            for coeff, value in zip(coeffs[:-1], usage, strict=False):
                total += Decimal(repr(coeff)) * Decimal(repr(float(value)))
        return total.quantize(Decimal("1e-12"))

    def send_document(self, kind: str, document_id: str) -> None:
        for attempt in range(5):
            try:
                self.api("POST", f"/payment-api/v1/{kind}/{document_id}/send?timeout=10", None, 20)
                return
            except (OSError, ValueError) as error:
                self.note(
                    "sending %s %s failed (%s), attempt %d", kind, document_id, error, attempt
                )
                if self.stop_event.wait(1.0):
                    return
        raise RuntimeError(f"could not send {kind} {document_id}")

    def invoice(self, agreement_id: str) -> None:
        with self.lock:
            if agreement_id in self.invoiced:
                return
            self.invoiced.add(agreement_id)
            activity_ids = [a for a, g in self.activity_agreement.items() if g == agreement_id]
        for activity_id in activity_ids:
            self.stop_exeunit(activity_id, "agreement terminated", grace=2.0)
        if not activity_ids:
            self.note("agreement %s had no activity: no invoice", agreement_id)
            return
        amount = self.amount_due(activity_ids)
        body = {
            "agreementId": agreement_id,
            "activityIds": activity_ids,
            "amount": str(amount),
            "paymentDueDate": iso(datetime.now(timezone.utc) + timedelta(days=1)),
        }
        invoice = self.api("POST", "/payment-api/v1/invoices", body)
        invoice_id = invoice["invoiceId"]
        record = {
            "id": invoice_id,
            "agreement_id": agreement_id,
            "amount": str(amount),
            "status": invoice.get("status"),
            "issued_at": time.time(),
        }
        with self.lock:
            self._stats["invoices"].append(record)
        self.note("invoice %s for %s GLM issued (agreement %s)", invoice_id, amount, agreement_id)
        self.send_document("invoices", invoice_id)
        record["sent_at"] = time.time()
        self.note("invoice %s sent", invoice_id)

    def debit_notes(self, activity_id: str) -> None:
        while not self.stop_event.wait(self.spec.debit_note_interval):
            if activity_id not in self.exeunits or self.dead():
                return
            usage = self.usage(activity_id).get("usage") or [0.0, 0.0]
            body = {
                "activityId": activity_id,
                "totalAmountDue": str(self.amount_due([activity_id])),
                "usageCounterVector": usage,
            }
            note = self.api("POST", "/payment-api/v1/debitNotes", body)
            record = {
                "id": note["debitNoteId"],
                "activity_id": activity_id,
                "amount": body["totalAmountDue"],
                "status": note.get("status"),
            }
            with self.lock:
                self._stats["debit_notes"].append(record)
            self.send_document("debitNotes", note["debitNoteId"])

    def payment_loop(self) -> None:
        """Follows the status of issued documents (ACCEPTED once the requestor accepts)."""
        final = {"ACCEPTED", "REJECTED", "SETTLED", "CANCELLED", "FAILED"}
        while not self.stop_event.wait(0.5) and not self.dead():
            with self.lock:
                pending = [
                    ("invoices", record)
                    for record in self._stats["invoices"]
                    if record.get("status") not in final
                ] + [
                    ("debitNotes", record)
                    for record in self._stats["debit_notes"]
                    if record.get("status") not in final
                ]
            for kind, record in pending:
                try:
                    document = self.api("GET", f"/payment-api/v1/{kind}/{record['id']}")
                except (OSError, ValueError):
                    continue
                status = document.get("status") if isinstance(document, dict) else None
                if status and status != record.get("status"):
                    record["status"] = status
                    self.note("%s %s is now %s", kind, record["id"], status)

    # -- what tests read

    def stats(self) -> dict:
        """A snapshot: offers, proposals, agreements, activities, commands, payments, faults."""
        with self.lock:
            snapshot = json.loads(json.dumps(self._stats))
        commands = []
        for path in sorted(self.root.glob("activity-*/commands.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    commands.append(json.loads(line))
                except ValueError:
                    pass
        commands.sort(key=lambda entry: entry.get("time", 0))
        snapshot["commands"] = commands
        snapshot["runs"] = [entry["argv"] for entry in commands if entry["command"] == "run-argv"]
        invoices = snapshot["invoices"]
        snapshot["invoices_issued"] = len(invoices)
        snapshot["invoices_accepted"] = sum(
            1 for i in invoices if i["status"] in ("ACCEPTED", "SETTLED")
        )
        snapshot["amount_invoiced"] = str(sum((Decimal(i["amount"]) for i in invoices), Decimal(0)))
        snapshot["amount_accepted"] = str(
            sum(
                (Decimal(i["amount"]) for i in invoices if i["status"] in ("ACCEPTED", "SETTLED")),
                Decimal(0),
            )
        )
        snapshot["debit_notes_accepted"] = sum(
            1 for d in snapshot["debit_notes"] if d["status"] in ("ACCEPTED", "SETTLED")
        )
        return snapshot


__all__ = ["BEHAVIOURS", "Price", "ProviderAgent", "ProviderSpec"]
