"""The payment orchestrator: route a customer payment, take it exactly once, refund it.

Invariants:
- every provider call follows DESIGN.md section 5: its attempt or refund row is
  committed first with a deterministic key, the call uses that key, the outcome
  is recorded after; a repeat of the call (retry, sync) is the same request;
- fallback to the next provider only after a `Declined` (known not taken);
  an `Unknown` stops the payment in `unknown` until a sync finds the truth;
- statuses only move forward (conditional updates), so webhooks, syncs and
  the initiating request can race;
- a payment is posted to the ledger once, when it succeeds (key
  `payment:<ref>:settle`), and each refund once (`refund:<id>:settle`);
- succeeded plus in-flight refunds never exceed the amount: they are
  reserved on the locked payment row before any provider call;
- a registered spend guard (escrow's spend limits) counts the payment in the
  block that creates its row, before any provider call, and is told when the
  payment failed (no money moved).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Protocol

import structlog
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core.errors import IdempotencyMismatch, InvalidRequest, InvalidStateTransition, NotFound
from core.money import Money
from core.permissions import require_permission
from ledger.services import credit, debit, platform_accounts, transaction_post
from providers.accounts import provider_accounts
from providers.base import Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.gateways import GATEWAYS, GCashGateway, Started, is_paid
from providers.models import Payment, PaymentAttempt, Refund
from providers.retry import call_provider
from providers.routing import Candidate, Choice, route_payment, routing_decision_record

log = structlog.get_logger(__name__)


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


SYNC_SCHEDULE = (timedelta(minutes=5), timedelta(hours=1), timedelta(days=1), timedelta(days=1), timedelta(days=1))


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
    for candidate in route.candidates:
        if _try_candidate(payment, candidate) != PaymentAttempt.Status.DECLINED:
            break
    else:
        _fail(payment, "every provider declined")
    payment.refresh_from_db()
    return payment


def _same_payment_or_mismatch(existing: Payment, amount: Money) -> Payment:
    if (existing.amount_minor, existing.currency) != (amount.minor, amount.currency):
        raise IdempotencyMismatch(
            f"client key {existing.client_key!r} already started payment {existing.reference} for another amount",
            details={"payment": existing.reference},
        )
    return existing


def _try_candidate(payment: Payment, candidate: Candidate) -> str:
    attempt = PaymentAttempt.objects.create(
        payment=payment,
        provider=candidate.provider,
        method=candidate.method,
        idempotency_key=f"{payment.reference}:{candidate.provider}:{candidate.method}",
    )  # committed before the call: the intent is on record whatever happens next
    gateway = GATEWAYS[candidate.provider]
    started: list[Started] = []

    def call() -> ProviderResult:
        started.append(gateway.start(payment, attempt))
        return started[-1].result

    result = call_provider(candidate.provider, "payments.start", call, idempotent=True)
    redirect = started[-1].redirect_url if started else ""
    Payment.objects.filter(pk=payment.pk).update(
        provider=candidate.provider,
        method=candidate.method,
        fee_minor=candidate.fee_minor,
        platform_fee_minor=candidate.platform_fee_minor,
    )
    return _record_attempt_outcome(payment, attempt, result, redirect)


def _record_attempt_outcome(payment: Payment, attempt: PaymentAttempt, result: ProviderResult, redirect: str) -> str:
    reference = getattr(result, "reference", "")
    if isinstance(result, Declined):
        _attempt_update(attempt, PaymentAttempt.Status.DECLINED, reason=result.reason)
        return PaymentAttempt.Status.DECLINED
    if isinstance(result, Unknown):
        _attempt_update(attempt, PaymentAttempt.Status.UNKNOWN, reason=result.reason)
        _transition(payment, Payment.Status.UNKNOWN, next_sync_at=timezone.now() + SYNC_SCHEDULE[0])
        log.warning("payment.unknown", payment=payment.reference, provider=attempt.provider, reason=result.reason)
        return PaymentAttempt.Status.UNKNOWN
    if is_paid(result):
        _attempt_update(attempt, PaymentAttempt.Status.SUCCEEDED, provider_reference=reference)
        payment_mark_succeeded(payment_pk=payment.pk, provider_reference=reference)
        return PaymentAttempt.Status.SUCCEEDED
    _attempt_update(attempt, PaymentAttempt.Status.REQUIRES_ACTION, provider_reference=reference)
    _transition(payment, Payment.Status.REQUIRES_ACTION, provider_reference=reference, redirect_url=redirect)
    return PaymentAttempt.Status.REQUIRES_ACTION


def _attempt_update(attempt: PaymentAttempt, status: str, **fields: str) -> None:
    PaymentAttempt.objects.filter(pk=attempt.pk).update(status=status, updated_at=timezone.now(), **fields)


def _transition(payment: Payment, target: str, **fields: object) -> bool:
    """Move forward only: a conditional update from any status that may become `target`."""
    sources = [status for status, targets in Payment.TRANSITIONS.items() if target in targets]
    return bool(
        Payment.objects.filter(pk=payment.pk, status__in=sources).update(
            status=target, updated_at=timezone.now(), **fields
        )
    )


# --- success and the ledger ---------------------------------------------------


def payment_mark_succeeded(*, payment_pk: int, provider_reference: str) -> bool:
    """Record that the provider took the money, and post it to the ledger, once."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_pk)
        if payment.status == Payment.Status.SUCCEEDED:
            return False
        if not _transition(payment, Payment.Status.SUCCEEDED, provider_reference=provider_reference, next_sync_at=None):
            raise InvalidStateTransition(f"payment {payment.reference} is {payment.status}, cannot succeed")
        payment.provider_reference = provider_reference  # the row was updated above; reconciliation reads it
        _post_payment(payment)
    return True


def _ledger_accounts(provider: str, currency: str) -> dict[str, str]:
    accounts = {
        **provider_accounts(provider, currency),
        "owed": (f"platform:customer-payments:{currency}", "liability", f"Customer payments ({currency})"),
        "revenue": (f"platform:revenue:payment-fees:{currency}", "revenue", f"Payment fee revenue ({currency})"),
    }
    return platform_accounts(currency=currency, accounts=accounts)


def _post_payment(payment: Payment) -> None:
    """Money at the provider, owed for what the customer bought; fees to expense and revenue."""
    accounts = _ledger_accounts(payment.provider, payment.currency)
    amount = Money(payment.amount_minor, payment.currency)
    fee, platform_fee = Money(payment.fee_minor, payment.currency), Money(payment.platform_fee_minor, payment.currency)
    legs = [debit(accounts["clearing"], amount), credit(accounts["owed"], amount - platform_fee)]
    if platform_fee:
        legs.append(credit(accounts["revenue"], platform_fee))
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
    return _fail(Payment.objects.get(pk=payment_pk), reason)


def _fail(payment: Payment, reason: str) -> bool:
    """Failed: known not taken by any provider, so the spend guards give the amount back (once)."""
    with transaction.atomic():
        failed = _transition(payment, Payment.Status.FAILED, failure_reason=reason[:255], next_sync_at=None)
        if failed:
            for guard in _spend_guards:
                guard.release(reference=_spend_reference(payment))
    return failed


# --- finding out: sync of unknown outcomes ---------------------------------------


def payment_sync(*, reference: str) -> Payment:
    """Ask the provider what happened to an unknown or waiting payment, by our key."""
    payment = Payment.objects.filter(reference=reference).first()
    if payment is None:
        raise NotFound(f"payment {reference} does not exist", details={"payment": reference})
    if payment.status not in (Payment.Status.UNKNOWN, Payment.Status.REQUIRES_ACTION):
        return payment
    attempt = payment.attempts.exclude(status=PaymentAttempt.Status.DECLINED).order_by("-id").first()
    if attempt is None:
        return payment
    result = GATEWAYS[attempt.provider].resolve(payment, attempt)
    if isinstance(result, Unknown | Declined) and payment.status == Payment.Status.UNKNOWN:
        _schedule_next_sync(payment, result)
    elif is_paid(result):
        payment_mark_succeeded(payment_pk=payment.pk, provider_reference=result.reference)
    elif isinstance(result, Pending | Succeeded) and payment.status == Payment.Status.UNKNOWN:
        _record_attempt_outcome(payment, attempt, result, "")
    payment.refresh_from_db()
    return payment


def _schedule_next_sync(payment: Payment, result: ProviderResult) -> None:
    attempts = payment.sync_attempts + 1
    if attempts >= len(SYNC_SCHEDULE):
        log.error("payment.unknown_needs_a_human", payment=payment.reference, sync_attempts=attempts)
        Payment.objects.filter(pk=payment.pk).update(sync_attempts=attempts, next_sync_at=None)
        return
    Payment.objects.filter(pk=payment.pk).update(
        sync_attempts=attempts, next_sync_at=timezone.now() + SYNC_SCHEDULE[attempts]
    )


def payments_sync_due() -> int:
    due = Payment.objects.filter(status=Payment.Status.UNKNOWN, next_sync_at__lte=timezone.now())
    synced = 0
    for reference in due.values_list("reference", flat=True)[:200]:
        payment_sync(reference=reference)
        synced += 1
    return synced


# --- refunds --------------------------------------------------------------------


def refund_request(*, reference: str, amount: Money | None, client_key: str, actor: AbstractBaseUser) -> Refund:
    """Refund part (or the rest) of a succeeded payment, once per client key (finance staff)."""
    refund, created = _refund_reserve(reference=reference, amount=amount, client_key=client_key, actor=actor)
    if not created or refund.status != Refund.Status.PENDING:
        return refund
    payment = refund.payment
    gateway = GATEWAYS[payment.provider]
    result = call_provider(  # retried only where the provider replays a keyed refund; else a sync looks it up
        payment.provider, "refunds.create", lambda: gateway.refund(payment, refund), idempotent=gateway.refunds_replay
    )
    return refund_record_outcome(refund_pk=refund.pk, result=result)


@transaction.atomic
def _refund_reserve(
    *, reference: str, amount: Money | None, client_key: str, actor: AbstractBaseUser
) -> tuple[Refund, bool]:
    require_permission(actor, "providers.add_refund")
    payment = Payment.objects.select_for_update().filter(reference=reference).first()
    if payment is None:
        raise NotFound(f"payment {reference} does not exist", details={"payment": reference})
    existing = payment.refunds.filter(client_key=client_key).first()
    if existing is not None:
        if amount is not None and (existing.amount_minor, payment.currency) != (amount.minor, amount.currency):
            raise IdempotencyMismatch(f"refund key {client_key!r} was used for another amount")
        return existing, False
    if payment.status != Payment.Status.SUCCEEDED:
        raise InvalidStateTransition(
            f"payment {reference} is {payment.status}",
            user_message="Only a completed payment can be refunded.",
            action_required="Wait until the payment has succeeded, or cancel it instead.",
            details={"payment": reference, "status": payment.status},
        )
    remaining = payment.amount_minor - payment.refunded_minor
    wanted = remaining if amount is None else amount.minor
    if (amount is not None and amount.currency != payment.currency) or not 0 < wanted <= remaining:
        raise InvalidRequest(
            f"refund of {wanted} exceeds the {remaining} {payment.currency} left to refund",
            user_message="The refund is more than what is left to refund on this payment.",
            action_required=f"Refund at most {Money(remaining, payment.currency)}.",
            details={"payment": reference, "refundable_minor": remaining, "currency": payment.currency},
        )
    Payment.objects.filter(pk=payment.pk).update(refunded_minor=F("refunded_minor") + wanted)
    key = hashlib.sha256(client_key.encode()).hexdigest()[:24]
    refund = Refund.objects.create(
        payment=payment, client_key=client_key, amount_minor=wanted, idempotency_key=f"{reference}:refund:{key}"
    )
    return refund, True


def refund_record_outcome(*, refund_pk: int, result: ProviderResult) -> Refund:
    refund = Refund.objects.select_related("payment").get(pk=refund_pk)
    if isinstance(result, Declined):
        with transaction.atomic():
            if Refund.objects.filter(pk=refund.pk, status__in=["pending", "unknown"]).update(
                status=Refund.Status.FAILED, failure_reason=result.reason[:255]
            ):  # release the reservation
                Payment.objects.filter(pk=refund.payment_id).update(
                    refunded_minor=F("refunded_minor") - refund.amount_minor
                )
    elif isinstance(result, Unknown):
        Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(status=Refund.Status.UNKNOWN)
    else:
        _refund_succeeded(refund, result)
    refund.refresh_from_db()
    return refund


def _refund_succeeded(refund: Refund, result: Succeeded | Pending) -> None:
    payment = refund.payment
    with transaction.atomic():
        if not Refund.objects.filter(pk=refund.pk, status__in=["pending", "unknown"]).update(
            status=Refund.Status.SUCCEEDED, provider_reference=result.reference
        ):
            return
        accounts = _ledger_accounts(payment.provider, payment.currency)
        amount = Money(refund.amount_minor, payment.currency)
        transaction_post(
            idempotency_key=f"refund:{refund.pk}:settle",
            kind="customer_refund",
            legs=[debit(accounts["owed"], amount), credit(accounts["clearing"], amount)],
            description=f"Refund of payment {payment.reference}",
            metadata={
                "payment": payment.reference,
                "refund": refund.pk,
                "provider": payment.provider,
                "provider_reference": result.reference,
            },
        )


def refunds_sync_unknown() -> int:
    synced = 0
    for refund in Refund.objects.filter(status=Refund.Status.UNKNOWN).select_related("payment")[:200]:
        result = GATEWAYS[refund.payment.provider].resolve_refund(refund.payment, refund)
        if not isinstance(result, Unknown):
            refund_record_outcome(refund_pk=refund.pk, result=result)
            synced += 1
    return synced


# --- customer completion at the provider (webhooks) -------------------------------


def gcash_source_chargeable(*, source_id: str) -> None:
    """The customer authorized a GCash source: charge it (keyed) and record the outcome."""
    attempt = PaymentAttempt.objects.select_related("payment").filter(provider_reference=source_id).first()
    if attempt is None:
        raise NotFound(f"no payment attempt for GCash source {source_id}")
    gateway = GATEWAYS["gcash"]
    assert isinstance(gateway, GCashGateway)
    result = gateway.charge(attempt.payment, attempt, source_id)
    if is_paid(result):
        payment_mark_succeeded(payment_pk=attempt.payment_id, provider_reference=result.reference)
    elif isinstance(result, Declined):
        payment_mark_failed(payment_pk=attempt.payment_id, reason=result.reason)
