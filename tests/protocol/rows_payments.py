"""The payment orchestrator's operations for the matrix: payment.start (a Stripe card), payment.charge (a
GCash source the customer authorized, at PayMongo) and payment.refund (of a Stripe card payment).

Each operation: `prepare_*` builds what the operation acts on through the public services, `trigger_*` makes
the one call that sends it, `moved_*` counts its money movements at the sandbox, `posted_*` says what the
ledger must show for it."""

from __future__ import annotations

import uuid

import httpx
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from core.money import Money
from providers.models import MoneyMovement, Payment, Refund
from providers.payments import payment_initiate, refund_request
from providers.protocol import engine
from providers.routing import Choice
from providers.sandbox import paymongo as paymongo_sandbox
from providers.sandbox import stripe as stripe_sandbox
from tests.protocol.harness import Case, Posting

AMOUNT = 10_000
REFUND = 4_000
CARD = Choice("stripe", "card")
GCASH_AMOUNT = 50_000


def _user(prefix: str, *codenames: str):
    user = get_user_model().objects.create_user(f"{prefix}-{uuid.uuid4().hex[:8]}", is_staff=bool(codenames))
    if codenames:
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return get_user_model().objects.get(pk=user.pk)


def _pay(case: Case, choice: Choice | None, **extra: str) -> Payment:
    """A card payment in USD, or (no choice) a PHP payment, which routing sends to GCash."""
    amount = Money(AMOUNT, "USD") if choice == CARD else Money(GCASH_AMOUNT, "PHP")
    return payment_initiate(
        user=case.data["buyer"], amount=amount, client_key=uuid.uuid4().hex, explicit=choice, **extra
    )


def _payment(case: Case) -> Payment:
    return Payment.objects.get(pk=case.data["payment"].pk)


def _stripe_fee(case: Case, intent_id: str) -> int:
    state = stripe_sandbox.state_of(case.sandbox)
    charge = state.payment_intents[intent_id]["latest_charge"]
    return sum(txn["fee"] for txn in state.balance_transactions.values() if txn["source"] == charge)


def _payment_posting(case: Case, payment: Payment, reference: str, received: int, fee: int) -> Posting:
    currency, provider = payment.currency, payment.provider
    return Posting(
        reference=reference,
        accounts={
            f"provider:{provider}:clearing:{currency}": received - fee,
            f"platform:customer-payments:{currency}": -(received - payment.platform_fee_minor),
            f"platform:revenue:payment-fees:{currency}": -payment.platform_fee_minor,
            f"platform:provider-fees:{provider}:{currency}": fee,
        },
    )


# --- payment.start: a card payment at Stripe ---------------------------------------------------------------


def prepare_start(case: Case) -> None:
    case.data["buyer"] = _user("buyer")


def trigger_start(case: Case) -> None:
    case.call(lambda: _pay(case, CARD, payment_method_token="pm_card_visa"))


def _intents_of(case: Case, movement: MoneyMovement) -> list[dict]:
    payment = Payment.objects.get(pk=_attempt_payment_pk(movement))
    state = stripe_sandbox.state_of(case.sandbox)
    return [pi for pi in state.payment_intents.values() if pi["metadata"].get("payment") == payment.reference]


def _attempt_payment_pk(movement: MoneyMovement) -> int:
    from providers.models import PaymentAttempt

    return PaymentAttempt.objects.get(pk=movement.subject_id).payment_id


def moved_start(case: Case, movement: MoneyMovement) -> int:
    return sum(1 for pi in _intents_of(case, movement) if pi["status"] == "succeeded")


def posted_start(case: Case, movement: MoneyMovement) -> list[Posting]:
    payment = Payment.objects.get(pk=_attempt_payment_pk(movement))
    (intent,) = [pi for pi in _intents_of(case, movement) if pi["status"] == "succeeded"]
    return [_payment_posting(case, payment, intent["id"], intent["amount_received"], _stripe_fee(case, intent["id"]))]


# --- payment.charge: GCash, charging the source the customer authorized ---------------------------------------


def prepare_charge(case: Case) -> None:
    case.data["buyer"] = _user("buyer")
    case.data["payment"] = payment = _pay(case, None)
    assert payment.provider == "gcash" and payment.status == Payment.Status.REQUIRES_ACTION, payment.status


def trigger_charge(case: Case) -> None:
    """The customer authorizes the source at GCash; the start's next look finds it chargeable and charges."""
    source_id = _payment(case).provider_reference
    response = httpx.post(f"{case.sandbox.url}/paymongo/_simulate/sources/{source_id}/authorize", json={})
    assert response.status_code == 200, response.text
    case.sandbox.webhooks.wait_idle()
    start = engine.movement_latest(operation="payment.start", subject_id=_payment(case).attempts.get().pk)
    if start is not None and start.status in MoneyMovement.OPEN:
        case.call(lambda: engine.movement_sync(movement_id=start.pk, force=True))


def _paymongo_payments(case: Case, movement: MoneyMovement) -> list:
    from providers.models import PaymentAttempt

    source_id = PaymentAttempt.objects.get(pk=movement.subject_id).provider_reference
    state = paymongo_sandbox.state_of(case.sandbox)
    return [p for p in state.payments.values() if p["attributes"]["source"]["id"] == source_id]


def moved_charge(case: Case, movement: MoneyMovement) -> int:
    return sum(1 for p in _paymongo_payments(case, movement) if p["attributes"]["status"] == "paid")


def posted_charge(case: Case, movement: MoneyMovement) -> list[Posting]:
    payment = Payment.objects.get(pk=_attempt_payment_pk(movement))
    (paid,) = [p for p in _paymongo_payments(case, movement) if p["attributes"]["status"] == "paid"]
    attributes = paid["attributes"]
    return [_payment_posting(case, payment, paid["id"], attributes["amount"], attributes["fee"])]


# --- payment.refund: part of a Stripe card payment -------------------------------------------------------------


def prepare_refund(case: Case) -> None:
    case.data["buyer"] = _user("buyer")
    case.data["finance"] = _user("finance", "add_refund")
    case.data["payment"] = payment = _pay(case, CARD, payment_method_token="pm_card_visa")
    assert payment.status == Payment.Status.SUCCEEDED, payment.status


def trigger_refund(case: Case) -> None:
    kwargs = dict(
        reference=case.data["payment"].reference,
        amount=Money(REFUND, "USD"),
        client_key=uuid.uuid4().hex,
        actor=case.data["finance"],
    )
    case.call(lambda: refund_request(**kwargs))


def _refunds_of(case: Case, movement: MoneyMovement) -> list[dict]:
    payment = Refund.objects.select_related("payment").get(pk=movement.subject_id).payment
    state = stripe_sandbox.state_of(case.sandbox)
    return [r for r in state.refunds.values() if r["payment_intent"] == payment.provider_reference]


def moved_refund(case: Case, movement: MoneyMovement) -> int:
    return sum(1 for r in _refunds_of(case, movement) if r["status"] == "succeeded")


def posted_refund(case: Case, movement: MoneyMovement) -> list[Posting]:
    payment = Refund.objects.select_related("payment").get(pk=movement.subject_id).payment
    (refund,) = [r for r in _refunds_of(case, movement) if r["status"] == "succeeded"]
    currency = payment.currency
    return [
        Posting(
            reference=refund["id"],
            accounts={
                f"platform:customer-payments:{currency}": refund["amount"],
                f"provider:{payment.provider}:clearing:{currency}": -refund["amount"],
            },
        )
    ]
