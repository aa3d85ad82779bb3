"""Webhook handlers for customer payments: each records the provider's word on one money movement.

`movement_resolve` records an outcome once and only forward, so duplicates and any delivery order are
harmless. A handler never calls a provider: it runs inside the webhook's processing transaction, and any
next step a movement records (a GCash charge) is sent after that transaction commits.
"""

from __future__ import annotations

from typing import Any

from core.errors import NotFound
from providers.base import Succeeded, found_failed
from providers.models import MoneyMovement, Payment, PaymentAttempt, WebhookEvent
from providers.protocol import movement_latest, movement_resolve
from providers.webhooks import register_handler


def _attempt(**lookup: str) -> PaymentAttempt:
    attempt = PaymentAttempt.objects.filter(**lookup).first()
    if attempt is None:  # the call that creates it has not returned yet: the webhook sweeper tries again
        raise NotFound(f"no payment attempt with {lookup}")
    return attempt


def _movement(operation: str, attempt: PaymentAttempt) -> MoneyMovement:
    movement = movement_latest(operation=operation, subject_id=attempt.pk)
    if movement is None:
        raise NotFound(f"no {operation} movement for attempt {attempt.pk} yet")
    return movement


def stripe_payment_succeeded(event: WebhookEvent, body: dict[str, Any]) -> None:
    intent = body["data"]["object"]
    metadata = intent.get("metadata") or {}
    payment = Payment.objects.filter(reference=str(metadata.get("payment", ""))).first()
    if payment is None:
        return  # not a customer payment (escrow and purchases have their own handlers)
    key = str(metadata.get("idempotency_key", ""))
    attempt = _attempt(idempotency_key=key) if key else _attempt(payment=payment, provider="stripe")
    movement_resolve(
        movement=_movement("payment.start", attempt), result=Succeeded(reference=intent["id"], status=intent["status"])
    )


def gcash_source_authorized(event: WebhookEvent, body: dict[str, Any]) -> None:
    source = body["data"]["attributes"]["data"]
    attempt = _attempt(provider="gcash", provider_reference=source["id"])
    movement_resolve(movement=_movement("payment.start", attempt), result=Succeeded(source["id"], "chargeable"))


def gcash_payment_finished(event: WebhookEvent, body: dict[str, Any]) -> None:
    paid = body["data"]["attributes"]["data"]
    attempt = _attempt(provider="gcash", provider_reference=paid["attributes"]["source"]["id"])
    status = paid["attributes"]["status"]
    result = (
        Succeeded(reference=paid["id"], status=status)
        if status == "paid"
        else found_failed(f"GCash payment {paid['id']} {status}", paid)
    )
    movement_resolve(movement=_movement("payment.charge", attempt), result=result)


def maya_payment_finished(event: WebhookEvent, body: dict[str, Any]) -> None:
    attempt = _attempt(provider="maya", idempotency_key=body["requestReferenceNumber"])
    result = (
        Succeeded(reference=body["id"], status=body["status"])
        if body["status"] == "PAYMENT_SUCCESS"
        else found_failed(f"Maya: {body['status']}", body)
    )
    movement_resolve(movement=_movement("payment.start", attempt), result=result)


def register_payment_handlers() -> None:
    register_handler("stripe", "payment_intent.succeeded", stripe_payment_succeeded)
    register_handler("gcash", "source.chargeable", gcash_source_authorized)
    register_handler("gcash", "payment.paid", gcash_payment_finished)
    register_handler("gcash", "payment.failed", gcash_payment_finished)
    for status in ("PAYMENT_SUCCESS", "PAYMENT_FAILED", "PAYMENT_EXPIRED", "PAYMENT_CANCELLED"):
        register_handler("maya", status, maya_payment_finished)
