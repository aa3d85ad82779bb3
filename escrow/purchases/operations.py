"""The four Stripe calls of a purchase, as protocol operations (providers.protocol): how to call, how to look
up without moving money, and which hooks record each outcome. Registered by escrow.apps.

| operation          | subject        | key                                 | look-up                               |
|--------------------|----------------|-------------------------------------|---------------------------------------|
| purchase.authorize | Purchase       | purchase:{id}:authorize             | find_payment_intent (Search, our key) |
| purchase.capture   | Purchase       | purchase:{id}:capture[:n]           | retrieve the PaymentIntent            |
| purchase.void      | Purchase       | purchase:{id}:void[:n]              | retrieve the PaymentIntent            |
| purchase.refund    | PurchaseRefund | purchase:{purchase id}:refund:{id}  | find_refund (the intent's refunds)    |

A PaymentIntent read for a capture: `succeeded` is done, `requires_capture` is Absent (not done: the
protocol may send it again under the same key), `canceled` is `found_failed` (never possible: the hook voids
the purchase). For a void: `canceled` is done, `requires_capture` is Absent, `succeeded` is `found_failed`
(captured: the void hook posts the capture and refunds it). A refund found failed or canceled is
`found_failed`; a refund found pending is Pending (`waiting`, never success). A call refused with
`idempotency_error` is Unknown: an earlier request under the key may have moved money.
"""

from __future__ import annotations

from typing import Any

from escrow.models import Purchase, PurchaseRefund
from escrow.purchases import capture_void, create, refunds
from escrow.purchases.common import AUTHORIZE, CAPTURE, REFUND, VOID, O
from providers.base import (
    Absent,
    Declined,
    LookupResult,
    Pending,
    ProviderResult,
    Succeeded,
    Unknown,
    found_failed,
)
from providers.models import MoneyMovement
from providers.protocol import FollowUps, Operation, operation_register
from providers.stripe.client import CancellationReason, stripe_client

_CANCELLATION_REASON: dict[str, CancellationReason] = {
    O.CANCELLED: "requested_by_customer",
    O.FAILED: "abandoned",
    O.TIMED_OUT: "abandoned",
}
_NOT_VOIDED_YET = ("requires_capture", "requires_payment_method", "requires_confirmation", "requires_action")


def _keyed(result: ProviderResult) -> ProviderResult:
    """Stripe's `idempotency_error` proves nothing about an earlier request under the same key."""
    if isinstance(result, Declined) and result.code == "idempotency_error":
        return Unknown(reason=f"Stripe refused the key: {result.reason}", raw=result.raw)
    return result


def authorize_outcome(found: LookupResult) -> LookupResult:
    """A PaymentIntent of ours whose card was refused is a decline of the authorization, not a wait."""
    if isinstance(found, Pending) and found.status == "requires_payment_method":
        error: dict[str, Any] = found.raw.get("last_payment_error") or {}
        return found_failed(error.get("message") or f"the card was declined on {found.reference}", found.raw)
    return found


def capture_outcome(found: LookupResult) -> LookupResult:
    """What a PaymentIntent says about our capture."""
    if isinstance(found, Succeeded | Pending):
        if found.status == "succeeded":
            return Succeeded(reference=found.reference, status="succeeded", raw=found.raw)
        if found.status == "requires_capture":
            return Absent(reason=f"PaymentIntent {found.reference} is not captured")
        if found.status == "canceled":
            return found_failed(f"PaymentIntent {found.reference} is canceled: it can never be captured", found.raw)
        return Unknown(reason=f"PaymentIntent {found.reference} is {found.status}")
    if isinstance(found, Declined):  # the read was refused: that says nothing about the capture
        return Unknown(reason=f"reading the PaymentIntent failed: {found.reason}")
    return found


def void_outcome(found: LookupResult) -> LookupResult:
    """What a PaymentIntent says about our void."""
    if isinstance(found, Succeeded | Pending):
        if found.status == "canceled":
            return Succeeded(reference=found.reference, status="canceled", raw=found.raw)
        if found.status in _NOT_VOIDED_YET:
            return Absent(reason=f"PaymentIntent {found.reference} is {found.status}, not canceled")
        if found.status == "succeeded":
            return found_failed(f"PaymentIntent {found.reference} is captured: it can never be voided", found.raw)
        return Unknown(reason=f"PaymentIntent {found.reference} is {found.status}")
    if isinstance(found, Declined):
        return Unknown(reason=f"reading the PaymentIntent failed: {found.reason}")
    return found


def _refused(refusal: Declined, found: LookupResult) -> ProviderResult:
    """A capture or void refused outright: the PaymentIntent says whether it is done or can never be;
    otherwise the refusal stands (known not done)."""
    return found if isinstance(found, Succeeded | Declined) else refusal


def _intent_id(movement: MoneyMovement) -> str:
    return Purchase.objects.values_list("payment_intent_id", flat=True).get(pk=movement.subject_id)


class _PurchaseOperation(Operation):
    provider = "stripe"

    def escalation_action(self, movement: MoneyMovement) -> str:
        return (
            f"Look our key {movement.key} up in Stripe and settle the purchase by hand (refund or void it there if "
            "money is owed back); then use 'Sync' on the purchase."
        )


class AuthorizePurchase(_PurchaseOperation):
    name = AUTHORIZE

    def send(self, movement: MoneyMovement) -> ProviderResult:
        purchase = Purchase.objects.select_related("service").get(pk=movement.subject_id)
        result = stripe_client().create_payment_intent(
            amount_minor=purchase.amount_minor,
            currency=purchase.currency,
            payment_method=purchase.payment_method,
            idempotency_key=movement.key,
            capture="manual",
            metadata={"purchase": str(purchase.pk), "service": purchase.service.code},
        )
        return authorize_outcome(_keyed(result))  # type: ignore[return-value]

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        found = stripe_client().find_payment_intent(
            idempotency_key=movement.key, first_attempt_at=movement.first_sent_at
        )
        return authorize_outcome(found)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        return create.authorization_succeeded(movement, result)

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        return create.authorization_declined(movement, result)

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        return create.authorization_waiting(movement, result)

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        create.authorization_unknown(movement, reason)


class CapturePurchase(_PurchaseOperation):
    name = CAPTURE

    def send(self, movement: MoneyMovement) -> ProviderResult:
        client, intent_id = stripe_client(), _intent_id(movement)
        result = _keyed(client.capture(payment_intent_id=intent_id, idempotency_key=movement.key))
        if isinstance(result, Declined) and not result.retryable:
            return _refused(result, capture_outcome(client.retrieve_payment_intent(payment_intent_id=intent_id)))
        if isinstance(result, Succeeded) and result.status != "succeeded":
            return Unknown(reason=f"the capture answered a PaymentIntent that is {result.status}", raw=result.raw)
        return result

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return capture_outcome(stripe_client().retrieve_payment_intent(payment_intent_id=_intent_id(movement)))

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        return capture_void.capture_succeeded(movement, result)

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        return capture_void.capture_declined(movement, result)

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        capture_void.capture_unknown(movement, reason)


class VoidPurchase(_PurchaseOperation):
    name = VOID

    def send(self, movement: MoneyMovement) -> ProviderResult:
        purchase = Purchase.objects.get(pk=movement.subject_id)
        client, intent_id = stripe_client(), purchase.payment_intent_id
        reason = _CANCELLATION_REASON.get(purchase.outcome, "abandoned")
        result = _keyed(client.cancel(payment_intent_id=intent_id, idempotency_key=movement.key, reason=reason))
        if isinstance(result, Declined) and not result.retryable:
            return _refused(result, void_outcome(client.retrieve_payment_intent(payment_intent_id=intent_id)))
        if isinstance(result, Succeeded) and result.status != "canceled":
            return Unknown(reason=f"the void answered a PaymentIntent that is {result.status}", raw=result.raw)
        return result

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return void_outcome(stripe_client().retrieve_payment_intent(payment_intent_id=_intent_id(movement)))

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        return capture_void.void_succeeded(movement, result)

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        return capture_void.void_declined(movement, result)

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        capture_void.void_unknown(movement, reason)


class RefundPurchase(_PurchaseOperation):
    name = REFUND

    def send(self, movement: MoneyMovement) -> ProviderResult:
        refund = PurchaseRefund.objects.select_related("purchase").get(pk=movement.subject_id)
        result = stripe_client().refund(
            payment_intent_id=refund.purchase.payment_intent_id,
            idempotency_key=movement.key,
            amount_minor=refund.amount_minor,
            metadata={"purchase": str(refund.purchase_id), "purchase_refund": str(refund.pk)},
        )
        return _keyed(result)

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        refund = PurchaseRefund.objects.select_related("purchase").get(pk=movement.subject_id)
        # a refund found failed or canceled is `found_failed`: known not refunded
        return stripe_client().find_refund(
            payment_intent_id=refund.purchase.payment_intent_id, idempotency_key=movement.key
        )

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        return refunds.refund_succeeded(movement, result)

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        return refunds.refund_declined(movement, result)

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        return refunds.refund_waiting(movement, result)

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        refunds.refund_unknown(movement, reason)


# What a PaymentIntent (read, or carried by a webhook) says about each movement made on it.
INTENT_OUTCOMES = {AUTHORIZE: authorize_outcome, CAPTURE: capture_outcome, VOID: void_outcome}


def register_purchase_operations() -> None:
    for operation in (AuthorizePurchase(), CapturePurchase(), VoidPurchase(), RefundPurchase()):
        operation_register(operation)
