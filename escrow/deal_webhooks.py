"""Stripe webhooks for escrow deals and sellers. Each handler ignores objects that are not escrow's
(no `escrow_deal` metadata and no id we recorded) and only moves a deal forward, so duplicates and any
delivery order are harmless. An event that arrives before the state it follows (a reversal before the
transfer is recorded) fails, and the webhook sweeper applies it again later.

An event that settles one of our money movements (the hold placed or failed, the capture made, the void
done, the transfer created) resolves that movement through the protocol (`movement_resolve`), so the
outcome is recorded once, by the operation's hook, whichever of webhook, call and sweeper comes first.
Transfers are matched to their movement by the key they carry (`metadata["idempotency_key"]`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from escrow.deals import (
    deal_authorization_lapsed,
    deal_capture_recorded,
    deal_transfer_failed_after,
    deal_transfer_reversed,
    seller_account_updated,
)
from escrow.deals.common import CAPTURE, HOLD, TRANSFER, VOID
from escrow.models import EscrowDeal
from providers.base import Succeeded, found_failed
from providers.models import MoneyMovement, WebhookEvent
from providers.protocol import movement_latest, movement_resolve
from providers.stripe.client import IDEMPOTENCY_METADATA_KEY, intent_result
from providers.stripe.intents import as_hold
from providers.webhooks import register_handler

Status = EscrowDeal.Status
Obj = dict[str, Any]


def _deal_of(obj: Obj, id_field: str) -> EscrowDeal | None:
    """The deal named by the object's metadata, or the one that recorded the object's id."""
    named = str((obj.get("metadata") or {}).get("escrow_deal", ""))
    if named.isdigit():
        return EscrowDeal.objects.filter(pk=int(named)).first()
    return EscrowDeal.objects.filter(**{id_field: obj.get("id") or "-"}).first() if obj.get("id") else None


def _open_movement(deal: EscrowDeal, operation: str) -> MoneyMovement | None:
    movement = movement_latest(operation=operation, subject_id=deal.pk)
    return movement if movement is not None and movement.status in MoneyMovement.OPEN else None


def payment_intent_changed(event: WebhookEvent, body: Obj) -> None:
    """Hold placed (amount_capturable_updated, or succeeded when captured at once), captured, failed, canceled."""
    intent = body["data"]["object"]
    deal = _deal_of(intent, "payment_intent_id")
    if deal is None:
        return
    status, reference = intent["status"], intent["id"]
    if deal.status == Status.CREATED:
        _hold_changed(deal, intent)
    elif status == "succeeded" and deal.hold_mode == EscrowDeal.HoldMode.AUTHORIZATION:
        capture = _open_movement(deal, CAPTURE)
        if capture is not None:
            movement_resolve(movement=capture, result=Succeeded(reference=reference, status=status, raw=intent))
        else:  # captured outside our capture call (by hand at Stripe): the money moved all the same
            deal_capture_recorded(deal_id=deal.pk, payment_intent_id=reference)
    elif status == "canceled":
        _intent_canceled(deal, intent)


def _hold_changed(deal: EscrowDeal, intent: Obj) -> None:
    """The PaymentIntent read as a hold, as its look-up would (providers.stripe.intents): held, refused, waiting."""
    hold = _open_movement(deal, HOLD)
    if hold is not None:
        movement_resolve(movement=hold, result=as_hold(intent_result(intent)))  # type: ignore[arg-type]


def _intent_canceled(deal: EscrowDeal, intent: Obj) -> None:
    """Voided by our cancel, or the authorization lapsed (Stripe voids it after about 7 days)."""
    void, capture = _open_movement(deal, VOID), _open_movement(deal, CAPTURE)
    if void is not None:
        movement_resolve(movement=void, result=Succeeded(reference=intent["id"], status="canceled", raw=intent))
    elif capture is not None:
        lapsed = found_failed("the authorization was canceled at Stripe", intent)
        movement_resolve(movement=capture, result=lapsed)
    else:
        deal_authorization_lapsed(deal_id=deal.pk)


def transfer_created(event: WebhookEvent, body: Obj) -> None:
    """Our transfer was made: its movement (found by the key the transfer carries) is resolved."""
    transfer = body["data"]["object"]
    key = (transfer.get("metadata") or {}).get(IDEMPOTENCY_METADATA_KEY)
    movement = MoneyMovement.objects.filter(key=key, operation=TRANSFER).first() if key else None
    if movement is not None and movement.status in MoneyMovement.OPEN:
        movement_resolve(movement=movement, result=Succeeded(reference=transfer["id"], status="paid", raw=transfer))


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
