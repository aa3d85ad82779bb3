"""Webhook handlers that complete customer payments. Each only moves a payment forward,
so duplicates and any delivery order are harmless."""

from __future__ import annotations

from typing import Any

from providers.models import Payment, PaymentAttempt, WebhookEvent
from providers.payments import gcash_source_chargeable, payment_mark_failed, payment_mark_succeeded
from providers.webhooks import register_handler


def _payment_of_attempt(**lookup: str) -> Payment | None:
    attempt = PaymentAttempt.objects.select_related("payment").filter(**lookup).first()
    return attempt.payment if attempt else None


def stripe_payment_succeeded(event: WebhookEvent, body: dict[str, Any]) -> None:
    intent = body["data"]["object"]
    payment = Payment.objects.filter(reference=intent.get("metadata", {}).get("payment", "")).first()
    if payment is not None:
        payment_mark_succeeded(payment_pk=payment.pk, provider_reference=intent["id"])


def gcash_source_authorized(event: WebhookEvent, body: dict[str, Any]) -> None:
    gcash_source_chargeable(source_id=body["data"]["attributes"]["data"]["id"])


def gcash_payment_finished(event: WebhookEvent, body: dict[str, Any]) -> None:
    paid = body["data"]["attributes"]["data"]
    payment = _payment_of_attempt(provider_reference=paid["attributes"]["source"]["id"])
    if payment is None:
        return
    if paid["attributes"]["status"] == "paid":
        payment_mark_succeeded(payment_pk=payment.pk, provider_reference=paid["id"])
    else:
        payment_mark_failed(payment_pk=payment.pk, reason=f"GCash payment {paid['attributes']['status']}")


def maya_payment_finished(event: WebhookEvent, body: dict[str, Any]) -> None:
    payment = _payment_of_attempt(idempotency_key=body["requestReferenceNumber"])
    if payment is None:
        return
    if body["status"] == "PAYMENT_SUCCESS":
        payment_mark_succeeded(payment_pk=payment.pk, provider_reference=body["id"])
    else:
        payment_mark_failed(payment_pk=payment.pk, reason=f"Maya: {body['status']}")


def register_payment_handlers() -> None:
    register_handler("stripe", "payment_intent.succeeded", stripe_payment_succeeded)
    register_handler("gcash", "source.chargeable", gcash_source_authorized)
    register_handler("gcash", "payment.paid", gcash_payment_finished)
    register_handler("gcash", "payment.failed", gcash_payment_finished)
    for status in ("PAYMENT_SUCCESS", "PAYMENT_FAILED", "PAYMENT_EXPIRED", "PAYMENT_CANCELLED"):
        register_handler("maya", status, maya_payment_finished)
