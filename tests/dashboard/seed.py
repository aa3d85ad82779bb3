"""Rows written straight to the tables for the dashboard's read tests (no provider calls, no ledger)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from core.models import Alert, ProcessingLock
from escrow.models import EscrowDeal, Purchase
from monitoring.models import ReconciliationIssue, ReconciliationRun
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from providers.models import MoneyMovement
from tests.escrow.factories_deals import seller
from tests.escrow.factories_purchases import service_create


def _user(prefix: str = "seed") -> User:
    return User.objects.create_user(f"{prefix}-{uuid.uuid4().hex[:10]}")


def batch_with_items(
    *statuses: str, provider: str = "paypal", status: str = "submitted", currency: str = "USD", errors: Any = None
) -> PayoutBatch:
    """A batch with one item per status, of 100.00, 200.00, ... in `currency`."""
    cycle = PayoutCycle.objects.create(name=f"cycle {uuid.uuid4().hex[:6]}")
    amounts = [10_000 * (n + 1) for n in range(len(statuses))]
    batch = PayoutBatch.objects.create(
        cycle=cycle, provider=provider, sender_batch_id=f"batch-{uuid.uuid4().hex[:10]}", checksum="0" * 64,
        status=status, currency=currency, total_minor=sum(amounts), item_count=len(statuses), prepared_by=_user(),
    )  # fmt: skip
    for n, (item_status, amount) in enumerate(zip(statuses, amounts, strict=True)):
        item_add(batch, item_status, amount, error=(errors or {}).get(n, ""), receiver=f"winner{n}@example.com")
    return batch


def item_add(batch: PayoutBatch, status: str, amount: int, *, error: str = "", receiver: str = "", selection=None):
    if selection is None:
        selection = WinnerSelection.objects.create(
            cycle=batch.cycle, user=_user("winner"), amount_minor=amount, currency=batch.currency,
            recipient_type="EMAIL", recipient=receiver or f"{uuid.uuid4().hex[:8]}@example.com",
        )  # fmt: skip
    return PayoutItem.objects.create(
        batch=batch, selection=selection, sender_item_id=f"item-{uuid.uuid4().hex[:10]}", amount_minor=amount,
        currency=batch.currency, recipient_type="EMAIL", receiver=selection.recipient, status=status, error=error,
    )  # fmt: skip


def age(row: Any, *, by: timedelta) -> Any:
    """Make a row look last changed `by` ago (update() leaves auto_now alone)."""
    type(row).objects.filter(pk=row.pk).update(updated_at=timezone.now() - by, created_at=timezone.now() - by)
    row.refresh_from_db()
    return row


def movement(operation: str, subject_id: int, status: str, **fields: Any) -> MoneyMovement:
    fields.setdefault("provider", "paypal" if operation.startswith("payout.") else "stripe")
    return MoneyMovement.objects.create(
        key=f"{operation}:{subject_id}:{uuid.uuid4().hex[:6]}", operation=operation, subject_id=subject_id,
        status=status, amount_minor=fields.pop("amount_minor", 5_000), currency=fields.pop("currency", "USD"), **fields,
    )  # fmt: skip


def deal(status: str = "held", *, deadline_in: timedelta = timedelta(days=3), **fields: Any) -> EscrowDeal:
    amount = fields.pop("amount_minor", 10_000)
    return EscrowDeal.objects.create(
        buyer=_user("buyer"), seller_account=seller(), amount_minor=amount, currency="USD", commission_bps=800,
        commission_minor=amount * 8 // 100, deadline=timezone.now() + deadline_in,
        timeout_policy=EscrowDeal.TimeoutPolicy.REFUND, hold_mode=fields.pop("hold_mode", "captured"), status=status,
        client_key=uuid.uuid4().hex, payment_method="pm_card_visa", **fields,
    )  # fmt: skip


def purchase(status: str = "reserved", *, deliver_in: timedelta = timedelta(minutes=10)) -> Purchase:
    return Purchase.objects.create(
        buyer=_user("buyer"), service=service_create(code=f"svc-{uuid.uuid4().hex[:6]}"), client_key=uuid.uuid4().hex,
        request_hash="0" * 64, amount_minor=10_000, currency="USD", status=status, payment_method="pm_card_visa",
        deliver_by=timezone.now() + deliver_in,
    )  # fmt: skip


def lock(key: str, *, expires_in: timedelta) -> ProcessingLock:
    now = timezone.now()
    return ProcessingLock.objects.create(
        key=key, holder="payouts.execute", reason="sending a batch", acquired_at=now - timedelta(minutes=20),
        expires_at=now + expires_in,
    )  # fmt: skip


def alert(key: str, status: str = "open", *, raised_at: datetime | None = None, **fields: Any) -> Alert:
    return Alert.objects.create(
        key=key, status=status, title=fields.pop("title", f"Alert {key}"), last_raised_at=raised_at or timezone.now(),
        action_required=fields.pop("action_required", "Look at it."), **fields,
    )  # fmt: skip


def issue(reference: str, status: str = "open", **fields: Any) -> ReconciliationIssue:
    today = timezone.now().date()
    run = ReconciliationRun.objects.create(date=today, provider="stripe", trigger="schedule", started_at=timezone.now())
    return ReconciliationIssue.objects.create(
        run=run, last_seen_run=run, date=today, kind=fields.pop("kind", "amount_mismatch"), provider="stripe",
        provider_reference=reference, currency="USD", status=status, resolved_at=timezone.now() if status == "resolved"
        else None, **fields,
    )  # fmt: skip
