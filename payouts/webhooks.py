"""PayPal Payouts webhooks: move items forward, and tell the protocol what PayPal has.

Order-safe: an old or repeated item status changes nothing (payouts.services.item_apply_status). Any verified
event naming our sender_batch_id proves PayPal has the batch, so an open batch-create movement is resolved as
succeeded (`movement_resolve`) before the item moves; a cancelled item resolves an open unclaimed cancel. A batch
that finished is followed by a nudge after commit (the item sync reads PayPal, outside this transaction).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from core.errors import NotFound
from payouts.models import OPERATION_CANCEL_UNCLAIMED, OPERATION_PAYPAL_BATCH, PayoutBatch, PayoutItem
from payouts.services import item_apply_status
from providers.base import Succeeded
from providers.models import MoneyMovement, WebhookEvent
from providers.protocol import movement_latest, movement_resolve
from providers.webhooks import register_handler

ITEM_EVENTS = ("SUCCEEDED", "UNCLAIMED", "FAILED", "RETURNED", "BLOCKED", "CANCELED", "HELD", "REFUNDED", "REVERSED")
BATCH_EVENTS = ("PROCESSING", "SUCCESS", "DENIED")


def _resolve_open(operation: str, subject_id: int, result: Succeeded) -> None:
    movement = movement_latest(operation=operation, subject_id=subject_id)
    if movement is not None and movement.status in MoneyMovement.OPEN:
        movement_resolve(movement=movement, result=result)


def payout_item_changed(event: WebhookEvent, body: dict[str, Any]) -> None:
    resource = body["resource"]
    item = PayoutItem.objects.filter(
        batch__sender_batch_id=resource.get("sender_batch_id", ""),
        sender_item_id=resource["payout_item"]["sender_item_id"],
    ).first()
    if item is None:  # maybe not recorded yet: failing lets the sweeper try again later
        raise NotFound(
            f"no payout item {resource['payout_item']['sender_item_id']} in {resource.get('sender_batch_id')}"
        )
    if resource.get("payout_batch_id"):  # PayPal has the batch: its create succeeded (items NEW -> PENDING)
        _resolve_open(OPERATION_PAYPAL_BATCH, item.batch_id, Succeeded(reference=resource["payout_batch_id"]))
    status = resource["transaction_status"]
    item_apply_status(item_pk=item.pk, status=status, provider_item_id=resource["payout_item_id"])
    if status == PayoutItem.Status.RETURNED:  # cancelled (by us or otherwise): an open cancel is done
        _resolve_open(
            OPERATION_CANCEL_UNCLAIMED, item.pk, Succeeded(reference=resource["payout_item_id"], status=status)
        )


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
        register_handler("paypal", f"PAYMENT.PAYOUTS-ITEM.{name}", payout_item_changed)
    for name in BATCH_EVENTS:
        register_handler("paypal", f"PAYMENT.PAYOUTSBATCH.{name}", payout_batch_changed)
