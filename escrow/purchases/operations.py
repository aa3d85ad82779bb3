"""The four Stripe calls of a purchase, as protocol operations (providers.protocol): how to call, how to look
up without moving money, and which hooks record each outcome. Registered by escrow.apps.

| operation          | subject        | key                                 | look-up                               |
|--------------------|----------------|-------------------------------------|---------------------------------------|
| purchase.authorize | Purchase       | purchase:{id}:authorize             | find_payment_intent (Search, our key) |
| purchase.capture   | Purchase       | purchase:{id}:capture[:n]           | retrieve the PaymentIntent            |
| purchase.void      | Purchase       | purchase:{id}:void[:n]              | retrieve the PaymentIntent            |
| purchase.refund    | PurchaseRefund | purchase:{purchase id}:refund:{id}  | find_refund (the intent's refunds)    |

A PaymentIntent is read for a hold, a capture or a void by providers.stripe.intents (the rule escrow deals
share): for a capture `succeeded` is done, `requires_capture` Absent (the protocol may send it again under
the same key), `canceled` found failed (the hook voids the purchase); for a void `canceled` is done,
`succeeded` found failed (the void hook posts the capture and refunds it). A refund found failed or canceled
is found failed; a refund found pending is `waiting`, never success.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from escrow.models import Purchase, PurchaseRefund
from escrow.purchases import capture_void, create, refunds
from escrow.purchases.common import AUTHORIZE, CAPTURE, REFUND, VOID, O
from providers.base import (
    Declined,
    LookupResult,
    Pending,
    ProviderResult,
    Succeeded,
)
from providers.models import MoneyMovement
from providers.protocol import FollowUps, Operation, operation_register
from providers.stripe.client import CancellationReason, stripe_client
from providers.stripe.intents import CAPTURE as CAPTURE_STEP
from providers.stripe.intents import VOID as VOID_STEP
from providers.stripe.intents import as_hold, find_hold, step_answer, step_state

_CANCELLATION_REASON: dict[str, CancellationReason] = {
    O.CANCELLED: "requested_by_customer",
    O.FAILED: "abandoned",
    O.TIMED_OUT: "abandoned",
}


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
        return as_hold(result)  # type: ignore[return-value]

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return find_hold(idempotency_key=movement.key, first_attempt_at=movement.first_sent_at)

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
        answer = client.capture(payment_intent_id=intent_id, idempotency_key=movement.key)
        return step_answer(answer, CAPTURE_STEP, lambda: client.retrieve_payment_intent(payment_intent_id=intent_id))

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return step_state(stripe_client().retrieve_payment_intent(payment_intent_id=_intent_id(movement)), CAPTURE_STEP)

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
        answer = client.cancel(payment_intent_id=intent_id, idempotency_key=movement.key, reason=reason)
        return step_answer(answer, VOID_STEP, lambda: client.retrieve_payment_intent(payment_intent_id=intent_id))

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return step_state(stripe_client().retrieve_payment_intent(payment_intent_id=_intent_id(movement)), VOID_STEP)

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
        return result

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
INTENT_OUTCOMES: dict[str, Callable[[LookupResult], LookupResult]] = {
    AUTHORIZE: as_hold,
    CAPTURE: partial(step_state, step=CAPTURE_STEP),
    VOID: partial(step_state, step=VOID_STEP),
}


def register_purchase_operations() -> None:
    for operation in (AuthorizePurchase(), CapturePurchase(), VoidPurchase(), RefundPurchase()):
        operation_register(operation)
