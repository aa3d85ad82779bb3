"""Reads for the status dashboard (templates/admin/dashboard/): one selector per section, each a few bounded queries.

Every query filters on an indexed column and stops at a LIMIT; nothing counts a whole table. A section that has
more rows than it shows says so (`more`). Labels and what-to-do texts come from core.labels; the buttons are the
existing admin actions (ACTIONS: the changelist to post to, the action's name and the permission it needs),
offered only to users who hold that permission (`can`, usually `request.user.has_perm`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from operator import or_
from typing import Any

from django.db import connections
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Sum
from django.urls import reverse
from django.utils import timezone

from core.alerts import ACTIVE as ALERT_ACTIVE
from core.labels import StateHelp, label_of, operation_label, provider_name, state_help, status_label, when
from core.models import Alert, ProcessingLock
from core.money import Money
from escrow.models import EscrowDeal, Purchase, PurchaseRefund
from monitoring.models import ReconciliationIssue
from payouts.models import PayoutBatch, PayoutItem
from payouts.selectors import StatusProgress, movement_status_by_batch, progress_by_batch
from providers.health import RESET_PERMISSION, ProviderHealth, provider_health
from providers.models import MoneyMovement, PaymentAttempt, Refund

Can = Callable[[str], bool]

ROWS = 20  # rows a list shows
RECENT_BATCHES = timedelta(hours=24)  # finished batches stay on the board this long
BATCHES_SEARCHED_FOR_FAILURES = 50  # the newest batches whose unpaid items are offered for retry
DEADLINE_WINDOW = timedelta(hours=24)  # deals whose deadline is this close
DELIVERY_WINDOW = timedelta(hours=1)  # purchases whose card hold is released this soon if not delivered
AUTHORIZATION_LAPSES_AFTER = timedelta(days=7)  # Stripe voids an uncaptured card authorization after about 7 days

# Item statuses by what they mean for the winner: the progress bar's colours.
PAID, WAITING, UNPAID, TAKEN_BACK = "paid", "waiting", "unpaid", "taken-back"
ITEM_OUTCOME = {
    PayoutItem.Status.SUCCESS: PAID,
    **{status: WAITING for status in ("NEW", "PENDING", "ONHOLD", "UNCLAIMED")},
    **{status: UNPAID for status in PayoutItem.UNPAID_FINAL},
    **{status: TAKEN_BACK for status in PayoutItem.TAKEN_BACK},
}


# The admin actions the buttons post to: name -> (changelist model, action, permission it needs, label, confirms).
# `confirms`: the action shows its confirmation page before any money moves.
ACTIONS = {
    "batch_sync": ("payouts.payoutbatch", "sync_now", "payouts.execute_payoutbatch", "Sync batch", False),
    "batch_retry": ("payouts.payoutbatch", "retry_failed", "payouts.prepare_payoutbatch", "Retry failed items", False),
    "deal_retry": ("escrow.escrowdeal", "retry_transfer", "escrow.retry_transfer_escrowdeal", "Retry transfer", True),
    "purchase_sync": ("escrow.purchase", "sync_unknown", "escrow.sync_purchase", "Sync purchase", False),
    "movement_sync": ("providers.moneymovement", "sync_now", "providers.sync_moneymovement", "Sync movement", False),
    "lock_release": ("core.processinglock", "release", "core.release_processinglock", "Release", False),
    "alert_acknowledge": ("core.alert", "acknowledge", "core.acknowledge_alert", "Acknowledge", False),
}  # fmt: skip


@dataclass(frozen=True)
class Action:
    """A button posting one object to an existing admin action (`action` empty: to `url` itself, e.g. a reset)."""

    url: str
    action: str
    pk: int | str
    label: str
    confirms: bool = False


@dataclass(frozen=True)
class Link:
    url: str
    text: str


def buttons(can: Can, *wanted: tuple[str, int]) -> list[Action]:
    """The buttons for (action name, object pk) pairs that the user holds the permission of."""
    found = []
    for name, pk in wanted:
        model, action, permission, label, confirms = ACTIONS[name]
        if can(permission):
            found.append(Action(reverse(f"admin:{model.replace('.', '_')}_changelist"), action, pk, label, confirms))
    return found


def change_link(model: str, pk: int, text: str) -> Link:
    return Link(reverse(f"admin:{model.replace('.', '_')}_change", args=[pk]), text)


# --- payout batches in flight -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressPart:
    status: str
    label: str
    outcome: str  # paid, waiting, unpaid, taken-back
    count: int
    amount: Money
    percent: int  # of the batch's items, for the bar's width


@dataclass
class BatchRow:
    batch: PayoutBatch
    provider: str
    label: str
    provider_call: str
    parts: list[ProgressPart]
    paid_count: int
    paid: Money
    total: Money
    finished: bool
    link: Link
    actions: list[Action]

    @property
    def summary(self) -> str:
        return f"{self.paid_count} of {self.batch.item_count} paid · {self.paid} of {self.total}"


def batches_in_flight(*, can: Can, limit: int = ROWS, now: datetime | None = None) -> list[BatchRow]:
    """Active batches, and those finished in the last RECENT_BATCHES, newest first, with progress by item status."""
    since = (now or timezone.now()) - RECENT_BATCHES
    batches = list(
        PayoutBatch.objects.filter(Q(status__in=PayoutBatch.ACTIVE) | Q(updated_at__gte=since))
        .select_related("cycle")
        .order_by("-pk")[:limit]
    )
    ids = [batch.pk for batch in batches]
    progress, calls = progress_by_batch(ids), movement_status_by_batch(ids)
    return [_batch_row(batch, progress.get(batch.pk, []), calls.get(batch.pk, ""), can) for batch in batches]


def _batch_row(batch: PayoutBatch, progress: list[StatusProgress], call: str, can: Can) -> BatchRow:
    parts = [
        ProgressPart(
            status=p.status,
            label=label_of("payouts.payoutitem", p.status, provider=batch.provider),
            outcome=ITEM_OUTCOME.get(p.status, WAITING),
            count=p.count,
            amount=Money(p.amount_minor or 0, batch.currency),
            percent=p.count * 100 // max(batch.item_count, 1),
        )
        for p in progress
    ]
    paid = [part for part in parts if part.outcome == PAID]
    sent = batch.status in (PayoutBatch.Status.SUBMITTING, PayoutBatch.Status.SUBMITTED)
    return BatchRow(
        batch=batch,
        provider=provider_name(batch.provider),
        label=status_label(batch),
        provider_call=label_of("providers.moneymovement", call, provider=batch.provider) if call else "",
        parts=parts,
        paid_count=sum(part.count for part in paid),
        paid=Money(sum(part.amount.minor for part in paid), batch.currency),
        total=Money(batch.total_minor, batch.currency),
        finished=batch.status not in PayoutBatch.ACTIVE,
        link=change_link("payouts.payoutbatch", batch.pk, batch.sender_batch_id),
        actions=buttons(can, ("batch_sync", batch.pk)) if sent else [],
    )


# --- what the protocol's sweeper sees as in flight or unknown -----------------------------------------

# Who may see a movement: the view permission of the domain it moves money for.
MOVEMENT_DOMAINS = {
    "payment.": "providers.view_payment",
    "payout.": "payouts.view_payoutbatch",
    "escrow.": "escrow.view_escrowdeal",
    "purchase.": "escrow.view_purchase",
}


@dataclass
class MovementRow:
    movement: MoneyMovement
    operation: str
    provider: str
    amount: Money | None
    label: str
    since: datetime  # first sent, or recorded if never sent
    help: StateHelp | None
    subject: Link | None
    link: Link | None
    actions: list[Action]


def movements_in_flight(*, can: Can, limit: int = 40, now: datetime | None = None) -> tuple[list[MovementRow], bool]:
    """Open money movements (pending, waiting, unknown) of the domains the user may see: those whose checks ran
    out first, then by next sync. Returns the rows and whether there are more."""
    now = now or timezone.now()
    prefixes = [prefix for prefix, permission in MOVEMENT_DOMAINS.items() if can(permission)]
    if not prefixes:
        return [], False
    rows = MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN)
    if len(prefixes) < len(MOVEMENT_DOMAINS):
        rows = rows.filter(reduce(or_, (Q(operation__startswith=prefix) for prefix in prefixes)))
    found = list(rows.order_by(F("next_sync_at").asc(nulls_first=True), "pk")[: limit + 1])
    parents = _subject_parents(found[:limit])
    return [_movement_row(movement, parents, can, now) for movement in found[:limit]], len(found) > limit


def _subject_parents(movements: list[MoneyMovement]) -> dict[str, dict[int, int]]:
    """For subjects that are child rows: the parent whose page and action apply (an item's batch...)."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for movement in movements:
        wanted[movement.operation].append(movement.subject_id)

    def parent_of(model: Any, operations: tuple[str, ...], parent: str) -> dict[int, int]:
        ids = [pk for operation in operations for pk in wanted[operation]]
        return dict(model.objects.filter(pk__in=ids).values_list("pk", parent)) if ids else {}

    return {
        "payout.": parent_of(PayoutItem, ("payout.stripe_transfer", "payout.cancel_unclaimed"), "batch_id"),
        "purchase.": parent_of(PurchaseRefund, ("purchase.refund",), "purchase_id"),
        "payment.": parent_of(PaymentAttempt, ("payment.start", "payment.charge"), "payment_id"),
        "payment.refund": parent_of(Refund, ("payment.refund",), "payment_id"),
    }


def _movement_row(movement: MoneyMovement, parents: dict[str, dict[int, int]], can: Can, now: datetime) -> MovementRow:
    subject, actions = _subject_and_actions(movement, parents, can)
    can_view = can("providers.view_moneymovement")
    return MovementRow(
        movement=movement,
        operation=operation_label(movement.operation),
        provider=provider_name(movement.provider),
        amount=Money(movement.amount_minor, movement.currency) if movement.currency else None,
        label=status_label(movement, now=now),
        since=movement.first_sent_at or movement.created_at,
        help=state_help(movement),
        subject=subject,
        link=change_link("providers.moneymovement", movement.pk, movement.key) if can_view else None,
        actions=actions + buttons(can, ("movement_sync", movement.pk)),
    )


def _subject_and_actions(
    movement: MoneyMovement, parents: dict[str, dict[int, int]], can: Can
) -> tuple[Link | None, list[Action]]:
    """The domain row a movement acts for, and that domain's own way to ask the provider now."""
    operation, subject_id = movement.operation, movement.subject_id
    domain = operation.split(".")[0] + "."
    if domain == "payout.":
        batch_id = subject_id if operation == "payout.paypal_batch" else parents[domain].get(subject_id)
        if batch_id is None:
            return None, []
        return change_link("payouts.payoutbatch", batch_id, f"Batch {batch_id}"), buttons(can, ("batch_sync", batch_id))
    if domain == "escrow.":
        retry = buttons(can, ("deal_retry", subject_id)) if operation == "escrow.transfer" else []
        return change_link("escrow.escrowdeal", subject_id, f"Deal {subject_id}"), retry
    if domain == "purchase.":
        purchase_id = parents[domain].get(subject_id) if operation == "purchase.refund" else subject_id
        if purchase_id is None:
            return None, []
        link = change_link("escrow.purchase", purchase_id, f"Purchase {purchase_id}")
        return link, buttons(can, ("purchase_sync", purchase_id))
    payment_id = parents["payment.refund" if operation == "payment.refund" else "payment."].get(subject_id)
    if domain == "payment." and payment_id is not None:
        return change_link("providers.payment", payment_id, f"Payment {payment_id}"), []
    return None, []


# --- retryable failures ---------------------------------------------------------------------------


@dataclass
class FailedItem:
    item: PayoutItem
    label: str
    amount: Money
    help: StateHelp | None


@dataclass
class FailedBatch:
    batch: PayoutBatch
    count: int
    amount: Money
    items: list[FailedItem]
    link: Link
    items_url: str
    actions: list[Action]


@dataclass
class FailedDeal:
    deal: EscrowDeal
    label: str
    amount: Money
    help: StateHelp | None
    link: Link
    actions: list[Action]


def payout_failures(*, can: Can, items_per_batch: int = 5) -> list[FailedBatch]:
    """Unpaid items of the newest batches whose winner nobody is paying again: what 'Retry failed items' pays."""
    newest = list(PayoutBatch.objects.order_by("-pk").values_list("pk", flat=True)[:BATCHES_SEARCHED_FOR_FAILURES])
    paid_again = PayoutItem.objects.filter(selection_id=OuterRef("selection_id"), status__in=PayoutItem.LIVE)
    unpaid = PayoutItem.objects.filter(status__in=PayoutItem.UNPAID_FINAL).exclude(Exists(paid_again))
    # Totals only for the batches shown: each batch's unpaid items are read once, not those of every batch searched.
    with_unpaid = PayoutBatch.objects.filter(pk__in=newest).filter(Exists(unpaid.filter(batch_id=OuterRef("pk"))))
    batches = {batch.pk: batch for batch in with_unpaid.order_by("-pk")[:ROWS]}
    if not batches:
        return []
    by_batch = unpaid.filter(batch_id__in=batches).order_by().values("batch_id")
    totals = {
        row["batch_id"]: (row["n"], row["amount_minor"])
        for row in by_batch.annotate(n=Count("id"), amount_minor=Sum("amount_minor"))
    }
    shown: dict[int, list[FailedItem]] = defaultdict(list)
    for item in _first_of_each(unpaid, list(batches), items_per_batch):
        item.batch = batches[item.batch_id]
        amount = Money(item.amount_minor, item.currency)
        shown[item.batch_id].append(FailedItem(item, status_label(item), amount, state_help(item)))
    items_url = reverse("admin:payouts_payoutitem_changelist")
    return [
        FailedBatch(
            batch=batch,
            count=totals[pk][0],
            amount=Money(totals[pk][1], batch.currency),
            items=shown[pk],
            link=change_link("payouts.payoutbatch", pk, batch.sender_batch_id),
            items_url=f"{items_url}?batch__id__exact={pk}",
            actions=buttons(can, ("batch_retry", pk)),
        )
        for pk, batch in batches.items()
    ]


def _first_of_each(items: QuerySet[PayoutItem], batch_ids: list[int], count: int) -> list[PayoutItem]:
    """The first `count` of `items` in each batch: a LIMIT per batch, so one batch's hundreds never crowd out the
    others; one query where the database can combine limited selects (PostgreSQL), else one per batch."""
    firsts = [items.filter(batch_id=pk).order_by("pk")[:count] for pk in batch_ids]
    if connections[items.db].features.supports_slicing_ordering_in_compound:
        return sorted(firsts[0].union(*firsts[1:], all=True), key=lambda item: item.pk)
    return [item for first in firsts for item in first]


def transfer_failures(*, can: Can) -> list[FailedDeal]:
    """Escrow deals whose transfer to the seller Stripe refused, next retry first."""
    deals = EscrowDeal.objects.filter(status=EscrowDeal.Status.TRANSFER_FAILED)
    return [
        FailedDeal(
            deal=deal,
            label=status_label(deal),
            amount=Money(deal.seller_net_minor, deal.currency),
            help=state_help(deal),
            link=change_link("escrow.escrowdeal", deal.pk, f"Deal {deal.pk}"),
            actions=buttons(can, ("deal_retry", deal.pk)),
        )
        for deal in deals.order_by(F("next_transfer_at").asc(nulls_first=True), "pk")[:ROWS]
    ]


# --- processing locks -----------------------------------------------------------------------------


@dataclass
class LockRow:
    lock: ProcessingLock
    stale: bool
    label: str
    expires: str
    actions: list[Action]


def processing_locks(*, can: Can, now: datetime | None = None) -> tuple[list[LockRow], bool]:
    """Held leases, the stale ones (past expiry, never given back) first."""
    now = now or timezone.now()
    found = list(ProcessingLock.objects.order_by("expires_at", "pk")[: ROWS + 1])
    rows = [
        LockRow(
            lock=lock,
            stale=lock.expires_at <= now,
            label=label_of("core.processinglock", "stale" if lock.expires_at <= now else "held"),
            expires=when(lock.expires_at, now=now),
            actions=buttons(can, ("lock_release", lock.pk)),
        )
        for lock in found[:ROWS]
    ]
    return rows, len(found) > ROWS


# --- provider cards -------------------------------------------------------------------------------


@dataclass
class ProviderCard:
    health: ProviderHealth
    name: str
    status_label: str
    breaker_label: str
    calls: int
    success_percent: str | None  # e.g. "97.5", over every method in the window
    avg_latency_ms: int | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    actions: list[Action]


def provider_cards(*, can: Can) -> list[ProviderCard]:
    """The provider health page's figures (providers.health), summed over methods: one card per provider."""
    cards = []
    for health in provider_health():
        methods = health.methods
        calls = sum(method.calls for method in methods)
        successes = sum(method.successes for method in methods)
        latency = sum((method.avg_latency_ms or 0) * method.calls for method in methods)
        resettable = health.breaker_state in ("open", "half_open") and can(RESET_PERMISSION)
        reset = Action(reverse("providers_admin:breaker_reset", args=[health.provider]), "", "", "Reset breaker")
        cards.append(
            ProviderCard(
                health=health,
                name=provider_name(health.provider),
                status_label=label_of("providers.health", health.status.value),
                breaker_label=label_of("providers.breaker", health.breaker_state),
                calls=calls,
                success_percent=_percent(successes * 1000 // calls) if calls else None,
                avg_latency_ms=round(latency / calls) if calls else None,
                last_success_at=max((m.last_success_at for m in methods if m.last_success_at), default=None),
                last_failure_at=max((m.last_failure_at for m in methods if m.last_failure_at), default=None),
                actions=[reset] if resettable else [],
            )
        )
    return cards


def _percent(per_mille: int) -> str:
    return f"{per_mille // 10}.{per_mille % 10}"


# --- escrow deadlines and card holds --------------------------------------------------------------


@dataclass
class DeadlineRow:
    kind: str
    link: Link
    label: str
    amount: Money
    due_at: datetime
    due: str
    overdue: bool
    then: str  # what happens at the deadline


def deadlines(*, can: Can, now: datetime | None = None) -> list[DeadlineRow]:
    """Held deals near their deadline, uncaptured card authorizations near lapsing, purchases' card holds about to
    be released for want of delivery; soonest first."""
    now = now or timezone.now()
    rows: list[DeadlineRow] = []
    waiting = (EscrowDeal.Status.HELD, EscrowDeal.Status.AWAITING_APPROVAL)
    if can("escrow.view_escrowdeal"):
        near = EscrowDeal.objects.filter(status__in=waiting, deadline__lte=now + DEADLINE_WINDOW)
        for deal in near.order_by("deadline")[:ROWS]:
            then = f"{deal.get_timeout_policy_display()} by the timeout job, after a grace period"
            rows.append(_deadline("Deal deadline", deal, deal.deadline, then, now))
        holds = EscrowDeal.objects.filter(
            status__in=waiting, hold_mode=EscrowDeal.HoldMode.AUTHORIZATION, captured_at__isnull=True,
            authorized_at__lte=now - AUTHORIZATION_LAPSES_AFTER + DEADLINE_WINDOW,
        )  # fmt: skip
        for deal in holds.order_by("authorized_at")[:ROWS]:
            lapses = (deal.authorized_at or now) + AUTHORIZATION_LAPSES_AFTER
            rows.append(_deadline("Card authorization", deal, lapses, "Stripe voids the authorization", now))
    if can("escrow.view_purchase"):
        reserved = Purchase.objects.filter(status=Purchase.Status.RESERVED, deliver_by__lte=now + DELIVERY_WINDOW)
        for purchase in reserved.select_related("service").order_by("deliver_by")[:ROWS]:
            then = "the card hold is released unless the service is delivered"
            rows.append(_deadline(f"Card hold: {purchase.service.name}", purchase, purchase.deliver_by, then, now))
    return sorted(rows, key=lambda row: row.due_at)[: ROWS * 2]


def _deadline(kind: str, row: EscrowDeal | Purchase, due_at: datetime, then: str, now: datetime) -> DeadlineRow:
    name = "Deal" if isinstance(row, EscrowDeal) else "Purchase"
    return DeadlineRow(
        kind=kind,
        link=change_link(row._meta.label_lower, row.pk, f"{name} {row.pk}"),
        label=status_label(row),
        amount=Money(row.amount_minor, row.currency),
        due_at=due_at,
        due=when(due_at, now=now),
        overdue=due_at <= now,
        then=then,
    )


# --- reconciliation issues and alerts -------------------------------------------------------------


@dataclass
class IssueRow:
    issue: ReconciliationIssue
    provider: str
    difference: str
    link: Link


def open_issues() -> tuple[list[IssueRow], bool]:
    issues = ReconciliationIssue.objects.filter(status=ReconciliationIssue.Status.OPEN)
    found = list(issues.order_by("-date", "kind", "pk")[: ROWS + 1])
    rows = [
        IssueRow(
            issue=issue,
            provider=provider_name(issue.provider),
            difference=issue.money(issue.difference_minor),
            link=change_link("monitoring.reconciliationissue", issue.pk, issue.provider_reference or f"#{issue.pk}"),
        )
        for issue in found[:ROWS]
    ]
    return rows, len(found) > ROWS


@dataclass
class AlertRow:
    alert: Alert
    label: str
    link: Link
    actions: list[Action]


def recent_alerts(*, can: Can) -> tuple[list[AlertRow], bool]:
    """Open and acknowledged alerts, the most recently raised first."""
    found = list(Alert.objects.filter(status__in=ALERT_ACTIVE).order_by("-last_raised_at", "-pk")[: ROWS + 1])
    rows = [
        AlertRow(
            alert=alert,
            label=status_label(alert),
            link=change_link("core.alert", alert.pk, alert.title),
            actions=buttons(can, ("alert_acknowledge", alert.pk)) if alert.status == Alert.Status.OPEN else [],
        )
        for alert in found[:ROWS]
    ]
    return rows, len(found) > ROWS
