"""Capture on delivery, void when the purchase failed, was cancelled or timed out before capture.

Invariants:
- the capture or void is recorded as a `purchase.capture` / `purchase.void` movement (keys
  `purchase:{id}:capture`, `purchase:{id}:void`; a later attempt `...:2`, only after a known decline) in the
  same transaction as the decision that calls for it; the protocol sends it after commit;
- its outcome moves the row once, inside the protocol's outcome transaction with the row locked:
  captured (posted, below) or voided (spend released); an unknown outcome is `capture_unknown` /
  `void_unknown` and stays so until Stripe's PaymentIntent says otherwise;
- the row follows Stripe: a capture that finds the hold canceled voids the purchase (and alerts: delivered
  but never paid); a void that finds the PaymentIntent captured posts the capture and refunds it in full;
- known not done for another reason (refused before it ran, a circuit open): another attempt is recorded
  for the sweeper, at most MAX_ATTEMPTS in all, then a staff alert.

Ledger posting (nothing is posted until money moves; a void moves none):
- capture, key `purchase:{id}:capture:settle`: debit `provider:stripe:clearing:{cur}`, credit
  `platform:revenue:services:{cur}` with the amount Stripe received; and Stripe's processing fee by our fee
  rules (kept by Stripe, not returned on a refund): debit `platform:provider-fees:stripe:{cur}`, credit
  clearing; metadata provider_reference = the PaymentIntent id.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.money import Money
from escrow.limits import spend_release
from escrow.models import Purchase
from escrow.purchases.common import (
    CAPTURE,
    MAX_ATTEMPTS,
    VOID,
    S,
    ledger_accounts,
    purchase_alert,
    purchase_locked,
)
from escrow.purchases.refunds import refund_rest_record
from ledger.services import credit, debit, transaction_post
from providers.base import Declined, Succeeded
from providers.fees import processing_fee
from providers.models import MoneyMovement
from providers.protocol import FollowUps, movement_key, movement_record
from providers.stripe.intents import intent_status

CAPTURING_STATES = (S.CAPTURING, S.CAPTURE_UNKNOWN)
VOIDING_STATES = (S.VOIDING, S.VOID_UNKNOWN)


def _next_attempt(operation: str, purchase: Purchase, base_key: str) -> MoneyMovement:
    attempt = MoneyMovement.objects.filter(operation=operation, subject_id=purchase.pk).count() + 1
    return movement_record(
        operation=operation,
        subject_id=purchase.pk,
        key=movement_key(base_key, attempt),
        amount=Money(purchase.amount_minor, purchase.currency),
    )


def capture_record(purchase: Purchase) -> MoneyMovement:
    """The capture's intent (in the caller's transaction): the first attempt is `purchase:{id}:capture`."""
    return _next_attempt(CAPTURE, purchase, purchase.capture_key)


def void_record(purchase: Purchase) -> MoneyMovement:
    """The void's intent (in the caller's transaction): the first attempt is `purchase:{id}:void`."""
    return _next_attempt(VOID, purchase, purchase.void_key)


def _retry_later(purchase: Purchase, operation: str, base_key: str, title: str, reason: str) -> None:
    """Known not done: record another attempt (the sweeper sends it when due), or give up and alert staff."""
    attempts = MoneyMovement.objects.filter(operation=operation, subject_id=purchase.pk).count()
    if attempts < MAX_ATTEMPTS:
        _next_attempt(operation, purchase, base_key)
        return
    purchase_alert(purchase, f"{title} ({attempts} attempts)", reason)


def capture_recorded(purchase: Purchase, intent_id: str, received_minor: int, *, sources: Iterable[str]) -> bool:
    """On the locked row: captured and posted to the ledger, once (False if another writer moved it first)."""
    moved = Purchase.status_move(
        purchase.pk, S.CAPTURED, sources=sources, payment_intent_id=intent_id, captured_minor=received_minor
    )
    if not moved:
        return False
    accounts = ledger_accounts(purchase.currency)
    amount = Money(received_minor, purchase.currency)
    fee = processing_fee(provider="stripe", method="card", amount=amount)
    legs = [debit(accounts["clearing"], amount), credit(accounts["revenue"], amount)]
    if fee.minor:
        legs += [debit(accounts["fees"], fee), credit(accounts["clearing"], fee)]
    transaction_post(
        idempotency_key=f"{purchase.capture_key}:settle",
        kind="service_purchase_capture",
        legs=legs,
        description=f"Purchase {purchase.pk} captured",
        metadata={"provider": "stripe", "provider_reference": intent_id, "purchase": purchase.pk},
    )
    return True


def _no_longer_unknown(purchase: Purchase, in_flight: str, reason: str) -> None:
    """Known not done: a `*_unknown` row is in flight again (the next attempt), with the reason kept."""
    if purchase.status != in_flight:
        Purchase.status_move(purchase.pk, in_flight, sources=[purchase.status], failure_reason=reason[:500])
    else:
        Purchase.objects.filter(pk=purchase.pk).update(failure_reason=reason[:500])


def _money_back(purchase: Purchase) -> FollowUps:
    if purchase.outcome in Purchase.MONEY_BACK_OUTCOMES:  # failed or cancelled while the capture ran
        return refund_rest_record(purchase_pk=purchase.pk, reason=f"purchase {purchase.outcome}")
    return None


# --- hooks of purchase.capture -------------------------------------------------------------------------


def capture_succeeded(movement: MoneyMovement, result: Succeeded) -> FollowUps:
    purchase = purchase_locked(movement.subject_id)
    if purchase.status not in CAPTURING_STATES:
        return None
    received = int(result.raw.get("amount_received") or purchase.amount_minor)
    if not capture_recorded(purchase, result.reference, received, sources=[purchase.status]):
        return None
    return _money_back(purchase)


def capture_declined(movement: MoneyMovement, result: Declined) -> FollowUps:
    purchase = purchase_locked(movement.subject_id)
    if purchase.status not in CAPTURING_STATES:
        return None
    if intent_status(result) == "canceled":  # the hold is gone: no money will come
        if Purchase.status_move(purchase.pk, S.VOIDED, sources=[purchase.status], failure_reason=result.reason[:500]):
            spend_release(reference=purchase.spend_reference)
            detail = f"the authorization was canceled at Stripe: {result.reason}"
            purchase_alert(purchase, "delivered but never paid", detail)
        return None
    _no_longer_unknown(purchase, S.CAPTURING, result.reason)
    _retry_later(purchase, CAPTURE, purchase.capture_key, "Stripe refused to capture", result.reason)
    return None


def capture_unknown(movement: MoneyMovement, reason: str) -> None:
    Purchase.status_move(movement.subject_id, S.CAPTURE_UNKNOWN, sources=[S.CAPTURING], failure_reason=reason[:500])


# --- hooks of purchase.void ----------------------------------------------------------------------------


def void_succeeded(movement: MoneyMovement, result: Succeeded) -> FollowUps:
    purchase = purchase_locked(movement.subject_id)
    if purchase.status in VOIDING_STATES and Purchase.status_move(
        purchase.pk, S.VOIDED, sources=[purchase.status], failure_reason=""
    ):
        spend_release(reference=purchase.spend_reference)
    return None


def void_declined(movement: MoneyMovement, result: Declined) -> FollowUps:
    purchase = purchase_locked(movement.subject_id)
    if purchase.status not in VOIDING_STATES:
        return None
    if intent_status(result) == "succeeded":  # Stripe took the money: post it, then give it back
        received = int(result.raw.get("amount_received") or purchase.amount_minor)
        intent_id = str(result.raw.get("id") or purchase.payment_intent_id)
        if not capture_recorded(purchase, intent_id, received, sources=[purchase.status]):
            return None
        return _money_back(purchase)
    _no_longer_unknown(purchase, S.VOIDING, result.reason)
    _retry_later(purchase, VOID, purchase.void_key, "Stripe refused to void", result.reason)
    return None


def void_unknown(movement: MoneyMovement, reason: str) -> None:
    Purchase.status_move(movement.subject_id, S.VOID_UNKNOWN, sources=[S.VOIDING], failure_reason=reason[:500])
