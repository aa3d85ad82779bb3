"""PayPal Payouts webhooks: move items forward, and tell the protocol what PayPal has.

Order-safe: an old or repeated item status changes nothing (payouts.services.items_apply_statuses). A burst of
item events is applied as pages of item updates in one transaction. Any verified
event naming our sender_batch_id proves PayPal has the batch, so an open batch-create movement is resolved as
succeeded (`movement_resolve`) before the item moves; a cancelled item resolves an open unclaimed cancel. A batch
that finished is followed by a nudge after commit (the item sync reads PayPal, outside this transaction).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from core.errors import NotFound
from payouts.models import OPERATION_CANCEL_UNCLAIMED, OPERATION_PAYPAL_BATCH, PayoutBatch, PayoutItem
from payouts.services import ItemUpdate, items_apply_statuses
from providers.base import Succeeded
from providers.models import MoneyMovement, WebhookEvent
from providers.protocol import movement_latest, movement_resolve
from providers.webhooks import register_handler, register_page_handler

ITEM_EVENTS = ("SUCCEEDED", "UNCLAIMED", "FAILED", "RETURNED", "BLOCKED", "CANCELED", "HELD", "REFUNDED", "REVERSED")
BATCH_EVENTS = ("PROCESSING", "SUCCESS", "DENIED")


def _resolve_open(operation: str, subject_id: int, result: Succeeded) -> None:
    movement = movement_latest(operation=operation, subject_id=subject_id)
    if movement is not None and movement.status in MoneyMovement.OPEN:
        movement_resolve(movement=movement, result=result)


def payout_items_changed(events: list[tuple[WebhookEvent, dict[str, Any]]]) -> None:
    """Item events (one, or a burst) applied as pages of item updates: one item at most once a page, in the order
    the events came, so a burst ends as the same events one by one would."""
    resources = [body["resource"] for _, body in events]
    items = _items_named(resources)
    # Any item event naming PayPal's batch id proves PayPal has the batch: its create succeeded (items NEW -> PENDING).
    created = {(items[_item_key(r)].batch_id, r["payout_batch_id"]) for r in resources if r.get("payout_batch_id")}
    for batch_id, payout_batch_id in sorted(created):
        _resolve_open(OPERATION_PAYPAL_BATCH, batch_id, Succeeded(reference=payout_batch_id))
    updates = [ItemUpdate(items[_item_key(r)].pk, r["transaction_status"], r["payout_item_id"]) for r in resources]
    for page in _once_per_item(updates):
        items_apply_statuses(updates=page)
    for update in updates:
        if update.status == PayoutItem.Status.RETURNED:  # cancelled (by us or otherwise): an open cancel is done
            _resolve_open(
                OPERATION_CANCEL_UNCLAIMED,
                update.item_pk,
                Succeeded(reference=update.provider_item_id, status=update.status),
            )


def _item_key(resource: dict[str, Any]) -> tuple[str, str]:
    return resource.get("sender_batch_id", ""), resource["payout_item"]["sender_item_id"]


def _items_named(resources: list[dict[str, Any]]) -> dict[tuple[str, str], PayoutItem]:
    """The items the events name, by (sender batch id, sender item id); one not recorded yet fails the events (the
    sweeper tries them again later)."""
    keys = {_item_key(resource) for resource in resources}
    found = PayoutItem.objects.filter(
        batch__sender_batch_id__in={batch for batch, _ in keys}, sender_item_id__in={item for _, item in keys}
    ).select_related("batch")
    items = {(item.batch.sender_batch_id, item.sender_item_id): item for item in found}
    missing = sorted(keys - items.keys())
    if missing:
        raise NotFound(f"no payout item {missing[0][1]} in {missing[0][0]}", details={"missing": missing[:10]})
    return items


def _once_per_item(updates: list[ItemUpdate]) -> list[list[ItemUpdate]]:
    """Pages in which each item appears once: an item's n-th update goes to the n-th page."""
    pages: list[list[ItemUpdate]] = []
    seen: dict[int, int] = {}
    for update in updates:
        nth = seen.get(update.item_pk, 0)
        seen[update.item_pk] = nth + 1
        if nth == len(pages):
            pages.append([])
        pages[nth].append(update)
    return pages


def payout_batch_changed(event: WebhookEvent, body: dict[str, Any]) -> None:
    header = body["resource"]["batch_header"]
    batch = PayoutBatch.objects.filter(sender_batch_id=header["sender_batch_header"]["sender_batch_id"]).first()
    if batch is None:
        raise NotFound(f"no payout batch {header['sender_batch_header']['sender_batch_id']}")
    _resolve_open(
        OPERATION_PAYPAL_BATCH, batch.pk, Succeeded(reference=header["payout_batch_id"], status=header["batch_status"])
    )
    if header["batch_status"] in ("SUCCESS", "DENIED"):
        from payouts.tasks import sync_batch_items_task

        transaction.on_commit(lambda: sync_batch_items_task.delay(batch.pk))


def register_payout_handlers() -> None:
    for name in ITEM_EVENTS:
        register_page_handler("paypal", f"PAYMENT.PAYOUTS-ITEM.{name}", payout_items_changed)
    for name in BATCH_EVENTS:
        register_handler("paypal", f"PAYMENT.PAYOUTSBATCH.{name}", payout_batch_changed)
