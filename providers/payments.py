"""The payment orchestrator: route a customer payment, take it exactly once, refund it.

Every provider call is a money movement of the one protocol (providers.protocol): `payment.start`
(subject: the attempt), `payment.charge` (GCash: charge the source the customer authorized; subject:
the attempt) and `payment.refund` (subject: the refund). Their recipes are in
providers.payment_operations. Invariants:
- the payment row carries its provider, method and fees before the call (a webhook that arrives while
  the call is in flight finds all it needs), and each attempt is recorded with its movement in one
  transaction, so a process dying anywhere leaves a movement the sweeper follows up;
- fallback to the next routed provider only after a first-send decline (known not taken), recorded as
  the next attempt in the same transaction as that decline; never after an unknown outcome;
- statuses only move forward (`Payment.status_move`), so webhooks, the sweeper and the request race safely;
- a payment is posted to the ledger once, when it succeeds (key `payment:<ref>:settle`), and each refund
  once (`refund:<id>:settle`); a pending refund is not posted;
- succeeded plus in-flight refunds never exceed the amount: reserved on the locked payment row
  (providers.protocol.refunds) before any provider call;
- a registered spend guard (escrow's spend limits) counts the payment in the block that creates its
  row, before any provider call, and is told when the payment failed (no money moved).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Protocol

import structlog
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.errors import IdempotencyMismatch, InvalidStateTransition, NotFound
from core.money import Money
from core.permissions import require_permission
from ledger.services import credit, debit, transaction_post
from providers.accounts import chart_accounts
from providers.models import MoneyMovement, Payment, PaymentAttempt, Refund
from providers.protocol import movement_record, movement_run, movement_sync
from providers.protocol.refunds import RefundBook, refund_reserve
from providers.routing import Candidate, Choice, route_payment, routing_decision_record

log = structlog.get_logger(__name__)

REFUNDS = RefundBook(
    parent_model=Payment,
    refund_model=Refund,
    parent_field="payment",
    refundable_field="amount_minor",
    reserved_field="refunded_minor",
    refunded_field=None,
    operation="payment.refund",
    key=lambda refund: refund.idempotency_key,
    provider_of=lambda payment: payment.provider,
)


class SpendGuard(Protocol):
    """Counts a customer's payments against limits kept elsewhere; refuses by raising an AppError."""

    def reserve(self, *, user: AbstractBaseUser, amount: Money, reference: str) -> None: ...

    def release(self, *, reference: str) -> object: ...


_spend_guards: list[SpendGuard] = []


def register_spend_guard(guard: SpendGuard) -> None:
    """Apps built on providers (escrow's spend limits) count payments here; providers imports none of them."""
    if guard not in _spend_guards:
        _spend_guards.append(guard)


def _spend_reference(payment: Payment) -> str:
    return f"payment:{payment.reference}"


# --- initiating ---------------------------------------------------------------


def payment_initiate(
    *,
    user: AbstractBaseUser,
    amount: Money,
    client_key: str,
    explicit: Choice | None = None,
    preferred: Choice | None = None,
    payment_method_token: str = "",
) -> Payment:
    """Route and start a payment once per (user, client key); a repeat returns the same payment."""
    existing = Payment.objects.filter(user=user, client_key=client_key).first()
    if existing is not None:
        return _same_payment_or_mismatch(existing, amount)
    route = route_payment(amount=amount, explicit=explicit, preferred=preferred, user=user)
    reference = f"pay_{secrets.token_hex(12)}"
    decision = routing_decision_record(route=route, amount=amount, user=user, reference=reference)
    with transaction.atomic():
        payment = Payment.objects.create(
            reference=reference,
            user=user,
            client_key=client_key,
            amount_minor=amount.minor,
            currency=amount.currency,
            payment_method_token=payment_method_token,
            routing_decision=decision,
        )
        for guard in _spend_guards:  # a refusal rolls the payment row back: nothing was sent
            guard.reserve(user=user, amount=amount, reference=_spend_reference(payment))
        movement = attempt_record(payment, route.candidates[0])
    movement_run(movement)  # a decline records the next candidate's attempt, which runs after it
    payment.refresh_from_db()
    return payment


def _same_payment_or_mismatch(existing: Payment, amount: Money) -> Payment:
    if (existing.amount_minor, existing.currency) != (amount.minor, amount.currency):
        raise IdempotencyMismatch(
            f"client key {existing.client_key!r} already started payment {existing.reference} for another amount",
            details={"payment": existing.reference},
        )
    return existing


def attempt_record(payment: Payment, candidate: Candidate) -> MoneyMovement:
    """The intent of trying one provider: attempt row, the payment's provider and fees, the movement."""
    key = f"{payment.reference}:{candidate.provider}:{candidate.method}"
    attempt = PaymentAttempt.objects.create(
        payment=payment, provider=candidate.provider, method=candidate.method, idempotency_key=key
    )
    Payment.objects.filter(pk=payment.pk).update(
        provider=candidate.provider,
        method=candidate.method,
        fee_minor=candidate.fee_minor,
        platform_fee_minor=candidate.platform_fee_minor,
    )
    amount = Money(payment.amount_minor, payment.currency)
    return movement_record(
        operation="payment.start", subject_id=attempt.pk, key=key, amount=amount, provider=candidate.provider
    )


def next_candidate(payment: Payment) -> Candidate | None:
    """The routed provider after those already tried, from the recorded routing decision."""
    tried = payment.attempts.count()
    candidates = payment.routing_decision.candidates if payment.routing_decision else []
    return Candidate(**candidates[tried]) if tried < len(candidates) else None


# --- success, failure and the ledger -----------------------------------------------


def payment_mark_succeeded(*, payment_pk: int, provider_reference: str) -> bool:
    """Record that the provider took the money, and post it to the ledger, once."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_pk)
        if payment.status == Payment.Status.SUCCEEDED:
            return False
        if not Payment.status_move(payment.pk, Payment.Status.SUCCEEDED, provider_reference=provider_reference):
            raise InvalidStateTransition(f"payment {payment.reference} is {payment.status}, cannot succeed")
        payment.provider_reference = provider_reference  # the row was updated above; the posting names it
        _post_payment(payment)
    return True


def ledger_accounts(provider: str, currency: str) -> dict[str, str]:
    roles = ("clearing", "fees", "customer_payments", "payment_fee_revenue")
    return chart_accounts(currency, *roles, provider=provider)


def _post_payment(payment: Payment) -> None:
    """Money at the provider, owed for what the customer bought; fees to expense and revenue."""
    accounts = ledger_accounts(payment.provider, payment.currency)
    amount = Money(payment.amount_minor, payment.currency)
    fee, platform_fee = Money(payment.fee_minor, payment.currency), Money(payment.platform_fee_minor, payment.currency)
    legs = [debit(accounts["clearing"], amount), credit(accounts["customer_payments"], amount - platform_fee)]
    if platform_fee:
        legs.append(credit(accounts["payment_fee_revenue"], platform_fee))
    if fee:
        legs += [debit(accounts["fees"], fee), credit(accounts["clearing"], fee)]
    transaction_post(
        idempotency_key=f"payment:{payment.reference}:settle",
        kind="customer_payment",
        legs=legs,
        description=f"Payment {payment.reference} via {payment.provider}",
        metadata={
            "payment": payment.reference,
            "provider": payment.provider,
            "provider_reference": payment.provider_reference,
        },
    )


def payment_mark_failed(*, payment_pk: int, reason: str) -> bool:
    """Failed: known not taken by any provider, so the spend guards give the amount back (once)."""
    with transaction.atomic():
        payment = Payment.objects.get(pk=payment_pk)
        failed = Payment.status_move(payment.pk, Payment.Status.FAILED, failure_reason=reason[:255])
        if failed:
            for guard in _spend_guards:
                guard.release(reference=_spend_reference(payment))
    return failed


# --- finding out now (staff, or the status API with ?sync=true) ----------------------


def payment_sync(*, reference: str) -> Payment:
    """Ask the providers now about this payment's open movements (its attempts and refunds)."""
    payment = Payment.objects.filter(reference=reference).first()
    if payment is None:
        raise NotFound(f"payment {reference} does not exist", details={"payment": reference})
    subjects = {"payment.start": list(payment.attempts.values_list("pk", flat=True))}
    subjects["payment.charge"] = subjects["payment.start"]
    subjects["payment.refund"] = list(payment.refunds.values_list("pk", flat=True))
    for operation, subject_ids in subjects.items():
        open_movements = MoneyMovement.objects.filter(
            operation=operation, subject_id__in=subject_ids, status__in=MoneyMovement.OPEN
        )
        for movement_id in open_movements.values_list("pk", flat=True):
            movement_sync(movement_id=movement_id, force=True)
    payment.refresh_from_db()
    return payment


# --- refunds --------------------------------------------------------------------


def refund_request(*, reference: str, amount: Money | None, client_key: str, actor: AbstractBaseUser) -> Refund:
    """Refund part (or the rest) of a succeeded payment, once per client key (finance staff)."""
    require_permission(actor, "providers.add_refund")
    payment = Payment.objects.filter(reference=reference).only("pk").first()
    if payment is None:
        raise NotFound(f"payment {reference} does not exist", details={"payment": reference})
    digest = hashlib.sha256(client_key.encode()).hexdigest()[:24]
    refund, movement = refund_reserve(
        REFUNDS,
        parent_pk=payment.pk,
        amount=amount,
        client_key=client_key,
        check_parent=_refundable_payment,
        fields={"idempotency_key": f"{reference}:refund:{digest}"},
    )
    if movement is not None:
        movement_run(movement)
    refund.refresh_from_db()
    return refund


def _refundable_payment(payment: Payment) -> None:
    if payment.status != Payment.Status.SUCCEEDED:
        raise InvalidStateTransition(
            f"payment {payment.reference} is {payment.status}",
            user_message="Only a completed payment can be refunded.",
            action_required="Wait until the payment has succeeded, or cancel it instead.",
            details={"payment": payment.reference, "status": payment.status},
        )


def refund_post(refund: Refund, provider_reference: str) -> None:
    """The refund left through the provider: owed to the customer no more. Posted once."""
    payment = refund.payment
    accounts = ledger_accounts(payment.provider, payment.currency)
    amount = Money(refund.amount_minor, payment.currency)
    transaction_post(
        idempotency_key=f"refund:{refund.pk}:settle",
        kind="customer_refund",
        legs=[debit(accounts["customer_payments"], amount), credit(accounts["clearing"], amount)],
        description=f"Refund of payment {payment.reference}",
        metadata={
            "payment": payment.reference,
            "refund": refund.pk,
            "provider": payment.provider,
            "provider_reference": provider_reference,
        },
    )
