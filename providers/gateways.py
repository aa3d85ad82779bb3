"""Customer-payment adapters: one per provider, the same four calls for the orchestrator.

Each call uses the deterministic key of the attempt or refund row it was given,
so a repeat (a retry, a sync) is the same request to the provider:
- `start`: begin the payment (charge a card, or open a checkout the customer completes);
- `resolve`: the truth about an attempt whose outcome was unknown, by our key;
- `refund` / `resolve_refund`: refund part of a payment, and find out what happened to one.
PayPal is not here: it is used for payouts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

from providers.base import Declined, Pending, ProviderResult, Succeeded
from providers.gcash.client import PayMongoClient
from providers.maya.client import MayaClient
from providers.models import Payment, PaymentAttempt, Refund
from providers.stripe.client import StripeProviderClient

PAID_STATUSES = frozenset({"succeeded", "paid", "SUCCESS", "PAYMENT_SUCCESS"})


@dataclass(frozen=True)
class Started:
    result: ProviderResult
    redirect_url: str = ""


class PaymentGateway(Protocol):
    provider: str
    refunds_replay: bool  # does the provider answer a repeated keyed refund with the first one?

    def start(self, payment: Payment, attempt: PaymentAttempt) -> Started: ...
    def resolve(self, payment: Payment, attempt: PaymentAttempt) -> ProviderResult: ...
    def refund(self, payment: Payment, refund: Refund) -> ProviderResult: ...
    def resolve_refund(self, payment: Payment, refund: Refund) -> ProviderResult: ...


def _return_url(payment: Payment, outcome: str) -> str:
    return f"{settings.PAYMENT_RETURN_URL.rstrip('/')}/{payment.reference}/{outcome}"


class StripeCardGateway:
    provider = "stripe"
    refunds_replay = True

    def _intent(self, payment: Payment, attempt: PaymentAttempt) -> dict:
        return {
            "amount_minor": payment.amount_minor,
            "currency": payment.currency,
            "payment_method": payment.payment_method_token,
            "idempotency_key": attempt.idempotency_key,
            "capture": "automatic",
            "metadata": {"payment": payment.reference},
        }

    def start(self, payment: Payment, attempt: PaymentAttempt) -> Started:
        if not payment.payment_method_token:
            return Started(Declined(reason="a card payment needs a payment method token", code="missing_card"))
        client = StripeProviderClient()
        try:
            return Started(client.create_payment_intent(**self._intent(payment, attempt)))
        finally:
            client.close()

    def resolve(self, payment: Payment, attempt: PaymentAttempt) -> ProviderResult:
        client = StripeProviderClient()
        try:  # replays the create under the same key, inside Stripe's 24 h window
            return client.sync_payment_intent(first_attempt_at=attempt.created_at, **self._intent(payment, attempt))
        finally:
            client.close()

    def refund(self, payment: Payment, refund: Refund) -> ProviderResult:
        client = StripeProviderClient()
        try:
            return client.refund(
                payment_intent_id=payment.provider_reference,
                idempotency_key=refund.idempotency_key,
                amount_minor=refund.amount_minor,
            )
        finally:
            client.close()

    resolve_refund = refund  # a keyed replay answers with the first refund


class GCashGateway:
    provider = "gcash"
    refunds_replay = True

    def start(self, payment: Payment, attempt: PaymentAttempt) -> Started:
        result = PayMongoClient().source_create(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            success_url=_return_url(payment, "success"),
            failed_url=_return_url(payment, "failed"),
            idempotency_key=attempt.idempotency_key,
        )
        redirect = result.raw.get("attributes", {}).get("redirect", {}).get("checkout_url", "")
        return Started(result, redirect if isinstance(result, Pending) else "")

    def resolve(self, payment: Payment, attempt: PaymentAttempt) -> ProviderResult:
        return self.start(payment, attempt).result  # PayMongo replays a keyed create

    def charge(self, payment: Payment, attempt: PaymentAttempt, source_id: str) -> ProviderResult:
        """The customer authorized the source: take the money from it, once."""
        return PayMongoClient().payment_create(
            source_id=source_id,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            idempotency_key=f"{attempt.idempotency_key}:charge",
            description=payment.reference,
        )

    def refund(self, payment: Payment, refund: Refund) -> ProviderResult:
        return PayMongoClient().refund_create(
            payment_id=payment.provider_reference,
            amount_minor=refund.amount_minor,
            currency=payment.currency,
            reason="requested_by_customer",
            idempotency_key=refund.idempotency_key,
        )

    resolve_refund = refund  # PayMongo replays a keyed create


class MayaGateway:
    provider = "maya"
    refunds_replay = False  # a repeated refund could pay out twice: look it up instead

    def start(self, payment: Payment, attempt: PaymentAttempt) -> Started:
        result = MayaClient().checkout_create(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            request_reference_number=attempt.idempotency_key,
            success_url=_return_url(payment, "success"),
            failure_url=_return_url(payment, "failed"),
            cancel_url=_return_url(payment, "cancelled"),
        )
        redirect = str(result.raw.get("redirectUrl", "")) if isinstance(result, Pending) else ""
        return Started(result, redirect)

    def resolve(self, payment: Payment, attempt: PaymentAttempt) -> ProviderResult:
        return MayaClient().payment_find(request_reference_number=attempt.idempotency_key)

    def refund(self, payment: Payment, refund: Refund) -> ProviderResult:
        return MayaClient().payment_refund(
            payment_id=payment.provider_reference,
            amount_minor=refund.amount_minor,
            currency=payment.currency,
            reason="requested by customer",
            request_reference_number=refund.idempotency_key,
        )

    def resolve_refund(self, payment: Payment, refund: Refund) -> ProviderResult:
        # Maya does not replay refunds: look the refund up, never send it again.
        return MayaClient().refund_find(
            payment_id=payment.provider_reference, request_reference_number=refund.idempotency_key
        )


GATEWAYS: dict[str, PaymentGateway] = {
    gateway.provider: gateway for gateway in (StripeCardGateway(), GCashGateway(), MayaGateway())
}


def is_paid(result: ProviderResult) -> bool:
    return isinstance(result, Succeeded) and result.status in PAID_STATUSES
