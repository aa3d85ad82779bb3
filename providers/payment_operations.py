"""The orchestrator's recipes for the money-moving protocol: start a payment, charge a GCash source, refund.

The provider of each movement is the route's (Stripe card, Maya checkout, GCash source); the adapters in
providers.gateways make the calls. Hooks run once per movement, inside the protocol's outcome transaction.
"""

from __future__ import annotations

from providers.base import Declined, LookupResult, Pending, ProviderResult, Succeeded
from providers.gateways import GATEWAYS, GCashGateway, is_paid, redirect_url
from providers.models import MoneyMovement, Payment, PaymentAttempt, Refund
from providers.payments import (
    REFUNDS,
    attempt_record,
    next_candidate,
    payment_mark_failed,
    payment_mark_succeeded,
    refund_post,
)
from providers.protocol import FollowUps, Operation, movement_record, operation_register
from providers.protocol.refunds import (
    refund_mark_declined,
    refund_mark_succeeded,
    refund_mark_unknown,
    refund_mark_waiting,
)


def _attempt(movement: MoneyMovement) -> PaymentAttempt:
    return PaymentAttempt.objects.select_related("payment").get(pk=movement.subject_id)


def _attempt_update(movement: MoneyMovement, status: str, **fields: str) -> None:
    PaymentAttempt.objects.filter(pk=movement.subject_id).update(status=status, **fields)


class PaymentStart(Operation):
    """Charge a card, or open the checkout the customer completes at Maya or GCash."""

    name = "payment.start"
    provider = ""  # the route's
    method = "payments.start"

    def send(self, movement: MoneyMovement) -> ProviderResult:
        attempt = _attempt(movement)
        return GATEWAYS[movement.provider].start(attempt.payment, movement.key)

    def look_up(self, movement: MoneyMovement) -> LookupResult | None:
        attempt = _attempt(movement)
        return GATEWAYS[movement.provider].look_up_start(attempt.payment, movement)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        attempt = _attempt(movement)
        if movement.provider == "gcash":  # the customer authorized the source: now charge it, once
            _attempt_update(movement, PaymentAttempt.Status.REQUIRES_ACTION, provider_reference=result.reference)
            payment = attempt.payment
            charge = movement_record(
                operation="payment.charge",
                subject_id=attempt.pk,
                key=f"{attempt.idempotency_key}:charge",
                provider="gcash",
            )
            Payment.objects.filter(pk=payment.pk).update(provider_reference=result.reference)
            return [charge]
        if not is_paid(result):  # e.g. a card still processing: not money yet
            return self.on_waiting(movement, Pending(reference=result.reference, status=result.status))
        _attempt_update(movement, PaymentAttempt.Status.SUCCEEDED, provider_reference=result.reference)
        payment_mark_succeeded(payment_pk=attempt.payment_id, provider_reference=result.reference)
        return None

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        attempt = _attempt(movement)
        _attempt_update(movement, PaymentAttempt.Status.REQUIRES_ACTION, provider_reference=result.reference)
        fields = {"provider_reference": result.reference}
        if url := redirect_url(result):
            fields["redirect_url"] = url
        Payment.status_move(attempt.payment_id, Payment.Status.REQUIRES_ACTION, **fields)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        """Known not taken: fall back to the next routed provider, but only if no outcome was ever unknown."""
        attempt = _attempt(movement)
        _attempt_update(movement, PaymentAttempt.Status.DECLINED, reason=result.reason[:255])
        payment = Payment.objects.select_for_update().get(pk=attempt.payment_id)
        candidate = next_candidate(payment) if payment.status == Payment.Status.PENDING else None
        if candidate is not None and not movement.was_unknown:
            return [attempt_record(payment, candidate)]
        reason = "every provider declined" if payment.status == Payment.Status.PENDING else result.reason
        payment_mark_failed(payment_pk=payment.pk, reason=reason)
        return None

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        attempt = _attempt(movement)
        _attempt_update(movement, PaymentAttempt.Status.UNKNOWN, reason=reason[:255])
        Payment.status_move(attempt.payment_id, Payment.Status.UNKNOWN, sources=[Payment.Status.PENDING])


class PaymentCharge(Operation):
    """GCash: take the money from the source the customer authorized (PayMongo replays the keyed create)."""

    name = "payment.charge"
    provider = "gcash"
    method = "payments.charge"

    def send(self, movement: MoneyMovement) -> ProviderResult:
        attempt = _attempt(movement)
        gateway = GATEWAYS["gcash"]
        assert isinstance(gateway, GCashGateway)
        return gateway.charge(attempt.payment, attempt.provider_reference, movement.key)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        _attempt_update(movement, PaymentAttempt.Status.SUCCEEDED)
        payment_mark_succeeded(payment_pk=_attempt(movement).payment_id, provider_reference=result.reference)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        _attempt_update(movement, PaymentAttempt.Status.DECLINED, reason=result.reason[:255])
        payment_mark_failed(payment_pk=_attempt(movement).payment_id, reason=f"GCash charge: {result.reason}")
        return None


class PaymentRefund(Operation):
    """Refund part of a succeeded payment through the provider that took it."""

    name = "payment.refund"
    provider = ""  # the payment's
    method = "refunds.create"

    def _refund(self, movement: MoneyMovement) -> Refund:
        return Refund.objects.select_related("payment").get(pk=movement.subject_id)

    def send(self, movement: MoneyMovement) -> ProviderResult:
        refund = self._refund(movement)
        return GATEWAYS[movement.provider].refund(refund.payment, refund, movement.key)

    def look_up(self, movement: MoneyMovement) -> LookupResult | None:
        return GATEWAYS[movement.provider].look_up_refund(self._refund(movement).payment, movement)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        if refund_mark_succeeded(REFUNDS, refund_pk=movement.subject_id, provider_reference=result.reference):
            refund_post(self._refund(movement), result.reference)
        return None

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        refund_mark_waiting(REFUNDS, refund_pk=movement.subject_id, provider_reference=result.reference)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        refund_mark_declined(REFUNDS, refund_pk=movement.subject_id, reason=result.reason)
        return None

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        refund_mark_unknown(REFUNDS, refund_pk=movement.subject_id, reason=reason)


def register_payment_operations() -> None:
    for operation in (PaymentStart(), PaymentCharge(), PaymentRefund()):
        operation_register(operation)
