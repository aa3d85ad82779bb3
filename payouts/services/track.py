"""Track: items move forward and the ledger follows them; a sent batch is followed until every item is final.

Invariants kept:
- item statuses only move forward (PayoutItem.TRANSITIONS): an old or repeated status changes nothing, so
  webhooks and polling may arrive in any order and any number of times;
- the ledger moves with the item, in the same transaction (table below), and so does the batch's staff alert
  when the item ends unpaid or its money comes back (payouts.services.alerts);
- following is a read (PayPal batch and item GETs), never a money call: what was sent, and whether it took
  effect, is the money movement's (providers.protocol), so a `submitting` batch is never asked about here;
- a PayPal batch is followed while `submitted`, and after it `completed` while any item is PENDING, UNCLAIMED
  or ONHOLD, or was paid less than `follow_paid_for()` ago (settings.PAYOUT_FOLLOW_PAID_DAYS, default 30):
  PayPal returns unclaimed money (RETURNED) and may take a payment back (REFUNDED, REVERSED) after the batch
  itself has finished.

Ledger postings (the item's hold was made at prepare: winnings payable -> provider clearing):

| the item moves to                                   | posting                                         |
|-----------------------------------------------------|-------------------------------------------------|
| SUCCESS                                             | the hold posted (metadata: provider, reference) |
| FAILED, BLOCKED, DENIED, CANCELED, RETURNED unpaid  | the hold voided: the reservation is released    |
| RETURNED, REFUNDED, REVERSED after SUCCESS          | the hold's posting reversed: the money is back  |
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from core.errors import AppError
from core.permissions import require_permission
from ledger.models import Hold
from ledger.services import hold_post, hold_void
from ledger.services import transaction_reverse as ledger_reverse
from payouts.models import PayoutBatch, PayoutItem
from payouts.selectors import batch_movements
from payouts.services.alerts import item_alert
from payouts.services.prepare import batch_get
from providers.base import Succeeded
from providers.models import MoneyMovement
from providers.paypal.client import PayPalClient
from providers.protocol import movement_sync

log = structlog.get_logger(__name__)

PAGE_SIZE = 1000
# Items a batch is not complete without; and the statuses still followed after it completed.
WAITING = (PayoutItem.Status.NEW, PayoutItem.Status.PENDING, PayoutItem.Status.ONHOLD)
FOLLOWED = (PayoutItem.Status.PENDING, PayoutItem.Status.UNCLAIMED, PayoutItem.Status.ONHOLD)


def follow_paid_for() -> timedelta:
    """How long a paid PayPal item is still followed for a return or reversal."""
    return timedelta(days=int(getattr(settings, "PAYOUT_FOLLOW_PAID_DAYS", 30)))


# --- items and the ledger ---------------------------------------------------------------------


def item_apply_status(*, item_pk: int, status: str, provider_item_id: str = "", error: str = "") -> bool:
    """Move an item forward and keep the ledger in step; an old or repeated status changes nothing."""
    with transaction.atomic():
        item = PayoutItem.objects.select_for_update().get(pk=item_pk)
        if status == item.status or status not in PayoutItem.TRANSITIONS.get(item.status, set()):
            return False
        was_paid = item.status == PayoutItem.Status.SUCCESS
        item.status, item.error = status, error[:255]
        item.provider_item_id = provider_item_id or item.provider_item_id
        item.save(update_fields=["status", "error", "provider_item_id", "updated_at"])
        _ledger_follow(item, was_paid)
        item_alert(item)
    return True


def _ledger_follow(item: PayoutItem, was_paid: bool) -> None:
    if item.hold_id is None:
        return
    if item.status == PayoutItem.Status.SUCCESS:
        provider = {"provider": item.batch.provider, "provider_reference": item.provider_item_id}
        hold_post(hold_id=item.hold_id, metadata=provider)
    elif was_paid:  # returned, refunded or reversed after success: the money came back
        posted = Hold.objects.get(pk=item.hold_id).posted_transaction_id
        if posted is not None:
            ledger_reverse(transaction_id=posted, reason=f"{item.sender_item_id} {item.status}")
    elif item.status in PayoutItem.UNPAID_FINAL:
        hold_void(hold_id=item.hold_id)


# --- batches ----------------------------------------------------------------------------------


def batch_progress(*, batch_id: int) -> None:
    """Move a sent batch on once its items allow: `submitting` -> `submitted` when no Stripe transfer is still
    open (items leave NEW when theirs is resolved), `submitted` -> `completed` when no item waits."""
    with transaction.atomic():
        batch = PayoutBatch.objects.select_for_update().get(pk=batch_id)  # concurrent item hooks see each other
        items = PayoutItem.objects.filter(batch_id=batch.pk)
        if batch.status == PayoutBatch.Status.SUBMITTING and batch.provider == PayoutBatch.Provider.STRIPE:
            if items.filter(status=PayoutItem.Status.NEW).exists():
                return
            PayoutBatch.status_move(batch.pk, PayoutBatch.Status.SUBMITTED, sources=[PayoutBatch.Status.SUBMITTING])
            batch.status = PayoutBatch.Status.SUBMITTED
        if batch.status == PayoutBatch.Status.SUBMITTED and not items.filter(status__in=WAITING).exists():
            PayoutBatch.status_move(batch.pk, PayoutBatch.Status.COMPLETED, sources=[PayoutBatch.Status.SUBMITTED])


def batch_sync(*, batch_id: int) -> PayoutBatch:
    """Follow a sent PayPal batch's items (a read), then complete the batch if every item is final.

    A `submitting` batch is left alone: its money movement is followed by the protocol's sweeper."""
    batch = batch_get(batch_id)
    followable = (PayoutBatch.Status.SUBMITTED, PayoutBatch.Status.COMPLETED)
    if batch.provider == PayoutBatch.Provider.PAYPAL and batch.status in followable and batch.provider_batch_id:
        _follow_paypal(batch)
    if batch.status != PayoutBatch.Status.COMPLETED:
        batch_progress(batch_id=batch.pk)
    batch.refresh_from_db()
    return batch


def _follow_paypal(batch: PayoutBatch) -> None:
    """Page through the batch, or (a completed batch with a few items left to follow) ask item by item."""
    followed = _items_followed(batch)
    pages = math.ceil(batch.item_count / PAGE_SIZE)
    by_id = list(followed.exclude(provider_item_id="").values_list("pk", "provider_item_id"))
    if batch.status == PayoutBatch.Status.COMPLETED and len(by_id) == followed.count() and len(by_id) <= pages:
        _follow_items(by_id)
    else:
        _follow_pages(batch)


def _items_followed(batch: PayoutBatch) -> QuerySet[PayoutItem]:
    paid_since = timezone.now() - follow_paid_for()
    return batch.items.filter(Q(status__in=FOLLOWED) | Q(status=PayoutItem.Status.SUCCESS, updated_at__gte=paid_since))


def _follow_items(items: list[tuple[int, str]]) -> None:
    with PayPalClient() as paypal:
        for item_pk, provider_item_id in items:
            found = paypal.get_item(provider_item_id)
            if isinstance(found, Succeeded):
                item_apply_status(item_pk=item_pk, status=found.status, provider_item_id=provider_item_id)


def _follow_pages(batch: PayoutBatch) -> None:
    by_sender_item = dict(batch.items.values_list("sender_item_id", "pk"))
    with PayPalClient() as paypal:
        for page in range(1, math.ceil(batch.item_count / PAGE_SIZE) + 1):
            result = paypal.get_batch(batch.provider_batch_id, page=page, page_size=PAGE_SIZE)
            if not isinstance(result, Succeeded):
                return  # asked again on the next run
            entries: list[dict[str, Any]] = result.raw.get("items", [])
            for entry in entries:
                item_pk = by_sender_item.get(entry.get("payout_item", {}).get("sender_item_id", ""))
                if item_pk is not None:
                    item_apply_status(
                        item_pk=item_pk, status=entry["transaction_status"], provider_item_id=entry["payout_item_id"]
                    )
            if len(entries) < PAGE_SIZE:
                return


def batches_followed(*, now: Any = None) -> QuerySet[PayoutBatch]:
    """PayPal batches whose items may still change: submitted, or completed with items not final yet."""
    paid_since = (now or timezone.now()) - follow_paid_for()
    open_items = PayoutItem.objects.filter(batch=OuterRef("pk"), status__in=FOLLOWED)
    recently_paid = PayoutItem.objects.filter(
        batch=OuterRef("pk"), status=PayoutItem.Status.SUCCESS, updated_at__gte=paid_since
    )
    completed = Q(status=PayoutBatch.Status.COMPLETED) & (Q(Exists(open_items)) | Q(Exists(recently_paid)))
    return PayoutBatch.objects.filter(
        Q(status=PayoutBatch.Status.SUBMITTED) | completed, provider=PayoutBatch.Provider.PAYPAL
    ).order_by("pk")


def batches_sync_due(*, limit: int = 500) -> int:
    """Beat job: follow the items of every batch still being paid (reads only; money moves are the protocol's)."""
    synced = 0
    for batch_id in batches_followed().values_list("pk", flat=True)[:limit]:
        try:
            batch_sync(batch_id=batch_id)
            synced += 1
        except AppError as error:
            log.error("payouts.sync_failed", batch_id=batch_id, error=error.message)
    return synced


def batch_movements_sync(*, batch_id: int, actor: AbstractBaseUser) -> PayoutBatch:
    """Staff ("Sync now"): look up the batch's open money movements at once, then follow its items."""
    require_permission(actor, "payouts.execute_payoutbatch")
    batch = batch_get(batch_id)
    for movement_id in batch_movements(batch).filter(status__in=MoneyMovement.OPEN).values_list("pk", flat=True):
        movement_sync(movement_id=movement_id, force=True)
    return batch_sync(batch_id=batch.pk)
