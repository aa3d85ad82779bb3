"""Track: a sent batch is followed until every item is final; its items move forward through settle.py.

Invariants kept:
- item statuses only move forward, and the ledger moves with them (payouts.services.settle, which holds the
  table of postings): each page of the batch that PayPal returns is applied as one page of item updates,
  in one transaction;
- following is a read (PayPal batch and item GETs), never a money call: what was sent, and whether it took
  effect, is the money movement's (providers.protocol), so a `submitting` batch is never asked about here;
- a PayPal batch is followed while `submitted`, and after it `completed` while any item is PENDING, UNCLAIMED
  or ONHOLD, or was paid less than `follow_paid_for()` ago (settings.PAYOUT_FOLLOW_PAID_DAYS, default 30):
  PayPal returns unclaimed money (RETURNED) and may take a payment back (REFUNDED, REVERSED) after the batch
  itself has finished.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from payouts.models import PayoutBatch, PayoutItem
from payouts.selectors import batch_movements
from payouts.services.prepare import batch_get
from payouts.services.settle import ItemUpdate, items_apply_statuses, pages_apply
from providers.base import ProviderResult, Succeeded
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
    updates = []
    with PayPalClient() as paypal:
        for item_pk, provider_item_id in items:
            found = paypal.get_item(provider_item_id)
            if isinstance(found, Succeeded):
                updates.append(ItemUpdate(item_pk, found.status, provider_item_id))
    items_apply_statuses(updates=updates)


def _follow_pages(batch: PayoutBatch) -> None:
    """Each page PayPal returns is one page of item updates (one transaction); a page that did not come back
    is asked again on the next run."""
    by_sender_item = dict(batch.items.values_list("sender_item_id", "pk"))
    pages_apply(_page_updates(entries, by_sender_item) for entries in _batch_entries(batch))


def _batch_entries(batch: PayoutBatch) -> Iterator[list[dict[str, Any]]]:
    """The items of each page PayPal returns, until a page is short or does not come back."""
    for result in _batch_pages(batch):
        if not isinstance(result, Succeeded):
            return
        entries: list[dict[str, Any]] = result.raw.get("items", [])
        yield entries
        if len(entries) < PAGE_SIZE:
            return


def _batch_pages(batch: PayoutBatch) -> Iterator[ProviderResult]:
    """PayPal's pages of the batch in order, each asked for (a read) while the one before is being applied."""
    pages = math.ceil(batch.item_count / PAGE_SIZE)
    with PayPalClient() as paypal, ThreadPoolExecutor(max_workers=1, thread_name_prefix="paypal-pages") as ahead:
        asked = ahead.submit(paypal.get_batch, batch.provider_batch_id, page=1, page_size=PAGE_SIZE)
        for page in range(1, pages + 1):
            result = asked.result()
            if page < pages:
                asked = ahead.submit(paypal.get_batch, batch.provider_batch_id, page=page + 1, page_size=PAGE_SIZE)
            yield result


def _page_updates(entries: list[dict[str, Any]], by_sender_item: dict[str, int]) -> list[ItemUpdate]:
    """The updates of a page of PayPal's batch items that are ours."""
    updates = []
    for entry in entries:
        item_pk = by_sender_item.get(entry.get("payout_item", {}).get("sender_item_id", ""))
        if item_pk is not None:
            updates.append(ItemUpdate(item_pk, entry["transaction_status"], entry["payout_item_id"]))
    return updates


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
