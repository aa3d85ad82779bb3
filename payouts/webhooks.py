"""PayPal Payouts webhooks: move items (and unknown batches) forward. Order-safe: an old
or repeated status changes nothing (see payouts.services.item_apply_status)."""

from __future__ import annotations

from typing import Any

from core.errors import NotFound
from payouts.models import PayoutBatch, PayoutItem
from payouts.services import batch_sync, item_apply_status, record_submission
from providers.base import Pending
from providers.models import WebhookEvent
from providers.webhooks import register_handler

ITEM_EVENTS = ("SUCCEEDED", "UNCLAIMED", "FAILED", "RETURNED", "BLOCKED", "CANCELED", "HELD", "REFUNDED", "REVERSED")
BATCH_EVENTS = ("PROCESSING", "SUCCESS", "DENIED")


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
    item_apply_status(
        item_pk=item.pk, status=resource["transaction_status"], provider_item_id=resource["payout_item_id"]
    )


def payout_batch_changed(event: WebhookEvent, body: dict[str, Any]) -> None:
    header = body["resource"]["batch_header"]
    batch = PayoutBatch.objects.filter(sender_batch_id=header["sender_batch_header"]["sender_batch_id"]).first()
    if batch is None:
        raise NotFound(f"no payout batch {header['sender_batch_header']['sender_batch_id']}")
    if batch.status == PayoutBatch.Status.UNKNOWN:  # PayPal has it after all: this names it
        record_submission(batch, Pending(reference=header["payout_batch_id"], status=header["batch_status"]))
    if header["batch_status"] in ("SUCCESS", "DENIED"):
        batch_sync(batch_id=batch.pk)


def register_payout_handlers() -> None:
    for name in ITEM_EVENTS:
        register_handler("paypal", f"PAYMENT.PAYOUTS-ITEM.{name}", payout_item_changed)
    for name in BATCH_EVENTS:
        register_handler("paypal", f"PAYMENT.PAYOUTSBATCH.{name}", payout_batch_changed)
