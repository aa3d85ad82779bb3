"""Customer-payment adapters: one per provider, the same calls for the orchestrator's operations.

Each call uses the key of the money movement it serves, so a repeat is the same request:
- `start` / `look_up_start`: begin the payment (charge a card, or open a checkout the customer
  completes), and find it by our key without starting it again;
- `refund` / `look_up_refund`: refund part of a payment, and find that refund by our key.
A look-up answers with the object's state: `Succeeded` (paid / refunded), `Pending`, `Absent` (never
made) or `found_failed` (made and failed); errors are passed through (the protocol treats them as unknown).
PayPal is not here: it is used for payouts only.
"""

from __future__ import annotations

from typing import Protocol

from django.conf import settings

from providers.base import Absent, Declined, LookupResult, Pending, ProviderResult, Succeeded, found_failed
from providers.gcash.client import PayMongoClient
from providers.maya.client import MayaClient
from providers.models import MoneyMovement, Payment, Refund
from providers.stripe.client import stripe_client

PAID_STATUSES = frozenset({"succeeded", "paid", "SUCCESS", "PAYMENT_SUCCESS"})
STRIPE_FAILED_INTENT = frozenset({"requires_payment_method", "canceled"})


class PaymentGateway(Protocol):
    provider: str

    def start(self, payment: Payment, key: str) -> ProviderResult: ...
    def look_up_start(self, payment: Payment, movement: MoneyMovement) -> LookupResult | None: ...
    def refund(self, payment: Payment, refund: Refund, key: str) -> ProviderResult: ...
    def look_up_refund(self, payment: Payment, movement: MoneyMovement) -> LookupResult | None: ...


def redirect_url(result: ProviderResult) -> str:
    """Where the customer completes a checkout (Maya, GCash), from the provider's answer."""
    if not isinstance(result, Pending):
        return ""
    gcash = result.raw.get("attributes", {}).get("redirect", {}).get("checkout_url", "")
    return str(gcash or result.raw.get("redirectUrl", ""))


def _return_url(payment: Payment, outcome: str) -> str:
    return f"{settings.PAYMENT_RETURN_URL.rstrip('/')}/{payment.reference}/{outcome}"


def _state(found: ProviderResult, failed: frozenset[str] = frozenset()) -> LookupResult:
    """A found object's state: failed statuses are `found_failed`; errors pass through as they are."""
    if isinstance(found, Succeeded | Pending) and found.status in failed:
        return found_failed(f"{found.reference} is {found.status}", found.raw)
    if isinstance(found, Declined) and found.code == "not_found":
        return Absent(found.reason)
    return found


class StripeCardGateway:
    provider = "stripe"

    def start(self, payment: Payment, key: str) -> ProviderResult:
        if not payment.payment_method_token:
            return Declined(reason="a card payment needs a payment method token", code="missing_card")
        return stripe_client().create_payment_intent(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            payment_method=payment.payment_method_token,
            idempotency_key=key,
            capture="automatic",
            metadata={"payment": payment.reference},
        )

    def look_up_start(self, payment: Payment, movement: MoneyMovement) -> LookupResult:
        client = stripe_client()
        if movement.provider_reference:
            found = client.retrieve_payment_intent(payment_intent_id=movement.provider_reference)
        else:  # Stripe's search lags new objects: an empty answer soon after the send is not "never made"
            found = client.find_payment_intent(idempotency_key=movement.key, first_attempt_at=movement.first_sent_at)
        return _state(found, STRIPE_FAILED_INTENT)

    def refund(self, payment: Payment, refund: Refund, key: str) -> ProviderResult:
        return stripe_client().refund(
            payment_intent_id=payment.provider_reference,
            idempotency_key=key,
            amount_minor=refund.amount_minor,
            metadata={"payment": payment.reference},
        )

    def look_up_refund(self, payment: Payment, movement: MoneyMovement) -> LookupResult:
        if movement.provider_reference:
            return stripe_client().retrieve_refund(refund_id=movement.provider_reference)
        return stripe_client().find_refund(payment_intent_id=payment.provider_reference, idempotency_key=movement.key)


class GCashGateway:
    provider = "gcash"

    def start(self, payment: Payment, key: str) -> ProviderResult:
        return PayMongoClient().source_create(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            success_url=_return_url(payment, "success"),
            failed_url=_return_url(payment, "failed"),
            idempotency_key=key,
        )

    def look_up_start(self, payment: Payment, movement: MoneyMovement) -> LookupResult | None:
        """A source the customer authorized (`chargeable`) is done for this step: the charge follows."""
        if not movement.provider_reference:
            return None  # PayMongo finds sources by id only; a keyed re-send inside its window answers instead
        found = PayMongoClient().source_get(source_id=movement.provider_reference)
        if isinstance(found, Pending) and found.status == "chargeable":
            return Succeeded(reference=found.reference, status="chargeable", raw=found.raw)
        return _state(found)

    def charge(self, payment: Payment, source_id: str, key: str) -> ProviderResult:
        """The customer authorized the source: take the money from it, once."""
        return PayMongoClient().payment_create(
            source_id=source_id,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            idempotency_key=key,
            description=payment.reference,
        )

    def refund(self, payment: Payment, refund: Refund, key: str) -> ProviderResult:
        return PayMongoClient().refund_create(
            payment_id=payment.provider_reference,
            amount_minor=refund.amount_minor,
            currency=payment.currency,
            reason="requested_by_customer",
            idempotency_key=key,
        )

    def look_up_refund(self, payment: Payment, movement: MoneyMovement) -> LookupResult | None:
        if not movement.provider_reference:
            return None  # found by id only: a keyed re-send inside PayMongo's window answers instead
        return _state(PayMongoClient().refund_get(refund_id=movement.provider_reference))


class MayaGateway:
    provider = "maya"

    def start(self, payment: Payment, key: str) -> ProviderResult:
        return MayaClient().checkout_create(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            request_reference_number=key,
            success_url=_return_url(payment, "success"),
            failure_url=_return_url(payment, "failed"),
            cancel_url=_return_url(payment, "cancelled"),
        )

    def look_up_start(self, payment: Payment, movement: MoneyMovement) -> LookupResult:
        found = MayaClient().payment_find(request_reference_number=movement.key)
        if isinstance(found, Declined) and found.code != "not_found" and found.raw.get("id"):
            return found_failed(found.reason, found.raw)  # the customer's payment failed, expired or was cancelled
        return _state(found)

    def refund(self, payment: Payment, refund: Refund, key: str) -> ProviderResult:
        return MayaClient().payment_refund(
            payment_id=payment.provider_reference,
            amount_minor=refund.amount_minor,
            currency=payment.currency,
            reason="requested by customer",
            request_reference_number=key,
        )

    def look_up_refund(self, payment: Payment, movement: MoneyMovement) -> LookupResult:
        found = MayaClient().refund_find(payment_id=payment.provider_reference, request_reference_number=movement.key)
        if isinstance(found, Declined) and found.code == "FAILED":
            return found_failed(found.reason, found.raw)
        return _state(found)


GATEWAYS: dict[str, PaymentGateway] = {
    gateway.provider: gateway for gateway in (StripeCardGateway(), GCashGateway(), MayaGateway())
}


def is_paid(result: ProviderResult) -> bool:
    return isinstance(result, Succeeded) and result.status in PAID_STATUSES
