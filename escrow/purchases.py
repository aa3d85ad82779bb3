"""Purchases of services: authorize, capture on delivery, void or refund automatically. Every write is here.

Invariants:
- intent first (DESIGN.md section 5): the purchase row, with its spend-limit reservation, commits before the
  authorization call; every provider call uses a key derived from the row, never new on retry:
  `purchase:{id}:authorize` (PaymentIntent, manual capture), `purchase:{id}:capture`, `purchase:{id}:void`
  (cancel the PaymentIntent) and `purchase:{id}:refund:{refund id}`;
- `outcome` (delivered, failed, cancelled, timed out) is decided once, on the locked row, by a conditional
  update from ""; `status` only moves along `Purchase.TRANSITIONS`, by conditional updates, so delivery,
  cancel, the timeout sweeper, syncs and webhooks race with exactly one winner;
- an Unknown outcome is a status of its own (`*_unknown`); `purchase_sync` resolves it by asking Stripe
  (the PaymentIntent by id, or a replay of the keyed create) and re-sends only under the same key;
- a purchase whose outcome is failed, cancelled or timed out ends with its money given back: the
  authorization voided, or what was captured refunded in full; `purchase_sync` finishes any that a crash
  or an unknown answer left behind, and `reconcile_refunds` finds them;
- succeeded plus in-flight refunds never exceed what was captured: each refund reserves its amount on the
  locked purchase row before the provider call; a declined refund gives its reservation back;
- spend limits: the authorized amount is counted (`spend_reserve`, reference `purchase:{id}`) in the block
  that creates the row, and released when the authorization is declined or voided.

Ledger postings (nothing is posted until money moves; a void moves none):
- capture, key `purchase:{id}:capture:settle`: debit `provider:stripe:clearing:{cur}`,
  credit `platform:revenue:services:{cur}`; and Stripe's processing fee by our fee rules (Stripe keeps
  it; it is not returned on a refund): debit `platform:provider-fees:stripe:{cur}`, credit clearing;
  metadata provider_reference = the PaymentIntent id;
- refund, key `purchase:{id}:refund:{refund id}:settle`: debit `platform:revenue:services:{cur}`,
  credit `provider:stripe:clearing:{cur}`, metadata provider_reference = the refund id (`re_...`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from core.alerts import alert_raise
from core.errors import IdempotencyMismatch, InvalidRequest, InvalidStateTransition, NotFound, PermissionDenied
from core.models import Alert
from core.money import Money, MoneyError
from core.permissions import require_permission
from core.services import audit_record
from escrow.limits import spend_release, spend_reserve
from escrow.models import PurchasableService, Purchase, PurchaseRefund, ServicePrice
from ledger.services import credit, debit, platform_accounts, transaction_post
from providers.accounts import provider_accounts
from providers.base import Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.fees import processing_fee
from providers.retry import call_provider
from providers.stripe.client import stripe_client

log = structlog.get_logger(__name__)

S = Purchase.Status
O = Purchase.Outcome  # noqa: E741
SYNC_SCHEDULE = (timedelta(minutes=5), timedelta(hours=1), timedelta(days=1), timedelta(days=1))
DELIVER_PERMISSION = "escrow.deliver_purchase"
REFUND_PERMISSION = "escrow.refund_purchase"
SYNC_PERMISSION = "escrow.sync_purchase"
_CANCELLATION_REASON = {O.CANCELLED: "requested_by_customer", O.FAILED: "abandoned", O.TIMED_OUT: "abandoned"}


def _stale_after() -> timedelta:
    """How long an in-flight row (intent committed, answer not recorded) waits before a sync takes it over."""
    return timedelta(seconds=getattr(settings, "PURCHASE_STALE_AFTER_SECONDS", 120))


def _transition(purchase_pk: int, sources: set[str] | tuple[str, ...], target: str, **fields: Any) -> bool:
    """Move along TRANSITIONS by a conditional update; False when another writer moved it first."""
    allowed = [source for source in sources if target in Purchase.TRANSITIONS[source]]
    return bool(
        Purchase.objects.filter(pk=purchase_pk, status__in=allowed).update(
            status=target, updated_at=timezone.now(), **fields
        )
    )


def _reload(purchase_pk: int) -> Purchase:
    return Purchase.objects.select_related("service").get(pk=purchase_pk)


def _locked(purchase_pk: int) -> Purchase:
    purchase = Purchase.objects.select_for_update().filter(pk=purchase_pk).first()
    if purchase is None:
        raise NotFound(f"purchase {purchase_pk} does not exist", details={"purchase": purchase_pk})
    return purchase


# --- catalogue ---------------------------------------------------------------------------------


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


# --- buying: reserve (authorize) ---------------------------------------------------------------


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
    """Buy a service: the purchase and its spend reservation commit, then the card is authorized (a hold).

    Once per (buyer, client key): a repeat returns the same purchase, other content is IdempotencyMismatch.
    `amount_minor`, when given, must be the catalogue price (the client confirms what it showed the buyer).
    """
    purchase, created = _purchase_record(
        buyer=buyer,
        service_code=service_code,
        currency=currency,
        payment_method=payment_method,
        client_key=client_key,
        amount_minor=amount_minor,
    )
    if created:
        result = call_provider(
            "stripe", "purchases.authorize", lambda: _send_authorize(purchase), idempotent=True
        )  # a retry is a keyed replay: Stripe answers with the first PaymentIntent
        _record_authorization(purchase.pk, result, syncing=False)
    return _reload(purchase.pk)


@transaction.atomic
def _purchase_record(
    *,
    buyer: AbstractBaseUser,
    service_code: str,
    currency: str,
    payment_method: str,
    client_key: str,
    amount_minor: int | None,
) -> tuple[Purchase, bool]:
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
        return _same_purchase_or_mismatch(existing, request_hash), False
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
        return _same_purchase_or_mismatch(existing, request_hash), False
    spend_reserve(user=buyer, amount=price, reference=purchase.spend_reference)
    return purchase, True


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


def _intent_request(purchase: Purchase) -> dict[str, Any]:
    return {
        "amount_minor": purchase.amount_minor,
        "currency": purchase.currency,
        "payment_method": purchase.payment_method,
        "idempotency_key": purchase.authorize_key,
        "capture": "manual",
        "metadata": {"purchase": str(purchase.pk), "service": purchase.service.code},
    }


def _send_authorize(purchase: Purchase) -> ProviderResult:
    return stripe_client().create_payment_intent(**_intent_request(purchase))


def _replay_authorize(purchase: Purchase) -> ProviderResult:
    return stripe_client().sync_payment_intent(first_attempt_at=purchase.created_at, **_intent_request(purchase))


def _record_authorization(
    purchase_pk: int,
    result: ProviderResult,
    *,
    syncing: bool,
    sources: tuple[str, ...] = (S.AUTHORIZING, S.AUTHORIZE_UNKNOWN),
) -> None:
    """Record the authorization's outcome; a purchase failed or cancelled meanwhile is voided right away."""
    if isinstance(result, Unknown) or (isinstance(result, Declined) and result.code == "idempotency_error"):
        moved = _transition(purchase_pk, {S.AUTHORIZING}, S.AUTHORIZE_UNKNOWN, failure_reason=result.reason[:500])
        _schedule_sync(purchase_pk, result.reason, first=moved)
        return
    if isinstance(result, Declined):
        if syncing and result.retryable:  # not sent now says nothing about the first attempt
            _schedule_sync(purchase_pk, result.reason)
            return
        with transaction.atomic():
            fields = {"failure_reason": result.reason[:500], "next_sync_at": None}
            if _transition(purchase_pk, sources, S.DECLINED, **fields) or _transition(
                purchase_pk, sources, S.VOIDED, **fields
            ):  # never authorized: no money moved
                spend_release(reference=f"purchase:{purchase_pk}")
        return
    _record_intent(purchase_pk, result, sources=sources)


def _record_intent(purchase_pk: int, result: Succeeded | Pending, *, sources: tuple[str, ...]) -> None:
    """A PaymentIntent as Stripe has it now, for a purchase in one of `sources`; then the next step."""
    with transaction.atomic():
        purchase = _locked(purchase_pk)
        if purchase.status in sources:
            _apply_intent(purchase, result, sources)
    purchase = _reload(purchase_pk)
    if purchase.status == S.VOIDING and purchase.payment_intent_id:
        _void(purchase_pk)
    elif purchase.status == S.CAPTURED and purchase.outcome in Purchase.MONEY_BACK_OUTCOMES:
        _refund_rest(purchase_pk)  # failed or cancelled while the capture ran


def _apply_intent(purchase: Purchase, result: Succeeded | Pending, sources: tuple[str, ...]) -> None:
    intent_id, intent_status = result.reference, result.status
    fields: dict[str, Any] = {"payment_intent_id": intent_id, "next_sync_at": None, "sync_attempts": 0}
    if intent_status == "succeeded":
        _capture_recorded(purchase, intent_id, int(result.raw.get("amount_received") or purchase.amount_minor))
    elif intent_status == "canceled":
        if _transition(purchase.pk, sources, S.VOIDED, **fields):
            spend_release(reference=purchase.spend_reference)
    elif purchase.status in (S.VOIDING, S.VOID_UNKNOWN):  # the authorization found for a void in waiting
        Purchase.objects.filter(pk=purchase.pk).update(updated_at=timezone.now(), **fields)
    elif intent_status == "requires_capture" and not purchase.outcome:
        _transition(purchase.pk, sources, S.RESERVED, **fields)
    else:  # decided meanwhile, or the card needs something we cannot do here: release the hold
        if intent_status != "requires_capture" and not purchase.outcome:
            fields.update(outcome=O.FAILED, outcome_at=timezone.now(), outcome_detail=f"card needs {intent_status}")
        _transition(purchase.pk, sources, S.VOIDING, **fields)


# --- delivery, cancel, timeout: deciding the outcome once -----------------------------------------


def _require_deliverer(actor: AbstractBaseUser) -> None:
    """A service account or staff holding escrow.deliver_purchase (service accounts need not be staff)."""
    if not (actor.is_active and actor.has_perm(DELIVER_PERMISSION)):
        raise PermissionDenied(
            f"{actor.get_username()} lacks {DELIVER_PERMISSION}",
            user_message="Only the service back end can report a delivery.",
            action_required=f"Use a service account holding the permission {DELIVER_PERMISSION!r}.",
            details={"permission": DELIVER_PERMISSION},
        )


def _already(purchase: Purchase, wanted: str) -> InvalidStateTransition:
    return InvalidStateTransition(
        f"purchase {purchase.pk} is already {purchase.outcome or purchase.status}; cannot become {wanted}",
        user_message=f"This purchase is already {(purchase.outcome or purchase.status).replace('_', ' ')}.",
        action_required="Reload the purchase to see its current state; any money due back is returned automatically.",
        details={"purchase": purchase.pk, "status": purchase.status, "outcome": purchase.outcome},
    )


def _decide(purchase: Purchase, outcome: str, detail: str) -> str:
    """Set the outcome on the locked row (conditional update from the state read); returns the step to run next."""
    decided = {"outcome": outcome, "outcome_detail": detail[:500], "outcome_at": timezone.now()}
    if purchase.status == S.RESERVED:
        target = S.CAPTURING if outcome == O.DELIVERED else S.VOIDING
        if not _transition(purchase.pk, {S.RESERVED}, target, **decided):
            raise _already(purchase, outcome)
        return "capture" if outcome == O.DELIVERED else "void"
    updated = Purchase.objects.filter(pk=purchase.pk, status=purchase.status, outcome=purchase.outcome).update(
        updated_at=timezone.now(), **decided
    )
    if not updated:
        raise _already(purchase, outcome)
    return "refund" if purchase.status == S.CAPTURED else ""


def purchase_report_delivery(*, purchase_id: int, actor: AbstractBaseUser, outcome: str, detail: str = "") -> Purchase:
    """The service back end reports delivery: delivered captures the hold; failed voids it or refunds."""
    _require_deliverer(actor)
    if outcome not in (O.DELIVERED, O.FAILED):
        raise InvalidRequest(
            f"outcome {outcome!r} is not delivered or failed",
            user_message=f"{outcome!r} is not a delivery outcome.",
            action_required='Report "delivered" or "failed".',
            details={"outcome": outcome, "allowed": [O.DELIVERED, O.FAILED]},
        )
    with transaction.atomic():
        purchase = _locked(purchase_id)
        if purchase.buyer_id == actor.pk:
            raise PermissionDenied(
                f"{actor.get_username()} bought purchase {purchase_id} and cannot confirm its delivery",
                user_message="A buyer cannot confirm the delivery of their own purchase.",
                action_required="The service back end reports the delivery.",
                details={"purchase": purchase_id},
            )
        if purchase.outcome == outcome:
            return _reload(purchase_id)  # the same report again: nothing more to do
        _check_reportable(purchase, outcome)
        before = {"status": purchase.status, "outcome": purchase.outcome}
        step = _decide(purchase, outcome, detail)
        audit_record(
            actor=actor, action=f"escrow.purchase.{outcome}", obj=purchase, before=before, after={"detail": detail}
        )
    return _run_step(purchase_id, step)


def _check_reportable(purchase: Purchase, outcome: str) -> None:
    if outcome == O.DELIVERED and (purchase.outcome or purchase.status != S.RESERVED):
        if purchase.status in (S.AUTHORIZING, S.AUTHORIZE_UNKNOWN) and not purchase.outcome:
            raise InvalidStateTransition(
                f"purchase {purchase.pk} is not authorized yet ({purchase.status})",
                user_message="The payment for this purchase is not confirmed yet.",
                action_required="Deliver only once the purchase is reserved; report again in a minute.",
                details={"purchase": purchase.pk, "status": purchase.status},
            )
        raise _already(purchase, outcome)
    failing_after_delivery = purchase.outcome == O.DELIVERED and purchase.status in (
        S.CAPTURING,
        S.CAPTURE_UNKNOWN,
        S.CAPTURED,
    )
    if outcome == O.FAILED and not failing_after_delivery:
        open_ = not purchase.outcome and purchase.status in (S.RESERVED, S.AUTHORIZING, S.AUTHORIZE_UNKNOWN)
        if not open_:
            raise _already(purchase, outcome)


def purchase_cancel(*, purchase_id: int, actor: AbstractBaseUser) -> Purchase:
    """The buyer cancels a purchase not yet delivered (voided); finance staff may also cancel a delivered
    one, which refunds what is left of it."""
    is_finance = getattr(actor, "is_staff", False) and actor.has_perm(REFUND_PERMISSION)
    with transaction.atomic():
        purchase = _locked(purchase_id)
        if purchase.buyer_id != actor.pk and not is_finance:
            raise NotFound(f"purchase {purchase_id} does not exist", details={"purchase": purchase_id})
        if purchase.outcome == O.CANCELLED:
            return _reload(purchase_id)
        delivered = purchase.outcome == O.DELIVERED and purchase.status == S.CAPTURED
        open_ = not purchase.outcome and purchase.status in (S.RESERVED, S.AUTHORIZING, S.AUTHORIZE_UNKNOWN)
        if not (open_ or (delivered and is_finance)):
            raise _already(purchase, O.CANCELLED)
        before = {"status": purchase.status, "outcome": purchase.outcome}
        step = _decide(purchase, O.CANCELLED, f"cancelled by {actor.get_username()}")
        audit_record(actor=actor, action="escrow.purchase.cancel", obj=purchase, before=before)
    return _run_step(purchase_id, step, actor=actor if is_finance else None)


def purchase_time_out(*, purchase_id: int, now: datetime | None = None) -> bool:
    """Void a purchase not delivered by its deadline (the sweeper's work); False if it is not due."""
    now = now or timezone.now()
    with transaction.atomic():
        purchase = _locked(purchase_id)
        due = not purchase.outcome and purchase.deliver_by <= now
        if not (due and purchase.status in (S.RESERVED, S.AUTHORIZING, S.AUTHORIZE_UNKNOWN)):
            return False
        step = _decide(purchase, O.TIMED_OUT, f"not delivered by {purchase.deliver_by.isoformat()}")
        audit_record(actor=None, action="escrow.purchase.timeout", obj=purchase, before={"status": purchase.status})
    _run_step(purchase_id, step)
    return True


def purchases_time_out_due(*, limit: int = 200) -> int:
    due = Purchase.objects.filter(
        outcome=O.NONE, status__in=(S.RESERVED, S.AUTHORIZING, S.AUTHORIZE_UNKNOWN), deliver_by__lte=timezone.now()
    ).order_by("deliver_by")
    return sum(purchase_time_out(purchase_id=pk) for pk in due.values_list("pk", flat=True)[:limit])


def _run_step(purchase_id: int, step: str, actor: AbstractBaseUser | None = None) -> Purchase:
    if step == "capture":
        _capture(purchase_id)
    elif step == "void":
        _void(purchase_id)
    elif step == "refund":
        _refund_rest(purchase_id, actor=actor)
    return _reload(purchase_id)


# --- capture -----------------------------------------------------------------------------------


def _ledger_accounts(currency: str) -> dict[str, str]:
    accounts = {
        **provider_accounts("stripe", currency),
        "revenue": (f"platform:revenue:services:{currency}", "revenue", f"Service revenue ({currency})"),
    }
    return platform_accounts(currency=currency, accounts=accounts)


def _capture(purchase_id: int) -> None:
    purchase = _reload(purchase_id)

    def send() -> ProviderResult:
        return stripe_client().capture(
            payment_intent_id=purchase.payment_intent_id, idempotency_key=purchase.capture_key
        )

    _record_capture(purchase_id, call_provider("stripe", "purchases.capture", send, idempotent=True))


def _record_capture(purchase_id: int, result: ProviderResult) -> None:
    if isinstance(result, Succeeded | Pending) and result.status == "succeeded":
        _record_intent(purchase_id, result, sources=(S.CAPTURING, S.CAPTURE_UNKNOWN))
    elif isinstance(result, Unknown) or (isinstance(result, Declined) and result.retryable):
        _transition(purchase_id, {S.CAPTURING}, S.CAPTURE_UNKNOWN, failure_reason=result.reason[:500])
        _schedule_sync(purchase_id, result.reason)
    else:  # refused, or an answer that is not a capture: ask Stripe what the PaymentIntent is now
        _resolve_by_intent(purchase_id, reason=getattr(result, "reason", f"capture answered {result}"))


def _capture_recorded(purchase: Purchase, intent_id: str, received_minor: int) -> None:
    """Inside the caller's atomic block, on the locked row: captured, posted to the ledger, once."""
    moved = _transition(
        purchase.pk,
        (purchase.status,),
        S.CAPTURED,
        payment_intent_id=intent_id,
        captured_minor=received_minor,
        next_sync_at=None,
        sync_attempts=0,
    )
    if not moved:
        return
    accounts = _ledger_accounts(purchase.currency)
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


# --- void ----------------------------------------------------------------------------------------


def _void(purchase_id: int) -> None:
    purchase = _reload(purchase_id)
    if not purchase.payment_intent_id:  # a crash left it before the authorization was known: find it first
        voiding = (S.VOIDING, S.VOID_UNKNOWN)
        _record_authorization(purchase_id, _replay_authorize(purchase), syncing=True, sources=voiding)
        return  # recording the PaymentIntent sends the void
    reason = _CANCELLATION_REASON.get(purchase.outcome, "abandoned")

    def send() -> ProviderResult:
        return stripe_client().cancel(
            payment_intent_id=purchase.payment_intent_id,
            idempotency_key=purchase.void_key,
            reason=reason,  # type: ignore[arg-type]
        )

    _record_void(purchase_id, call_provider("stripe", "purchases.void", send, idempotent=True))


def _record_void(purchase_id: int, result: ProviderResult) -> None:
    if isinstance(result, Succeeded | Pending) and result.status == "canceled":
        with transaction.atomic():
            if _transition(purchase_id, (S.VOIDING, S.VOID_UNKNOWN), S.VOIDED, next_sync_at=None, sync_attempts=0):
                spend_release(reference=f"purchase:{purchase_id}")
    elif isinstance(result, Unknown) or (isinstance(result, Declined) and result.retryable):
        _transition(purchase_id, {S.VOIDING}, S.VOID_UNKNOWN, failure_reason=result.reason[:500])
        _schedule_sync(purchase_id, result.reason)
    else:
        _resolve_by_intent(purchase_id, reason=getattr(result, "reason", f"void answered {result}"))


def _resolve_by_intent(purchase_id: int, *, reason: str) -> None:
    """Stripe refused a capture or void: the PaymentIntent itself says what is true now."""
    purchase = _reload(purchase_id)
    client = stripe_client()
    found = client.retrieve_payment_intent(payment_intent_id=purchase.payment_intent_id)
    if not isinstance(found, Succeeded | Pending):
        _schedule_sync(purchase_id, f"{reason}; retrieving the PaymentIntent: {getattr(found, 'reason', found)}")
        return
    if found.status in ("succeeded", "canceled"):
        _record_intent(purchase_id, found, sources=(purchase.status,))
        if found.status == "canceled" and purchase.outcome == O.DELIVERED:
            _alert(purchase, "delivered but never paid", f"the authorization was canceled at Stripe: {reason}")
        return
    _alert(purchase, f"Stripe refused to {'capture' if purchase.outcome == O.DELIVERED else 'void'}", reason)
    _schedule_sync(purchase_id, reason)


def _alert(purchase: Purchase, title: str, detail: str) -> None:
    alert_raise(
        key=f"escrow:purchase:{purchase.pk}",
        title=f"Purchase {purchase.pk}: {title}",
        detail=detail,
        action_required="Look the PaymentIntent up in Stripe and settle the purchase by hand; see its audit log.",
        severity=Alert.Severity.CRITICAL,
    )


# --- refunds -------------------------------------------------------------------------------------


def purchase_refund(
    *, purchase_id: int, amount: Money | None, actor: AbstractBaseUser, client_key: str, reason: str = ""
) -> PurchaseRefund:
    """Finance staff: refund part (or, with no amount, the rest) of a captured purchase, once per client key."""
    require_permission(actor, REFUND_PERMISSION)
    refund, created = _refund_reserve(
        purchase_id=purchase_id, amount=amount, client_key=client_key, requested_by=actor, reason=reason
    )
    if created:
        _refund_send(refund.pk)
    refund.refresh_from_db()
    return refund


@transaction.atomic
def _refund_reserve(
    *,
    purchase_id: int,
    amount: Money | None,
    client_key: str,
    requested_by: AbstractBaseUser | None,
    reason: str,
    quiet: bool = False,
) -> tuple[PurchaseRefund, bool]:
    purchase = _locked(purchase_id)
    existing = purchase.refunds.filter(client_key=client_key).first()
    if existing is not None:
        if amount is not None and (existing.amount_minor, purchase.currency) != (amount.minor, amount.currency):
            raise IdempotencyMismatch(f"refund key {client_key!r} was used for another amount")
        return existing, False
    if purchase.status != S.CAPTURED:
        raise InvalidStateTransition(
            f"purchase {purchase_id} is {purchase.status}",
            user_message="Only a captured purchase can be refunded; nothing else has taken money.",
            action_required="Cancel the purchase instead if it is not delivered yet; reload it to see its state.",
            details={"purchase": purchase_id, "status": purchase.status},
        )
    remaining = purchase.captured_minor - purchase.refund_reserved_minor
    wanted = remaining if amount is None else amount.minor
    if (amount is not None and amount.currency != purchase.currency) or not 0 < wanted <= remaining:
        raise InvalidRequest(
            f"refund of {wanted} {amount.currency if amount else purchase.currency} exceeds the {remaining} "
            f"{purchase.currency} left to refund",
            user_message="The refund is more than what is left to refund on this purchase (or in another currency).",
            action_required=f"Refund at most {Money(max(remaining, 0), purchase.currency)}.",
            details={"purchase": purchase_id, "refundable_minor": remaining, "currency": purchase.currency},
        )
    Purchase.objects.filter(pk=purchase.pk).update(
        refund_reserved_minor=F("refund_reserved_minor") + wanted, updated_at=timezone.now()
    )
    refund = PurchaseRefund.objects.create(
        purchase=purchase, client_key=client_key, amount_minor=wanted, requested_by=requested_by, reason=reason[:255]
    )
    audit_record(
        actor=requested_by,
        action="escrow.purchase.refund",
        obj=purchase,
        after={"refund": refund.pk, "amount_minor": wanted, "currency": purchase.currency, "reason": reason},
    )
    return refund, True


def _refund_rest(purchase_id: int, actor: AbstractBaseUser | None = None) -> PurchaseRefund | None:
    """Refund whatever is neither refunded nor being refunded; a deterministic key per attempt."""
    purchase = _reload(purchase_id)
    if purchase.status != S.CAPTURED or purchase.refund_reserved_minor >= purchase.captured_minor:
        return None
    failed = purchase.refunds.filter(status=PurchaseRefund.Status.FAILED).count()
    try:
        refund, created = _refund_reserve(
            purchase_id=purchase_id,
            amount=None,
            client_key=f"rest:{failed}",
            requested_by=actor,
            reason=f"purchase {purchase.outcome}",
        )
    except (InvalidRequest, InvalidStateTransition):
        return None  # another writer refunded or reserved the rest first
    if created or refund.status == PurchaseRefund.Status.PENDING:
        _refund_send(refund.pk)
    refund.refresh_from_db()
    return refund


def _refund_request(refund: PurchaseRefund) -> dict[str, Any]:
    return {
        "payment_intent_id": refund.purchase.payment_intent_id,
        "idempotency_key": refund.idempotency_key,
        "amount_minor": refund.amount_minor,
        "metadata": {"purchase": str(refund.purchase_id), "purchase_refund": str(refund.pk)},
    }


def _refund_send(refund_pk: int) -> None:
    refund = PurchaseRefund.objects.select_related("purchase").get(pk=refund_pk)

    def send() -> ProviderResult:
        return stripe_client().refund(**_refund_request(refund))

    _record_refund(refund, call_provider("stripe", "purchases.refund", send, idempotent=True), syncing=False)


def _record_refund(refund: PurchaseRefund, result: ProviderResult, *, syncing: bool) -> None:
    live = (PurchaseRefund.Status.PENDING, PurchaseRefund.Status.UNKNOWN)
    if isinstance(result, Succeeded):
        _refund_succeeded(refund, result.reference)
    elif isinstance(result, Pending):
        PurchaseRefund.objects.filter(pk=refund.pk, status__in=live).update(
            provider_refund_id=result.reference, updated_at=timezone.now()
        )
        _schedule_refund_sync(refund, f"refund {result.reference} is {result.status}")
    elif isinstance(result, Unknown) or result.retryable or result.code == "idempotency_error":
        PurchaseRefund.objects.filter(pk=refund.pk, status=PurchaseRefund.Status.PENDING).update(
            status=PurchaseRefund.Status.UNKNOWN, failure_reason=result.reason[:500], updated_at=timezone.now()
        )
        _schedule_refund_sync(refund, result.reason)
    else:
        with transaction.atomic():
            if PurchaseRefund.objects.filter(pk=refund.pk, status__in=live).update(
                status=PurchaseRefund.Status.FAILED, failure_reason=result.reason[:500], updated_at=timezone.now()
            ):  # known not refunded: give the reservation back
                Purchase.objects.filter(pk=refund.purchase_id).update(
                    refund_reserved_minor=F("refund_reserved_minor") - refund.amount_minor, updated_at=timezone.now()
                )
        purchase = refund.purchase
        if purchase.outcome in Purchase.MONEY_BACK_OUTCOMES:
            _alert(purchase, "automatic refund declined", result.reason)


def _refund_succeeded(refund: PurchaseRefund, provider_refund_id: str) -> None:
    with transaction.atomic():
        purchase = _locked(refund.purchase_id)
        if not PurchaseRefund.objects.filter(
            pk=refund.pk, status__in=(PurchaseRefund.Status.PENDING, PurchaseRefund.Status.UNKNOWN)
        ).update(
            status=PurchaseRefund.Status.SUCCEEDED,
            provider_refund_id=provider_refund_id,
            next_sync_at=None,
            updated_at=timezone.now(),
        ):
            return
        refunded = purchase.refunded_minor + refund.amount_minor
        Purchase.objects.filter(pk=purchase.pk).update(refunded_minor=refunded, updated_at=timezone.now())
        if refunded == purchase.captured_minor:
            _transition(purchase.pk, {S.CAPTURED}, S.REFUNDED)
        accounts = _ledger_accounts(purchase.currency)
        amount = Money(refund.amount_minor, purchase.currency)
        transaction_post(
            idempotency_key=f"{refund.idempotency_key}:settle",
            kind="service_purchase_refund",
            legs=[debit(accounts["revenue"], amount), credit(accounts["clearing"], amount)],
            description=f"Refund {refund.pk} of purchase {purchase.pk}",
            metadata={
                "provider": "stripe",
                "provider_reference": provider_refund_id,
                "purchase": purchase.pk,
                "purchase_refund": refund.pk,
                "payment_intent": purchase.payment_intent_id,
            },
        )


def purchase_refund_sync(*, refund_pk: int) -> PurchaseRefund:
    """Resolve a refund whose outcome is not known: by its Stripe id, or by replaying the keyed create."""
    refund = PurchaseRefund.objects.select_related("purchase").get(pk=refund_pk)
    if refund.status not in (PurchaseRefund.Status.PENDING, PurchaseRefund.Status.UNKNOWN):
        return refund
    client = stripe_client()
    if refund.provider_refund_id:
        result = client.retrieve_refund(refund_id=refund.provider_refund_id)
    elif timezone.now() - refund.created_at > timedelta(hours=23):
        result = Unknown(reason=f"refund key {refund.idempotency_key} is past Stripe's 24 h window")
    else:
        result = client.refund(**_refund_request(refund))
    _record_refund(refund, result, syncing=True)
    refund.refresh_from_db()
    return refund


def _schedule_refund_sync(refund: PurchaseRefund, reason: str) -> None:
    attempts = refund.sync_attempts + 1
    if attempts > len(SYNC_SCHEDULE):
        _alert(refund.purchase, f"refund {refund.pk} unresolved", reason)
        PurchaseRefund.objects.filter(pk=refund.pk).update(sync_attempts=attempts, next_sync_at=None)
        return
    PurchaseRefund.objects.filter(pk=refund.pk).update(
        sync_attempts=attempts, next_sync_at=timezone.now() + SYNC_SCHEDULE[attempts - 1]
    )


# --- finding out: sync of unknown and stuck purchases ---------------------------------------------


def _schedule_sync(purchase_pk: int, reason: str, *, first: bool = False) -> None:
    purchase = Purchase.objects.get(pk=purchase_pk)
    attempts = 1 if first else purchase.sync_attempts + 1
    if attempts > len(SYNC_SCHEDULE):
        _alert(purchase, f"outcome at Stripe still unknown ({purchase.status})", reason)
        Purchase.objects.filter(pk=purchase_pk).update(sync_attempts=attempts, next_sync_at=None)
        return
    Purchase.objects.filter(pk=purchase_pk).update(
        sync_attempts=attempts, next_sync_at=timezone.now() + SYNC_SCHEDULE[attempts - 1]
    )


def purchase_sync(*, purchase_id: int, actor: AbstractBaseUser | None = None) -> Purchase:
    """Finish whatever a purchase is waiting for, by asking Stripe and re-sending only under the same keys:
    an unknown or interrupted authorization, capture or void, an unknown refund, or money still due back."""
    if actor is not None:
        require_permission(actor, SYNC_PERMISSION)
        audit_record(actor=actor, action="escrow.purchase.sync", obj=_reload(purchase_id))
    purchase = _reload(purchase_id)
    if purchase.status in (S.AUTHORIZING, S.AUTHORIZE_UNKNOWN):
        _record_authorization(purchase_id, _replay_authorize(purchase), syncing=True)
    elif purchase.status in (S.CAPTURING, S.CAPTURE_UNKNOWN, S.VOIDING, S.VOID_UNKNOWN):
        _sync_by_intent(purchase)
    elif purchase.status == S.RESERVED and purchase.outcome in Purchase.MONEY_BACK_OUTCOMES:
        if _transition(purchase_id, {S.RESERVED}, S.VOIDING):  # decided, then interrupted before the void
            _void(purchase_id)
    purchase = _reload(purchase_id)
    for refund_pk in purchase.refunds.filter(
        status__in=(PurchaseRefund.Status.PENDING, PurchaseRefund.Status.UNKNOWN)
    ).values_list("pk", flat=True):
        purchase_refund_sync(refund_pk=refund_pk)
    if purchase.status == S.CAPTURED and purchase.outcome in Purchase.MONEY_BACK_OUTCOMES:
        _refund_rest(purchase_id)
    return _reload(purchase_id)


def _sync_by_intent(purchase: Purchase) -> None:
    if not purchase.payment_intent_id:
        _void(purchase.pk)  # finds the authorization first
        return
    client = stripe_client()
    found = client.retrieve_payment_intent(payment_intent_id=purchase.payment_intent_id)
    if not isinstance(found, Succeeded | Pending):
        _schedule_sync(purchase.pk, getattr(found, "reason", str(found)))
        return
    if found.status in ("succeeded", "canceled"):
        _record_intent(purchase.pk, found, sources=(purchase.status,))
        return
    # not done at Stripe: send the same request again, under the same key
    if purchase.status in (S.CAPTURING, S.CAPTURE_UNKNOWN):
        _transition(purchase.pk, {S.CAPTURE_UNKNOWN}, S.CAPTURING)
        _capture(purchase.pk)
    else:
        _transition(purchase.pk, {S.VOID_UNKNOWN}, S.VOIDING)
        _void(purchase.pk)


def purchases_sync_due(*, limit: int = 200) -> int:
    """The sweeper: unknown outcomes on their schedule, in-flight rows nobody finished, money still due back."""
    now = timezone.now()
    stale = now - _stale_after()
    due = Purchase.objects.filter(
        Q(status__in=Purchase.UNKNOWN, next_sync_at__lte=now)
        | Q(status__in=Purchase.IN_FLIGHT, updated_at__lte=stale)
        | Q(status__in=Purchase.IN_FLIGHT, next_sync_at__lte=now)
        | Q(status=S.RESERVED, outcome__in=Purchase.MONEY_BACK_OUTCOMES, updated_at__lte=stale)
        | Q(
            refunds__status__in=(PurchaseRefund.Status.PENDING, PurchaseRefund.Status.UNKNOWN),
            refunds__next_sync_at__lte=now,
        )
        | Q(refunds__status=PurchaseRefund.Status.PENDING, refunds__updated_at__lte=stale)
    ).distinct()
    synced = 0
    for pk in due.order_by("pk").values_list("pk", flat=True)[:limit]:
        purchase_sync(purchase_id=pk)
        synced += 1
    return synced + _refund_rest_due(stale, limit)


def _refund_rest_due(stale: datetime, limit: int) -> int:
    owing = Purchase.objects.filter(
        status=S.CAPTURED,
        outcome__in=Purchase.MONEY_BACK_OUTCOMES,
        refund_reserved_minor__lt=F("captured_minor"),
        updated_at__lte=stale,
    )
    return sum(1 for pk in owing.values_list("pk", flat=True)[:limit] if _refund_rest(pk) is not None)


# --- reconciliation: money that should have gone back ---------------------------------------------


def purchases_owing_money_back(*, since: datetime) -> QuerySet[Purchase]:
    """Failed, cancelled or timed-out purchases since `since` whose money is not known to be back:
    an authorization not voided (or not known voided), or a capture not refunded in full."""
    not_final = (
        S.AUTHORIZING,
        S.AUTHORIZE_UNKNOWN,
        S.RESERVED,
        S.CAPTURING,
        S.CAPTURE_UNKNOWN,
        S.VOIDING,
        S.VOID_UNKNOWN,
    )
    return (
        Purchase.objects.filter(created_at__gte=since, outcome__in=Purchase.MONEY_BACK_OUTCOMES)
        .filter(Q(status__in=not_final) | Q(status=S.CAPTURED, refunded_minor__lt=F("captured_minor")))
        .select_related("buyer", "service")
        .order_by("pk")
    )


def money_owed_back(purchase: Purchase) -> Money:
    """What the buyer is still owed: the held amount before capture, the unrefunded part after."""
    if purchase.status == S.CAPTURED:
        return Money(purchase.captured_minor - purchase.refunded_minor, purchase.currency)
    return Money(purchase.amount_minor, purchase.currency)


@dataclass(frozen=True)
class OwedPurchase:
    purchase_id: int
    buyer: str
    status: str
    outcome: str
    owed: Money
    problem: str
    status_after: str = ""


@dataclass
class RefundsReconciliation:
    since: datetime
    executed: bool
    found: list[OwedPurchase] = field(default_factory=list)

    def owed_by_currency(self) -> dict[str, Money]:
        totals: dict[str, Money] = {}
        for case in self.found:
            totals[case.owed.currency] = totals.get(case.owed.currency, Money.zero(case.owed.currency)) + case.owed
        return dict(sorted(totals.items()))

    def owed_by_buyer(self) -> dict[str, list[Money]]:
        per_buyer: dict[str, dict[str, Money]] = {}
        for case in self.found:
            mine = per_buyer.setdefault(case.buyer, {})
            mine[case.owed.currency] = mine.get(case.owed.currency, Money.zero(case.owed.currency)) + case.owed
        return {buyer: [totals[c] for c in sorted(totals)] for buyer, totals in sorted(per_buyer.items())}

    @property
    def settled(self) -> int:
        return sum(1 for case in self.found if case.status_after in (S.VOIDED, S.DECLINED, S.REFUNDED))


_PROBLEMS = {
    S.AUTHORIZING: "authorization interrupted: not known, not voided",
    S.AUTHORIZE_UNKNOWN: "authorization outcome unknown: not voided",
    S.RESERVED: "authorization never voided",
    S.VOIDING: "void interrupted: never confirmed",
    S.VOID_UNKNOWN: "void outcome unknown",
    S.CAPTURING: "capture interrupted",
    S.CAPTURE_UNKNOWN: "capture outcome unknown",
}


def _problem(purchase: Purchase) -> str:
    if purchase.status == S.CAPTURED:
        refunded = Money(purchase.refunded_minor, purchase.currency)
        return f"captured {Money(purchase.captured_minor, purchase.currency)}, only {refunded} refunded"
    return _PROBLEMS.get(purchase.status, purchase.status)


def refunds_reconcile(*, days: int, execute: bool) -> RefundsReconciliation:
    """Find failed, cancelled or timed-out purchases of the last `days` whose money is not back; with
    `execute`, finish each through `purchase_sync` (the same deterministic keys, so never twice)."""
    if days < 1:
        raise InvalidRequest(
            f"days must be at least 1, got {days}",
            user_message="The window must be at least one day.",
            action_required="Run again with --days 1 or more.",
            details={"days": days},
        )
    report = RefundsReconciliation(since=timezone.now() - timedelta(days=days), executed=execute)
    for purchase in purchases_owing_money_back(since=report.since):
        case = OwedPurchase(
            purchase_id=purchase.pk,
            buyer=purchase.buyer.get_username(),
            status=purchase.status,
            outcome=purchase.outcome,
            owed=money_owed_back(purchase),
            problem=_problem(purchase),
        )
        if execute:
            after = purchase_sync(purchase_id=purchase.pk)
            case = OwedPurchase(**{**case.__dict__, "status_after": after.status})
            audit_record(
                actor=None,
                action="escrow.purchase.reconcile_refund",
                obj=after,
                before={"status": purchase.status, "problem": case.problem},
                after={"status": after.status, "refunded_minor": after.refunded_minor},
            )
        report.found.append(case)
    return report


# --- Stripe webhooks: a shortcut to the sync, for purchases waiting on an unknown answer -------------


def purchase_stripe_event(event: Any, body: dict[str, Any]) -> None:
    """A PaymentIntent or refund of one of our purchases changed: if we were waiting on an unknown answer,
    sync now (the sync asks Stripe, so duplicates and any delivery order are harmless). Objects that are
    not a purchase's (no `purchase` metadata, or another PaymentIntent) are ignored."""
    obj = (body.get("data") or {}).get("object") or {}
    named = str((obj.get("metadata") or {}).get("purchase", ""))
    if obj.get("object") not in ("payment_intent", "refund") or not named.isdigit():
        return
    intent_id = obj["id"] if obj["object"] == "payment_intent" else obj.get("payment_intent")
    purchase = Purchase.objects.filter(pk=int(named)).first()
    if purchase is None or (purchase.payment_intent_id and purchase.payment_intent_id != intent_id):
        return
    waiting_refund = purchase.refunds.filter(status=PurchaseRefund.Status.UNKNOWN).exists()
    if purchase.status in Purchase.UNKNOWN or waiting_refund:
        purchase_sync(purchase_id=purchase.pk)


def register_purchase_handlers() -> None:
    from providers.webhooks import register_handler

    for event_type in (
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
        "payment_intent.canceled",
        "payment_intent.payment_failed",
        "refund.created",
        "refund.updated",
    ):
        register_handler("stripe", event_type, purchase_stripe_event)
