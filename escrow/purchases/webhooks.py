"""Stripe webhooks for purchases: an event about one of our PaymentIntents or refunds.

Invariant: nothing here calls Stripe. Webhook processing runs in a transaction that may still roll back,
so a verified event's object is recorded as the provider's word (`movement_resolve`) for each open movement
it settles (a PaymentIntent `succeeded` or `canceled`, a refund `succeeded` or `failed`, ...), through the
same reading of the object as the operation's look-up; an event that settles nothing (an older state, a
refund still pending at a movement that knows more) only nudges the movement's sync, after commit. Duplicates
and any delivery order are harmless: a movement records one outcome, and a settled one ignores the rest.
Objects that are not a purchase's (no `purchase` metadata, or another PaymentIntent) are ignored.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from escrow.models import Purchase
from escrow.purchases.common import REFUND, purchase_movements
from escrow.purchases.operations import INTENT_OUTCOMES
from providers.base import Absent, Declined, LookupResult, Pending, Succeeded, Unknown
from providers.models import MoneyMovement
from providers.protocol import movement_resolve
from providers.stripe.client import intent_result, refund_result

EVENT_TYPES = (
    "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded",
    "payment_intent.canceled",
    "payment_intent.payment_failed",
    "refund.created",
    "refund.updated",
)


def purchase_stripe_event(event: Any, body: dict[str, Any]) -> None:
    obj = (body.get("data") or {}).get("object") or {}
    named = str((obj.get("metadata") or {}).get("purchase", ""))
    if obj.get("object") not in ("payment_intent", "refund") or not named.isdigit():
        return
    intent_id = obj["id"] if obj["object"] == "payment_intent" else obj.get("payment_intent")
    purchase = Purchase.objects.filter(pk=int(named)).first()
    if purchase is None or (purchase.payment_intent_id and purchase.payment_intent_id != intent_id):
        return
    if obj["object"] == "payment_intent":
        _payment_intent_event(purchase, obj)
    else:
        _refund_event(purchase, obj)


def _payment_intent_event(purchase: Purchase, intent: dict[str, Any]) -> None:
    key = (intent.get("metadata") or {}).get("idempotency_key", purchase.authorize_key)
    if key != purchase.authorize_key:  # not the PaymentIntent our authorization made
        return
    read = intent_result(intent)
    for movement in purchase_movements(purchase.pk).filter(
        operation__in=INTENT_OUTCOMES, status__in=MoneyMovement.OPEN
    ):
        _settle_or_nudge(movement, INTENT_OUTCOMES[movement.operation](read))


def _refund_event(purchase: Purchase, refund: dict[str, Any]) -> None:
    key = str((refund.get("metadata") or {}).get("idempotency_key", ""))
    movement = purchase_movements(purchase.pk).filter(operation=REFUND, key=key, status__in=MoneyMovement.OPEN).first()
    if movement is None:
        return
    read = refund_result(refund)  # as the API's answer would be: succeeded, found failed, or pending
    if isinstance(read, Pending) and movement.status != MoneyMovement.Status.PENDING:
        read = Unknown(reason=f"refund {refund['id']} is {read.status}")  # a look-up may know more: ask it
    _settle_or_nudge(movement, read)


def _settle_or_nudge(movement: MoneyMovement, result: LookupResult) -> None:
    if isinstance(result, Succeeded | Declined | Pending):
        movement_resolve(movement=movement, result=result)
        return
    if isinstance(result, Absent | Unknown):  # not settled by this event: a look-up will say, after commit

        def nudge(pk: int = movement.pk) -> None:
            from providers.tasks import sync_money_movement_task

            sync_money_movement_task.delay(pk)

        transaction.on_commit(nudge)


def register_purchase_handlers() -> None:
    from providers.webhooks import register_handler

    for event_type in EVENT_TYPES:
        register_handler("stripe", event_type, purchase_stripe_event)
