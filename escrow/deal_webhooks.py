"""Stripe webhooks for escrow deals and sellers. Each handler ignores objects that are not escrow's
(no `escrow_deal` metadata and no id we recorded) and only moves a deal forward, so duplicates and any
delivery order are harmless. An event that arrives before the state it follows (a reversal before the
transfer is recorded) fails, and the webhook sweeper applies it again later."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from escrow.deals import (
    deal_capture_recorded,
    deal_hold_failed,
    deal_hold_succeeded,
    deal_transfer_failed_after,
    deal_transfer_reversed,
    deal_transfer_succeeded,
    deal_voided,
    seller_account_updated,
)
from escrow.models import EscrowDeal
from providers.models import WebhookEvent
from providers.webhooks import register_handler

Status = EscrowDeal.Status
Obj = dict[str, Any]


def _deal_of(obj: Obj, id_field: str) -> EscrowDeal | None:
    """The deal named by the object's metadata, or the one that recorded the object's id."""
    named = str((obj.get("metadata") or {}).get("escrow_deal", ""))
    if named.isdigit():
        return EscrowDeal.objects.filter(pk=int(named)).first()
    return EscrowDeal.objects.filter(**{id_field: obj.get("id") or "-"}).first() if obj.get("id") else None


def payment_intent_changed(event: WebhookEvent, body: Obj) -> None:
    """Hold placed (amount_capturable_updated, or succeeded when captured at once), captured, failed, canceled."""
    intent = body["data"]["object"]
    deal = _deal_of(intent, "payment_intent_id")
    if deal is None:
        return
    status = intent["status"]
    if deal.status == Status.CREATED:
        if status in ("requires_capture", "succeeded"):
            deal_hold_succeeded(deal_id=deal.pk, payment_intent_id=intent["id"], captured=status == "succeeded")
        elif body["type"] in ("payment_intent.payment_failed", "payment_intent.canceled"):
            reason = (intent.get("last_payment_error") or {}).get("message") or f"payment intent {status}"
            deal_hold_failed(deal_id=deal.pk, reason=reason)
    elif status == "succeeded" and deal.hold_mode == EscrowDeal.HoldMode.AUTHORIZATION:
        deal_capture_recorded(deal_id=deal.pk, payment_intent_id=intent["id"])
    elif status == "canceled":
        target = Status.REFUNDED if deal.status == Status.REFUNDING else Status.EXPIRED
        deal_voided(deal_id=deal.pk, target=target)


def transfer_created(event: WebhookEvent, body: Obj) -> None:
    transfer = body["data"]["object"]
    deal = _deal_of(transfer, "transfer_id")
    if deal is not None and deal.status in (Status.RELEASED, Status.TRANSFER_FAILED):
        deal_transfer_succeeded(deal_id=deal.pk, transfer_id=transfer["id"])


def transfer_reversed(event: WebhookEvent, body: Obj) -> None:
    transfer = body["data"]["object"]
    deal = _deal_of(transfer, "transfer_id")
    if deal is None:
        return
    reversals = [(reversal["id"], int(reversal["amount"])) for reversal in transfer["reversals"]["data"]]
    deal_transfer_reversed(deal_id=deal.pk, reversals=reversals, amount_reversed=int(transfer["amount_reversed"]))


def transfer_failed(event: WebhookEvent, body: Obj) -> None:
    transfer = body["data"]["object"]
    deal = _deal_of(transfer, "transfer_id")
    if deal is not None:
        reason = transfer.get("failure_message") or transfer.get("failure_code") or "transfer failed at Stripe"
        deal_transfer_failed_after(deal_id=deal.pk, transfer_id=transfer["id"], reason=str(reason))


def account_updated(event: WebhookEvent, body: Obj) -> None:
    account = body["data"]["object"]
    transfers = (account.get("capabilities") or {}).get("transfers") or "inactive"
    seller_account_updated(
        stripe_account_id=account["id"],
        transfers=str(transfers),
        event_at=datetime.fromtimestamp(int(body["created"]), tz=UTC),
    )


def register_deal_handlers() -> None:
    for event_type in (
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
    ):
        register_handler("stripe", event_type, payment_intent_changed)
    register_handler("stripe", "transfer.created", transfer_created)
    register_handler("stripe", "transfer.reversed", transfer_reversed)
    register_handler("stripe", "transfer.failed", transfer_failed)
    register_handler("stripe", "account.updated", account_updated)
