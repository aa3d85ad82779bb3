"""Buying a service: the catalogue price, the purchase row with its spend reservation, and the authorization.

Invariants:
- intent first: the purchase, its spend reservation (`spend_reserve`, reference `purchase:{id}`) and the
  `purchase.authorize` movement (key `purchase:{id}:authorize`) commit in one block before Stripe is called;
  a refused spend limit rolls all three back;
- once per (buyer, client key): a repeat returns the same purchase, other content is IdempotencyMismatch;
- the authorization's outcome moves the row once, from `authorizing` or `authorize_unknown`, inside the
  protocol's outcome transaction with the row locked: a hold (`requires_capture`) reserves it, or voids it at
  once (the void recorded in the same transaction) when the purchase was failed, cancelled or timed out while
  the answer was in doubt; a card that needs something we cannot do fails the purchase and voids the hold;
  known not authorized declines it and releases the spend. No money moves, so nothing is posted.
"""

from __future__ import annotations

import hashlib
import json

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import IdempotencyMismatch, InvalidRequest
from core.money import Money, MoneyError
from escrow.limits import spend_release, spend_reserve
from escrow.models import PurchasableService, Purchase, ServicePrice
from escrow.purchases.capture_void import capture_recorded, void_record
from escrow.purchases.common import AUTHORIZE, O, S, movements_run, purchase_locked, purchase_reload
from escrow.purchases.refunds import refund_rest_record
from providers.base import Declined, Pending, Succeeded
from providers.models import MoneyMovement
from providers.protocol import FollowUps, movement_record
from providers.stripe.intents import intent_status

AUTHORIZING_STATES = (S.AUTHORIZING, S.AUTHORIZE_UNKNOWN)


def service_price(*, service: PurchasableService, currency: str) -> Money:
    price = ServicePrice.objects.filter(service=service, currency=currency).first()
    if price is None:
        offered = sorted(service.prices.values_list("currency", flat=True))
        raise InvalidRequest(
            f"service {service.code} has no price in {currency}",
            user_message=f"{service.name} cannot be bought in {currency}.",
            action_required=f"Pay in one of: {', '.join(offered) or 'none (the service has no prices yet)'}.",
            details={"service": service.code, "currency": currency, "currencies": offered},
        )
    return Money(price.amount_minor, price.currency)


def purchase_request_hash(*, service_code: str, currency: str, amount_minor: int | None, payment_method: str) -> str:
    canonical = json.dumps([service_code, currency, amount_minor, payment_method], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def purchase_create(
    *,
    buyer: AbstractBaseUser,
    service_code: str,
    currency: str,
    payment_method: str,
    client_key: str,
    amount_minor: int | None = None,
) -> Purchase:
    """Buy a service: the purchase, its spend reservation and the authorization's intent commit, then the card
    is authorized (a hold). `amount_minor`, when given, must be the catalogue price (what the buyer was shown)."""
    purchase, movement = purchase_record(
        buyer=buyer,
        service_code=service_code,
        currency=currency,
        payment_method=payment_method,
        client_key=client_key,
        amount_minor=amount_minor,
    )
    movements_run([movement] if movement is not None else [])
    return purchase_reload(purchase.pk)


@transaction.atomic
def purchase_record(
    *,
    buyer: AbstractBaseUser,
    service_code: str,
    currency: str,
    payment_method: str,
    client_key: str,
    amount_minor: int | None,
) -> tuple[Purchase, MoneyMovement | None]:
    """The purchase and its authorization's intent, once per (buyer, client key); None for a repeat."""
    request_hash = purchase_request_hash(
        service_code=service_code, currency=currency, amount_minor=amount_minor, payment_method=payment_method
    )
    if not client_key or len(client_key) > 255:
        raise InvalidRequest(
            "a purchase needs the client's idempotency key (1 to 255 characters)",
            user_message="This purchase needs an idempotency key so it can never be charged twice.",
            action_required="Send a unique Idempotency-Key with the request.",
        )
    existing = Purchase.objects.filter(buyer=buyer, client_key=client_key).first()
    if existing is not None:
        return _same_purchase_or_mismatch(existing, request_hash), None
    price = _catalogue_price(service_code, currency, amount_minor)
    if not payment_method:
        raise InvalidRequest(
            "payment_method is required",
            user_message="No card was given for this purchase.",
            action_required="Choose a card and try again.",
            details={"field": "payment_method"},
        )
    service = PurchasableService.objects.get(code=service_code)
    try:
        with transaction.atomic():
            purchase = Purchase.objects.create(
                buyer=buyer,
                service=service,
                client_key=client_key,
                request_hash=request_hash,
                amount_minor=price.minor,
                currency=price.currency,
                payment_method=payment_method,
                deliver_by=timezone.now() + service.delivery_timeout,
            )
    except IntegrityError:  # the same key, concurrently: the first one wins
        existing = Purchase.objects.get(buyer=buyer, client_key=client_key)
        return _same_purchase_or_mismatch(existing, request_hash), None
    spend_reserve(user=buyer, amount=price, reference=purchase.spend_reference)
    movement = movement_record(operation=AUTHORIZE, subject_id=purchase.pk, key=purchase.authorize_key, amount=price)
    return purchase, movement


def _same_purchase_or_mismatch(existing: Purchase, request_hash: str) -> Purchase:
    if existing.request_hash != request_hash:
        raise IdempotencyMismatch(
            f"client key {existing.client_key!r} already started purchase {existing.pk} with other content",
            details={"purchase": existing.pk},
        )
    return existing


def _catalogue_price(service_code: str, currency: str, amount_minor: int | None) -> Money:
    service = PurchasableService.objects.filter(code=service_code, active=True).first()
    if service is None:
        raise InvalidRequest(
            f"no active service {service_code!r}",
            user_message="This service is not available.",
            action_required="Reload the catalogue and choose an available service.",
            details={"service": service_code},
        )
    try:
        price = service_price(service=service, currency=currency)
    except MoneyError as error:
        raise InvalidRequest(str(error), details={"currency": currency}) from error
    if amount_minor is not None and amount_minor != price.minor:
        raise InvalidRequest(
            f"amount {amount_minor} is not the price {price.minor} {currency} of {service_code}",
            user_message=f"The price of {service.name} is {price}, not what was shown.",
            action_required="Reload the price and confirm the purchase again.",
            details={"service": service_code, "price_minor": price.minor, "currency": currency},
        )
    return price


# --- the authorization's outcome (hooks of purchase.authorize, inside the protocol's outcome transaction) --------


def authorization_succeeded(movement: MoneyMovement, result: Succeeded) -> FollowUps:
    """Stripe has the PaymentIntent: usually a hold (`requires_capture`); follow it if it moved on already."""
    purchase = purchase_locked(movement.subject_id)
    if purchase.status not in AUTHORIZING_STATES:
        return None
    intent = {"payment_intent_id": result.reference, "failure_reason": ""}
    if result.status == "succeeded":  # captured already: the row follows Stripe, and the money is posted
        received = int(result.raw.get("amount_received") or purchase.amount_minor)
        capture_recorded(purchase, result.reference, received, sources=[purchase.status])
        if purchase.outcome in Purchase.MONEY_BACK_OUTCOMES:
            return refund_rest_record(purchase_pk=purchase.pk, reason=f"purchase {purchase.outcome}")
        return None
    if not purchase.outcome:
        Purchase.status_move(purchase.pk, S.RESERVED, sources=[purchase.status], **intent)
        return None
    # failed, cancelled or timed out while the answer was in doubt: void the hold, recorded with this outcome
    Purchase.status_move(purchase.pk, S.VOIDING, sources=[purchase.status], **intent)
    return [void_record(purchase)]


def authorization_waiting(movement: MoneyMovement, result: Pending) -> FollowUps:
    """The card needs something we cannot do here (e.g. `requires_action`): the purchase fails, the hold goes."""
    purchase = purchase_locked(movement.subject_id)
    if purchase.status not in AUTHORIZING_STATES:
        return None
    decided = {}
    if not purchase.outcome:
        decided = {"outcome": O.FAILED, "outcome_at": timezone.now(), "outcome_detail": f"card needs {result.status}"}
    fields = {"payment_intent_id": result.reference, "failure_reason": f"PaymentIntent is {result.status}"}
    Purchase.status_move(purchase.pk, S.VOIDING, sources=[purchase.status], **fields, **decided)
    return [void_record(purchase)]


def authorization_declined(movement: MoneyMovement, result: Declined) -> FollowUps:
    """Known not authorized (or the hold already released at Stripe): no money moved; the spend is released."""
    purchase = purchase_locked(movement.subject_id)
    if purchase.status not in AUTHORIZING_STATES:
        return None
    fields = {"failure_reason": result.reason[:500]}
    target = S.DECLINED
    if intent_status(result) == "canceled":  # released at Stripe before we heard of it
        target, fields["payment_intent_id"] = S.VOIDED, str(result.raw.get("id", ""))
    if Purchase.status_move(purchase.pk, target, sources=[purchase.status], **fields):
        spend_release(reference=purchase.spend_reference)
    return None


def authorization_unknown(movement: MoneyMovement, reason: str) -> None:
    Purchase.status_move(movement.subject_id, S.AUTHORIZE_UNKNOWN, sources=[S.AUTHORIZING], failure_reason=reason[:500])
