"""Reconciliation sources: the provider's report of a day, and our own records that say money moved.

Both sides are keyed by provider reference (the id of the provider object that moved the money: `pi_` for a
capture, `re_` refund, `tr_` transfer, `trr_` transfer reversal) and currency:
- **provider**: the provider's report of the day (Stripe balance transactions with `created` on the day), its
  `net` (amount less the provider's fee): the clearing account mirrors the provider balance, so a fee booked
  differently from the one charged is an amount mismatch. `PROVIDER_SOURCES[provider]` yields it page by page;
- **our records**: the rows that say money moved (`RECORD_SOURCES`), their gross amount signed as the
  provider's (captures positive, refunds and transfers negative) and whether their status says it moved.

The ledger side is read by the comparison itself (see `monitoring.reconciliation.matching`).

Record sources today: customer payments and refunds, payout transfers, escrow deals (capture, refund,
transfer, transfer reversals) and purchases (capture, refunds).
Adding a source of records: write a function
`(provider, start, end) -> Iterable[Record]` yielding the records whose time is in [start, end) and append it
to `RECORD_SOURCES[provider]` in this module (monitoring may read every app; no app imports monitoring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from escrow.models import EscrowDeal, EscrowTransferReversal, Purchase, PurchaseRefund
from payouts.models import PayoutItem
from providers.models import Payment, Refund
from providers.stripe.client import BalanceMovement, StripeProviderClient


@dataclass(frozen=True)
class Record:
    """One of our rows that says money moved (or was meant to)."""

    source: str
    reference: str
    amount_minor: int  # signed as the provider reports it: money in > 0, out < 0
    currency: str
    status: str
    settled: bool  # the status says the money moved
    at: datetime


ProviderPages = Iterable[Iterable[BalanceMovement]]
ProviderSource = Callable[[datetime, datetime], ProviderPages]
RecordSource = Callable[[str, datetime, datetime], Iterable[Record]]


def stripe_pages(start: datetime, end: datetime) -> Iterator[list[BalanceMovement]]:
    with StripeProviderClient() as client:
        yield from client.balance_transaction_pages(created_gte=int(start.timestamp()), created_lt=int(end.timestamp()))


def payment_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        Payment.objects.filter(provider=provider, updated_at__gte=start, updated_at__lt=end)
        .exclude(provider_reference="")
        .values_list("provider_reference", "amount_minor", "currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("payment", reference, amount, currency, status, status == Payment.Status.SUCCEEDED, at)


def refund_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        Refund.objects.filter(payment__provider=provider, updated_at__gte=start, updated_at__lt=end)
        .exclude(provider_reference="")
        .values_list("provider_reference", "amount_minor", "payment__currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("refund", reference, -amount, currency, status, status == Refund.Status.SUCCEEDED, at)


PAID_ITEM_STATUSES = frozenset({PayoutItem.Status.SUCCESS, *PayoutItem.TAKEN_BACK})


def payout_transfer_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = PayoutItem.objects.filter(
        batch__provider=provider, provider_item_id__startswith="tr_", updated_at__gte=start, updated_at__lt=end
    ).values_list("provider_item_id", "amount_minor", "currency", "status", "updated_at")
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("payout_item", reference, -amount, currency, status, status in PAID_ITEM_STATUSES, at)


def escrow_deal_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    """An escrow deal's capture, refund and transfer, each at the moment it was recorded."""
    if provider != "stripe":
        return
    deals = EscrowDeal.objects.all()
    captured = deals.filter(captured_at__gte=start, captured_at__lt=end).exclude(payment_intent_id="")
    for deal in captured.only("payment_intent_id", "amount_minor", "currency", "status", "captured_at").iterator(
        chunk_size=2_000
    ):
        yield Record("escrow_capture", deal.payment_intent_id, deal.amount_minor, deal.currency, deal.status, True,
                     deal.captured_at)  # fmt: skip
    refunded = deals.filter(refunded_at__gte=start, refunded_at__lt=end).exclude(refund_id="")
    for deal in refunded.only("refund_id", "amount_minor", "currency", "status", "refunded_at").iterator(
        chunk_size=2_000
    ):
        yield Record("escrow_refund", deal.refund_id, -deal.amount_minor, deal.currency, deal.status, True,
                     deal.refunded_at)  # fmt: skip
    transferred = deals.filter(transferred_at__gte=start, transferred_at__lt=end).exclude(transfer_id="")
    for deal in transferred.iterator(chunk_size=2_000):
        yield Record("escrow_transfer", deal.transfer_id, -deal.seller_net_minor, deal.currency, deal.status,
                     deal.status in ESCROW_TRANSFERRED, deal.transferred_at)  # fmt: skip
    reversals = EscrowTransferReversal.objects.filter(created_at__gte=start, created_at__lt=end).select_related("deal")
    for reversal in reversals.iterator(chunk_size=2_000):
        yield Record("escrow_transfer_reversal", reversal.reversal_id, reversal.amount_minor, reversal.deal.currency,
                     "reversed", True, reversal.created_at)  # fmt: skip


ESCROW_TRANSFERRED = frozenset({EscrowDeal.Status.TRANSFERRED, EscrowDeal.Status.REVERSED})
PURCHASE_CAPTURED = frozenset({Purchase.Status.CAPTURED, Purchase.Status.REFUNDED})


def purchase_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        Purchase.objects.filter(provider=provider, captured_minor__gt=0, updated_at__gte=start, updated_at__lt=end)
        .exclude(payment_intent_id="")
        .values_list("payment_intent_id", "captured_minor", "currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("purchase", reference, amount, currency, status, status in PURCHASE_CAPTURED, at)


def purchase_refund_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        PurchaseRefund.objects.filter(purchase__provider=provider, updated_at__gte=start, updated_at__lt=end)
        .exclude(provider_reference="")
        .values_list("provider_reference", "amount_minor", "purchase__currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        settled = status == PurchaseRefund.Status.SUCCEEDED
        yield Record("purchase_refund", reference, -amount, currency, status, settled, at)


PROVIDER_SOURCES: dict[str, ProviderSource] = {"stripe": stripe_pages}
RECORD_SOURCES: dict[str, list[RecordSource]] = {
    "stripe": [
        payment_records,
        refund_records,
        payout_transfer_records,
        escrow_deal_records,
        purchase_records,
        purchase_refund_records,
    ],
}


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)
