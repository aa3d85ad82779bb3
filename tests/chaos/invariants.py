"""The bank invariant (DESIGN.md section 12), checked after every step of every chaos test.

Read from the database and the provider over HTTP (the sandbox may be another process; only item 6 also reads
the sandbox's state directly when it runs in this process):
1. the ledger: `ledger_integrity_report` clean (zero-sum transactions, balances equal to their entries, no
   account that may not go negative below zero) and the total of every currency's entries still zero;
2. Stripe's side against ours, by the daily reconciliation (`monitoring.reconciliation`) of every day with a
   movement: each provider balance movement has exactly one ledger posting of the same net and one record,
   and the reverse. While a movement is open (its outcome not recorded yet) the provider may be ahead of
   the ledger: then only "missing in ledger", "status mismatch" and "missing in records" are tolerated;
3. each Stripe balance movement is the provider reference of exactly one succeeded money movement of ours,
   and each succeeded money movement that moves money at Stripe has exactly one balance movement;
4. no escrow deal or purchase has more than one live card authorization at Stripe;
5. every open money movement has a next look scheduled (or its staff alert open); once `settled` (the
   sweepers ran until quiet) none is left open without its staff alert;
6. PayPal, Maya and GCash one to one (one function each, objects read by tests.chaos.sandbox_objects): every
   object that moved money at the sandbox (a paid PayPal item, a paid Maya or GCash payment, a refund) has
   exactly one ledger transaction naming it (metadata provider and provider_reference; one reversed if the
   money came back), every batch, payment or refund has exactly one succeeded movement of ours naming it, and
   every such posting or movement names an object that moved money there. While something is in flight the
   provider may be ahead: then an object without its posting or movement is tolerated.

`bank_report(settled=...)` returns what it found; `assert_bank_invariant` fails the test with it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

import httpx
from django.conf import settings
from django.db.models import Count, Exists, Min, OuterRef, Sum
from django.utils import timezone

from core.models import Alert
from escrow.models import EscrowDeal, Purchase
from ledger.integrity import ledger_integrity_report
from ledger.models import Entry, Transaction
from monitoring.models import ReconciliationIssue, ReconciliationRun
from monitoring.reconciliation import day_bounds, reconciliation_run, stripe_pages
from payouts.models import PayoutItem
from providers.models import MoneyMovement
from tests.chaos.sandbox_objects import OPERATIONS, Moved, gcash_objects, maya_objects, paypal_objects

Kind = ReconciliationIssue.Kind
OPEN = MoneyMovement.OPEN
# what the provider may show before the ledger while the movement that did it is still open
IN_FLIGHT_KINDS = frozenset({Kind.MISSING_IN_LEDGER, Kind.STATUS_MISMATCH, Kind.MISSING_IN_RECORDS})
# operations that move money at Stripe (a balance movement each); holds, authorizations and voids do not
STRIPE_MONEY_OPERATIONS = frozenset(
    {
        "escrow.capture",
        "escrow.refund",
        "escrow.transfer",
        "purchase.capture",
        "purchase.refund",
        "payout.stripe_transfer",
        "payment.start",
        "payment.refund",
    }
)
LIVE_AUTHORIZATION = frozenset({"requires_capture", "succeeded", "canceled", "processing"})


@dataclass
class BankReport:
    problems: list[str] = field(default_factory=list)
    lost: int = 0  # money the provider moved that we never recorded, or an intent nobody will look at again
    doubled: int = 0  # money moved twice for one intent, or posted twice
    movements: Counter[str] = field(default_factory=Counter)  # our money movements by status

    @property
    def moved(self) -> int:
        return self.movements[MoneyMovement.Status.SUCCEEDED]

    def add(self, problem: str, *, lost: int = 0, doubled: int = 0) -> None:
        self.problems.append(problem)
        self.lost += lost
        self.doubled += doubled


def bank_report(*, settled: bool) -> BankReport:
    report = BankReport()
    for status, count in MoneyMovement.objects.values_list("status").annotate(n=Count("id")).order_by():
        report.movements[status] = count
    in_flight = not settled and MoneyMovement.objects.filter(status__in=OPEN).exists()
    _check_ledger(report)
    for day in _days():
        _check_reconciliation(report, day, in_flight=in_flight)
        _check_references(report, day, in_flight=in_flight)
    _check_authorizations(report)
    _check_open_movements(report, settled=settled)
    _check_paypal(report, in_flight=in_flight or (not settled and _payout_items_open("paypal")))
    _check_maya(report, in_flight=in_flight)
    _check_gcash(report, in_flight=in_flight)
    return report


def assert_bank_invariant(*, settled: bool) -> BankReport:
    report = bank_report(settled=settled)
    assert not report.problems, "bank invariant broken:\n" + "\n".join(report.problems) + _unfinished()
    return report


def _unfinished() -> str:
    """The movements not succeeded, to tell a broken invariant's cause."""
    rows = MoneyMovement.objects.exclude(status=MoneyMovement.Status.SUCCEEDED).order_by("id")
    lines = [
        f"  {m.key} {m.status} sends={m.sends} looks={m.sync_attempts} escalated={m.escalated_at is not None} "
        f"reference={m.provider_reference!r}: {m.failure_reason[:160]}"
        for m in rows
    ]
    return "\nmovements not succeeded:\n" + "\n".join(lines) if lines else ""


# --- 1. the ledger ------------------------------------------------------------------------------------------


def _check_ledger(report: BankReport) -> None:
    integrity = ledger_integrity_report()
    for finding in integrity.findings:
        report.add(f"ledger: {finding.code}: {finding.message}")
    for row in Entry.objects.values("currency").annotate(total=Sum("amount_minor")).order_by().exclude(total=0):
        report.add(f"ledger: the {row['currency']} entries total {row['total']}, not 0")


# --- 2. Stripe's report, the ledger and our records -----------------------------------------------------------


def _days() -> list[date]:
    first = MoneyMovement.objects.aggregate(first=Min("created_at"))["first"]
    today = timezone.now().date()
    if first is None:
        return []
    return [first.date() + timedelta(days=n) for n in range((today - first.date()).days + 1)]


def _check_reconciliation(report: BankReport, day: date, *, in_flight: bool) -> None:
    run = reconciliation_run(day=day, provider="stripe", trigger=ReconciliationRun.Trigger.COMMAND)
    issues = ReconciliationIssue.objects.filter(provider="stripe", date=day, status=ReconciliationIssue.Status.OPEN)
    for issue in issues.filter(last_seen_run=run):
        if in_flight and issue.kind in IN_FLIGHT_KINDS:
            continue
        text = f"reconciliation {day} {issue.kind} {issue.provider_reference or '(no reference)'}: {issue.detail}"
        report.add(
            text,
            lost=int(issue.kind in (Kind.MISSING_IN_LEDGER, Kind.STATUS_MISMATCH)),
            doubled=int(issue.kind == Kind.DUPLICATE),
        )


# --- 3. Stripe's balance movements against our money movements ---------------------------------------------


def _check_references(report: BankReport, day: date, *, in_flight: bool) -> None:
    start, end = day_bounds(day)
    at_stripe: Counter[str] = Counter()
    for page in stripe_pages(start, end):
        at_stripe.update(row.reference for row in page if row.reference)
    ours: dict[str, list[str]] = defaultdict(list)
    succeeded = MoneyMovement.objects.filter(
        provider="stripe", operation__in=STRIPE_MONEY_OPERATIONS, status=MoneyMovement.Status.SUCCEEDED
    )
    for key, reference in succeeded.values_list("key", "provider_reference"):
        ours[reference].append(key)
    for reference, count in at_stripe.items():
        keys = ours.get(reference, [])
        if count > 1:
            report.add(f"stripe moved money {count} times for {reference}", doubled=count - 1)
        if len(keys) > 1:
            report.add(f"{reference} is the outcome of {len(keys)} movements: {keys}", doubled=len(keys) - 1)
        if not keys and not in_flight:
            report.add(f"stripe moved money for {reference}; no succeeded movement of ours names it", lost=1)
    recorded_today = succeeded.filter(resolved_at__gte=start, resolved_at__lt=end)
    for key, reference in recorded_today.values_list("key", "provider_reference"):
        if reference not in at_stripe and not _at_stripe_another_day(reference, day):
            report.add(f"movement {key} succeeded as {reference!r}, which moved no money at stripe")


def _at_stripe_another_day(reference: str, day: date) -> bool:
    """A movement recorded just after midnight for money Stripe moved the day before."""
    start, _ = day_bounds(day - timedelta(days=1))
    return any(row.reference == reference for page in stripe_pages(start, start + timedelta(days=1)) for row in page)


# --- 4. card authorizations -----------------------------------------------------------------------------------


def _check_authorizations(report: BankReport) -> None:
    subjects = [("escrow_deal", pk) for pk in EscrowDeal.objects.values_list("pk", flat=True)]
    subjects += [("purchase", pk) for pk in Purchase.objects.values_list("pk", flat=True)]
    if not subjects:
        return
    headers = {"Authorization": f"Bearer {settings.STRIPE_API_KEY}"}
    with httpx.Client(base_url=f"{settings.SANDBOX_URL}/stripe/v1", headers=headers, timeout=10) as client:
        for name, pk in subjects:
            query = f"metadata['{name}']:'{pk}'"
            answer = client.get("/payment_intents/search", params={"query": query, "limit": 100})
            answer.raise_for_status()
            live = [pi["id"] for pi in answer.json()["data"] if pi["status"] in LIVE_AUTHORIZATION]
            if len(live) > 1:
                report.add(f"{name} {pk} has {len(live)} card authorizations at stripe: {live}", doubled=len(live) - 1)


# --- 5. nothing open without a next look --------------------------------------------------------------------


def _check_open_movements(report: BankReport, *, settled: bool) -> None:
    alerted = set(
        Alert.objects.filter(key__startswith="movement:", status=Alert.Status.OPEN).values_list("key", flat=True)
    )
    for movement in MoneyMovement.objects.filter(status__in=OPEN):
        if f"movement:{movement.key}" in alerted:
            continue
        label = f"movement {movement.key} ({movement.status}: {movement.failure_reason[:120]})"
        if movement.next_sync_at is None:
            report.add(f"{label}: open without a next look or a staff alert", lost=1)
        elif settled:
            report.add(f"{label}: still open after the sweepers ran until quiet", lost=1)


# --- 6. PayPal, Maya and GCash at the sandbox, the ledger and our movements --------------------------------------

PAYOUT_ITEM_OPEN = (PayoutItem.Status.NEW, PayoutItem.Status.PENDING, PayoutItem.Status.UNCLAIMED,
                    PayoutItem.Status.ONHOLD)  # fmt: skip


def _payout_items_open(provider: str) -> bool:
    """Items the provider may have paid before our poller or its webhook told us."""
    return PayoutItem.objects.filter(batch__provider=provider, status__in=PAYOUT_ITEM_OPEN).exists()


def _check_paypal(report: BankReport, *, in_flight: bool) -> None:
    """Each paid (or paid and returned) payout item posted once; each batch made by one movement."""
    _check_one_to_one(report, "paypal", paypal_objects(), in_flight=in_flight)


def _check_maya(report: BankReport, *, in_flight: bool) -> None:
    """Each paid payment and each refund posted once and the outcome of one movement."""
    _check_one_to_one(report, "maya", maya_objects(), in_flight=in_flight)


def _check_gcash(report: BankReport, *, in_flight: bool) -> None:
    """Each paid payment (a charged source) and each refund posted once and the outcome of one movement."""
    _check_one_to_one(report, "gcash", gcash_objects(), in_flight=in_flight)


def _check_one_to_one(report: BankReport, provider: str, objects: list[Moved], *, in_flight: bool) -> None:
    postings = _postings(provider)
    movements = _movements(provider)
    for moved in objects:
        if moved.posted:
            _check_posted(report, provider, moved, postings.get(moved.reference, []), in_flight=in_flight)
        if moved.operation:
            keys = movements.get((moved.operation, moved.reference), [])
            _check_named(report, provider, moved, keys, in_flight=in_flight)
    at_provider = {moved.reference for moved in objects}
    for reference, found in postings.items():
        if reference not in at_provider:
            report.add(f"ledger transactions {[pk for pk, _ in found]} post {provider} {reference}, "
                       f"which moved no money at {provider}")  # fmt: skip
    for (operation, reference), keys in movements.items():
        if reference not in at_provider:
            report.add(f"movements {keys} ({operation}) succeeded as {reference!r}, which moved no money at {provider}")


def _postings(provider: str) -> dict[str, list[tuple[int, bool]]]:
    """The ledger transactions naming an object at the provider: (id, reversed) by its reference."""
    reversed_ = Exists(Transaction.objects.filter(reverses=OuterRef("pk")))
    rows = (
        Transaction.objects.filter(metadata__provider=provider, reverses__isnull=True)
        .exclude(metadata__provider_reference="")
        .annotate(reversed=reversed_)
        .values_list("pk", "metadata__provider_reference", "reversed")
    )
    found: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    for pk, reference, was_reversed in rows:
        found[str(reference)].append((pk, was_reversed))
    return found


def _movements(provider: str) -> dict[tuple[str, str], list[str]]:
    """Our succeeded movements that moved money at the provider: keys by (operation, provider reference)."""
    succeeded = MoneyMovement.objects.filter(
        provider=provider, operation__in=OPERATIONS[provider], status=MoneyMovement.Status.SUCCEEDED
    )
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, operation, reference in succeeded.values_list("key", "operation", "provider_reference"):
        found[(operation, reference)].append(key)
    return found


def _check_posted(
    report: BankReport, provider: str, moved: Moved, found: list[tuple[int, bool]], *, in_flight: bool
) -> None:
    label = f"{moved.kind} {moved.reference}"
    if len(found) > 1:
        report.add(f"{label} is posted {len(found)} times: transactions {[pk for pk, _ in found]}",
                   doubled=len(found) - 1)  # fmt: skip
    elif not found and moved.net and not in_flight:
        report.add(f"{provider} moved money for {label}; no ledger transaction posts it", lost=1)
    elif found and not moved.net and not found[0][1]:
        report.add(f"{label}: the money came back, but transaction {found[0][0]} posting it is not reversed")


def _check_named(report: BankReport, provider: str, moved: Moved, keys: list[str], *, in_flight: bool) -> None:
    label = f"{moved.kind} {moved.reference}"
    if len(keys) > 1:
        report.add(f"{label} is the outcome of {len(keys)} movements: {keys}", doubled=len(keys) - 1)
    elif not keys and not in_flight:
        text = f"{provider} holds {label}; no succeeded {moved.operation} of ours names it"
        report.add(text, lost=int(moved.posted))  # a batch's money is counted by its items
