"""Reads of payouts for the admin, the API and the dashboard."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, OuterRef, QuerySet, Subquery, Sum

from core.money import Money
from ledger.models import Account, Entry
from ledger.selectors import account_balance
from payouts.models import (
    OPERATION_CANCEL_UNCLAIMED,
    OPERATION_PAYPAL_BATCH,
    OPERATION_STRIPE_TRANSFER,
    PayoutBatch,
    PayoutItem,
    WinnerSelection,
)
from providers.accounts import account_code
from providers.models import MoneyMovement

# The most telling status first: a batch with one transfer unknown and the rest succeeded shows "unknown".
MOVEMENT_STATUS_ORDER = (
    MoneyMovement.Status.UNKNOWN,
    MoneyMovement.Status.WAITING,
    MoneyMovement.Status.PENDING,
    MoneyMovement.Status.DECLINED,
    MoneyMovement.Status.SUCCEEDED,
)


@dataclass(frozen=True)
class StatusProgress:
    """How many of a batch's items are in one status, and their amount in the batch currency."""

    status: str
    count: int
    amount_minor: int


def progress_by_batch(batch_ids: Iterable[int]) -> dict[int, list[StatusProgress]]:
    """Counts and amounts by item status for each batch, in the order of PayoutItem.Status; one query."""
    rows = (
        PayoutItem.objects.filter(batch_id__in=list(batch_ids))
        .order_by()
        .values("batch_id", "status")
        .annotate(count=Count("id"), amount_minor=Sum("amount_minor"))
    )
    order = {status: n for n, status in enumerate(PayoutItem.Status.values)}
    progress: dict[int, list[StatusProgress]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: (row["batch_id"], order[row["status"]])):
        progress[row["batch_id"]].append(StatusProgress(row["status"], row["count"], row["amount_minor"]))
    return dict(progress)


def batch_movements(batch: PayoutBatch) -> QuerySet[MoneyMovement]:
    """Every money movement of a batch: its PayPal create, its items' Stripe transfers and unclaimed cancels."""
    items = PayoutItem.objects.filter(batch_id=batch.pk).values("pk")
    own = MoneyMovement.objects.filter(operation=OPERATION_PAYPAL_BATCH, subject_id=batch.pk)
    per_item = MoneyMovement.objects.filter(
        operation__in=(OPERATION_STRIPE_TRANSFER, OPERATION_CANCEL_UNCLAIMED), subject_id__in=items
    )
    return (own | per_item).order_by("pk")


def movement_status_by_batch(batch_ids: Iterable[int]) -> dict[int, str]:
    """What the provider did with each batch's send, as the protocol knows it: the status of its PayPal create,
    or the most telling status of its items' Stripe transfers; a batch not sent yet has none. Two queries."""
    ids = list(batch_ids)
    found: dict[int, set[str]] = defaultdict(set)
    batch_rows = MoneyMovement.objects.filter(operation=OPERATION_PAYPAL_BATCH, subject_id__in=ids)
    for subject_id, status in batch_rows.values_list("subject_id", "status"):
        found[subject_id].add(status)
    item_batch = PayoutItem.objects.filter(pk=OuterRef("subject_id")).values("batch_id")[:1]
    transfers = (
        MoneyMovement.objects.filter(
            operation=OPERATION_STRIPE_TRANSFER,
            subject_id__in=PayoutItem.objects.filter(batch_id__in=ids).values("pk"),
        )
        .annotate(batch_id=Subquery(item_batch))
        .order_by()
        .values_list("batch_id", "status")
        .distinct()
    )
    for batch_id, status in transfers:
        found[batch_id].add(status)
    return {
        batch_id: next(status for status in MOVEMENT_STATUS_ORDER if status in statuses)
        for batch_id, statuses in found.items()
    }


@dataclass(frozen=True)
class CyclePool:
    """A cycle's winners in one currency, and what the prize pool (winnings payable, shared by every cycle) still
    has available to reserve for batches."""

    currency: str
    winners: int
    owed: Money
    available: Money


def pool_available(currency: str) -> Money:
    account = Account.objects.filter(code=account_code("winnings_payable", currency)).first()
    return account_balance(account).available if account is not None else Money.zero(currency)


def cycle_pools(cycle_id: int) -> list[CyclePool]:
    """Per currency of the cycle's winners: how many, their total, and the pool available now."""
    totals = (
        WinnerSelection.objects.filter(cycle_id=cycle_id)
        .order_by()
        .values_list("currency")
        .annotate(n=Count("id"), total=Sum("amount_minor"))
    )
    return [
        CyclePool(currency, n, Money(total, currency), pool_available(currency))
        for currency, n, total in sorted(totals)
    ]


def funded_by_currency(ledger_key_prefix: str) -> dict[str, Money]:
    """What the postings whose ledger key starts with `ledger_key_prefix` moved, per currency (their debits)."""
    rows = (
        Entry.objects.filter(transaction__idempotency_key__startswith=ledger_key_prefix, amount_minor__gt=0)
        .order_by()
        .values_list("currency")
        .annotate(total=Sum("amount_minor"))
    )
    return {currency: Money(total, currency) for currency, total in sorted(rows)}
