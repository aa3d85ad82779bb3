"""A small hand-made history for the analytics tests: rows written straight to the tables (no provider calls),
each with the creation time and the time of its last status change it would have had.

Day D is yesterday (UTC), so the rollup's recent window (today and yesterday) and the selectors' windows see it;
one payment is created the day before (D-1, outside the recent window) and one today (D+1). The figures the
tests expect are worked out by hand in test_rollup.py next to each group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Model
from django.utils import timezone

from escrow.models import EscrowDeal, Purchase, PurchaseRefund
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, RecipientType, WinnerSelection
from providers.models import Payment, PaymentAttempt, Refund
from tests.escrow.factories_deals import seller
from tests.escrow.factories_purchases import service_create

User = get_user_model()


def _user() -> Any:
    return User.objects.create_user(f"seed-{uuid.uuid4().hex[:10]}")


def _stamp(row: Model, created_at: datetime, seconds_to_change: int = 0, **extra: Any) -> Model:
    """Give a row its creation time and the time of its last change (update() leaves auto_now alone)."""
    row._meta.model.objects.filter(pk=row.pk).update(
        created_at=created_at, updated_at=created_at + timedelta(seconds=seconds_to_change), **extra
    )
    row.refresh_from_db()
    return row


@dataclass
class History:
    day: date  # D
    at: datetime  # D 10:00 UTC
    buyer: Any
    payments: dict[str, Payment] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    items: dict[str, PayoutItem] = field(default_factory=dict)
    batches: dict[str, PayoutBatch] = field(default_factory=dict)
    deals: dict[str, EscrowDeal] = field(default_factory=dict)
    purchases: dict[str, Purchase] = field(default_factory=dict)
    purchase_refunds: dict[str, PurchaseRefund] = field(default_factory=dict)


def history_seed() -> History:
    day = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    history = History(day=day, at=datetime.combine(day, time(10), tzinfo=UTC), buyer=_user())
    _payments(history)
    _payouts(history)
    _escrow(history)
    _purchases(history)
    return history


def _payment(history: History, name: str, provider: str, currency: str, amount: int, status: str, seconds: int,
             *, reason: str = "", refunded: int = 0, day_offset: int = 0) -> Payment:  # fmt: skip
    payment = Payment.objects.create(
        reference=f"pay_{name}_{uuid.uuid4().hex[:8]}",
        user=history.buyer,
        client_key=f"{name}-{uuid.uuid4().hex}",
        amount_minor=amount,
        currency=currency,
        status=status,
        provider=provider,
        method="card",
        failure_reason=reason,
        refunded_minor=refunded,
    )
    history.payments[name] = _stamp(payment, history.at + timedelta(days=day_offset), seconds)
    return payment


def _attempt(history: History, payment: str, provider: str, status: str, reason: str = "") -> None:
    attempt = PaymentAttempt.objects.create(
        payment=history.payments[payment],
        provider=provider,
        method="card",
        idempotency_key=f"attempt-{uuid.uuid4().hex}",
        status=status,
        reason=reason,
    )
    _stamp(attempt, history.at)


def _refund(history: History, name: str, payment: str, amount: int, status: str, seconds: int, reason: str = ""):
    refund = Refund.objects.create(
        payment=history.payments[payment],
        client_key=name,
        amount_minor=amount,
        status=status,
        idempotency_key=f"refund-{uuid.uuid4().hex}",
        failure_reason=reason,
    )
    history.refunds[name] = _stamp(refund, history.at, seconds)


def _payments(history: History) -> None:
    _payment(history, "p1", "stripe", "USD", 10_000, "succeeded", 30)
    _payment(history, "p2", "stripe", "USD", 5_000, "succeeded", 500, refunded=2_000)  # refunded: not timed
    _payment(history, "p3", "stripe", "USD", 2_500, "failed", 10, reason="card_declined")
    _payment(history, "p4", "stripe", "PHP", 100_000, "succeeded", 60, refunded=25_000)  # refund in flight
    _payment(history, "p5", "maya", "PHP", 50_000, "failed", 20, reason="card_declined")
    _payment(history, "p6", "maya", "PHP", 70_000, "pending", 0)
    _payment(history, "p7", "gcash", "PHP", 30_000, "succeeded", 90)
    _payment(history, "p8", "gcash", "PHP", 40_000, "failed", 100)  # no reason: counted under "failed"
    _payment(history, "p9", "stripe", "USD", 1_000, "succeeded", 5, day_offset=1)  # today
    _payment(history, "p10", "stripe", "USD", 7_000, "failed", 8, reason="card_declined", day_offset=-1)
    _attempt(history, "p1", "stripe", "succeeded")
    _attempt(history, "p7", "maya", "declined", "provider_down")  # the fallback: maya first, then gcash
    _attempt(history, "p7", "gcash", "succeeded")
    _attempt(history, "p5", "maya", "declined", "card_declined")
    _refund(history, "r1", "p2", 2_000, "succeeded", 40)
    _refund(history, "r2", "p1", 10_000, "failed", 15, reason="charge_already_refunded")
    _refund(history, "r3", "p4", 25_000, "pending", 0)


def _payouts(history: History) -> None:
    cycle = PayoutCycle.objects.create(name="seed cycle")
    for name, provider, currency, total, status, seconds in (
        ("paypal", "paypal", "USD", 6_500, "submitted", 0),
        ("stripe", "stripe", "JPY", 4_000, "completed", 300),
    ):
        batch = PayoutBatch.objects.create(
            cycle=cycle,
            provider=provider,
            sender_batch_id=f"seed-{name}-{uuid.uuid4().hex[:8]}",
            checksum="0" * 64,
            status=status,
            currency=currency,
            total_minor=total,
            item_count=1,
            prepared_by=history.buyer,
        )
        history.batches[name] = _stamp(batch, history.at, seconds)
    for name, batch, currency, amount, status, seconds, error in (
        ("i1", "paypal", "USD", 1_000, "SUCCESS", 3600, ""),
        ("i2", "paypal", "USD", 2_000, "UNCLAIMED", 0, ""),
        ("i3", "paypal", "USD", 3_000, "RETURNED", 7200, "RECEIVER_UNREGISTERED"),
        ("i4", "paypal", "USD", 500, "FAILED", 60, ""),
        ("i5", "stripe", "JPY", 4_000, "SUCCESS", 120, ""),
    ):
        winner = _user()
        selection = WinnerSelection.objects.create(
            cycle=cycle,
            user=winner,
            amount_minor=amount,
            currency=currency,
            recipient_type=RecipientType.EMAIL,
            recipient=f"{winner.username}@example.com",
        )
        item = PayoutItem.objects.create(
            batch=history.batches[batch],
            selection=selection,
            sender_item_id=f"{name}-{selection.pk}",
            amount_minor=amount,
            currency=currency,
            recipient_type=RecipientType.EMAIL,
            receiver=selection.recipient,
            status=status,
            error=error,
        )
        history.items[name] = _stamp(item, history.at, seconds)


def _escrow(history: History) -> None:
    account = seller()
    for name, currency, amount, status, seconds, extra in (
        ("d1", "USD", 20_000, "transferred", 5000, {"transferred_at": history.at + timedelta(seconds=1000)}),
        ("d2", "USD", 8_000, "failed", 5, {"failure_reason": "card_declined"}),
        ("d3", "USD", 6_000, "held", 0, {}),
        ("d4", "PHP", 300_000, "refunded", 2000, {"refunded_at": history.at + timedelta(seconds=2000)}),
    ):
        deal = EscrowDeal.objects.create(
            buyer=history.buyer,
            seller_account=account,
            amount_minor=amount,
            currency=currency,
            commission_bps=800,
            commission_minor=amount * 8 // 100,
            deadline=history.at + timedelta(days=3),
            timeout_policy=EscrowDeal.TimeoutPolicy.REFUND,
            hold_mode=EscrowDeal.HoldMode.AUTHORIZATION,
            status=status,
            client_key=f"{name}-{uuid.uuid4().hex}",
            payment_method="pm_card_visa",
        )
        history.deals[name] = _stamp(deal, history.at, seconds, **extra)


def _purchases(history: History) -> None:
    service = service_create(code=f"seed-{uuid.uuid4().hex[:6]}")
    for name, currency, status, seconds, extra in (
        ("pu1", "USD", "captured", 600, {"captured_minor": 10_000}),
        (
            "pu2",
            "USD",
            "refunded",
            700,
            {"captured_minor": 10_000, "refund_reserved_minor": 10_000, "refunded_minor": 10_000},
        ),
        ("pu3", "PHP", "voided", 900, {"outcome": "timed_out"}),
        ("pu4", "USD", "declined", 2, {"failure_reason": "card_declined"}),
    ):
        purchase = Purchase.objects.create(
            buyer=history.buyer,
            service=service,
            client_key=f"{name}-{uuid.uuid4().hex}",
            request_hash="0" * 64,
            amount_minor=25_000 if currency == "PHP" else 10_000,
            currency=currency,
            status=status,
            provider="stripe",
            payment_method="pm_card_visa",
            deliver_by=history.at + timedelta(minutes=15),
        )
        history.purchases[name] = _stamp(purchase, history.at, seconds, **extra)
    refund = PurchaseRefund.objects.create(
        purchase=history.purchases["pu2"], client_key="pr1", amount_minor=10_000, status="succeeded"
    )
    history.purchase_refunds["pr1"] = _stamp(refund, history.at, 30)
