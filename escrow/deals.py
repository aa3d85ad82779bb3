"""Escrow deals through Stripe Connect (separate charges and transfers). Every write to a deal is here.

Invariants kept:
- every provider call follows DESIGN.md section 5: the deal row (and its status) is committed before the
  call, the call uses a key derived from the deal (`escrow:{id}:hold|capture|void|refund|transfer`), never a
  new one on retry, and the outcome is recorded after. An unknown outcome keeps the deal in its in-progress
  status (created, releasing, refunding, released) and a sync or retry sends the SAME request again;
- statuses move only along `EscrowDeal.TRANSITIONS`, each move one conditional update
  (`filter(pk=, status__in=old).update(...)`), so API, webhooks and jobs can race: one wins, the others get
  409 `InvalidStateTransition`, or 423 `ResourceLocked` while the winner holds the deal's processing lock
  (`escrow-deal:{id}`) around its provider calls;
- a deal is released or refunded, never both: both start from `held` (or `awaiting_approval`) and only
  one conditional update can leave it;
- the commission is snapshotted at creation in basis points and minor units (rounded half up);
- every ledger posting is keyed by the deal (`escrow:{id}:<step>`), so a replayed step posts once; every
  posting touching `provider:stripe:clearing:{cur}` carries the Stripe id that moved the money;
- a spend-limit reservation `escrow:{id}` is taken in the same transaction as the deal row and given back
  only when no money moved (hold declined, authorization voided or lapsed);
- the same transfer key is used on every retry; retries run 1 h, 2 h, 4 h, 8 h after the first failure
  (ESCROW_TRANSFER_MAX_ATTEMPTS, default 5), inside Stripe's 24 h idempotency window; then a staff alert;
  every retry first lists the transfers of the deal's `transfer_group` at Stripe and records one found there
  instead of sending (a staff retry days later must not pay twice once Stripe has forgotten the key);
- a release above ESCROW_APPROVAL_THRESHOLD_MINOR waits in `awaiting_approval` for a finance approver who
  neither asked for it nor is a party to the deal (maker-checker); every staff or buyer action is audited;
- the timeout job stops a run at ESCROW_TIMEOUT_MAX_DEALS_PER_RUN deals or, per currency,
  ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR, and raises a staff alert; the rest waits for the next run.
Who may act: the buyer releases (or staff with escrow.release_escrowdeal); the seller cancels, i.e. refunds
the buyer (or staff with escrow.refund_escrowdeal): the buyer alone cannot take back promised money.

Ledger postings (all platform accounts, per currency; debit = left, credit = right):
  authorize  (authorization mode, hold placed)     escrow:authorized          / escrow:buyer-funds-held
  capture    (authorization mode, at release)      provider:stripe:clearing   / escrow:authorized         pi_
  capture    (captured mode, hold placed)          provider:stripe:clearing   / escrow:buyer-funds-held   pi_
             + Stripe's fee (by our fee rules)     platform:provider-fees:stripe / provider:stripe:clearing
  release    (split)                               escrow:buyer-funds-held    / escrow:seller-payable (net)
                                                                              + platform:revenue:escrow-commission
  transfer   (seller paid)                         escrow:seller-payable      / provider:stripe:clearing   tr_
  void       (authorization voided or lapsed)      escrow:buyer-funds-held    / escrow:authorized
  refund     (captured, refunded)                  escrow:buyer-funds-held    / provider:stripe:clearing   re_
  reversal   (transfer reversed, per reversal)     provider:stripe:clearing   / escrow:seller-payable      trr_
  transfer-failed (after transferred)              provider:stripe:clearing   / escrow:seller-payable      tr_
A reversed transfer leaves the money in seller payable and the deal `reversed`: a person decides what next.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.alerts import alert_raise
from core.errors import (
    AppError,
    Conflict,
    IdempotencyMismatch,
    InvalidRequest,
    InvalidStateTransition,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    ResourceLocked,
)
from core.locks import processing_lock
from core.models import Alert
from core.money import Money, MoneyError, validate_currency
from core.permissions import require_permission
from core.services import audit_record
from escrow.limits import spend_release, spend_reserve
from escrow.models import EscrowDeal, EscrowTransferReversal, SellerAccount
from ledger.services import credit, debit, platform_accounts, transaction_post
from providers.accounts import provider_accounts
from providers.base import Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.fees import percent_of, processing_fee
from providers.retry import call_provider
from providers.stripe.client import stripe_client

log = structlog.get_logger(__name__)

Status = EscrowDeal.Status
PROVIDER = "stripe"
SYNC_SCHEDULE = (timedelta(minutes=5), timedelta(hours=1), timedelta(days=1), timedelta(days=1))
UNKNOWN_TRANSFER_RETRY = timedelta(minutes=5)


class DealMakerCheckerViolation(PermissionDenied):
    code = "maker_checker"
    default_user_message = "The person who asked for this release (or a party to the deal) cannot approve it."
    default_action_required = "Ask another finance approver to approve the release."


# --- ledger accounts and postings ------------------------------------------------------------------


def ledger_accounts(currency: str) -> dict[str, str]:
    """The escrow accounts of one currency; platform accounts, hot, so never locked (allow_negative)."""
    accounts = {
        "authorized": (f"escrow:authorized:{currency}", "asset", f"Escrow card authorizations ({currency})"),
        "held": (f"escrow:buyer-funds-held:{currency}", "liability", f"Escrow buyer funds held ({currency})"),
        "payable": (f"escrow:seller-payable:{currency}", "liability", f"Escrow seller payable ({currency})"),
        "commission": (
            f"platform:revenue:escrow-commission:{currency}",
            "revenue",
            f"Escrow commission revenue ({currency})",
        ),
        **provider_accounts(PROVIDER, currency),
    }
    return platform_accounts(currency=currency, accounts=accounts)


def _post(deal: EscrowDeal, step: str, legs: list[tuple[str, str, int]], provider_reference: str = "") -> None:
    """Post one keyed step; legs are (debit role, credit role, minor). Clearing postings name the Stripe id."""
    accounts = ledger_accounts(deal.currency)
    postings = []
    for debit_role, credit_role, minor in legs:
        if minor:
            amount = Money(minor, deal.currency)
            postings += [debit(accounts[debit_role], amount), credit(accounts[credit_role], amount)]
    if not postings:
        return
    metadata: dict[str, Any] = {"escrow_deal": deal.pk}
    if provider_reference:
        metadata |= {"provider": PROVIDER, "provider_reference": provider_reference}
    transaction_post(
        idempotency_key=f"escrow:{deal.pk}:{step}",
        kind=f"escrow_{step.split(':')[0].replace('-', '_')}",
        legs=postings,
        description=f"Escrow deal {deal.pk}: {step}",
        metadata=metadata,
    )


def _fee(deal: EscrowDeal) -> int:
    """Stripe's processing fee on the captured amount; the platform bears it (its commission covers it)."""
    return processing_fee(provider=PROVIDER, method="card", amount=Money(deal.amount_minor, deal.currency)).minor


# --- reading and guarding -------------------------------------------------------------------------


def deal_get(*, deal_id: int, lock: bool = False) -> EscrowDeal:
    deals = EscrowDeal.objects.select_for_update() if lock else EscrowDeal.objects.all()
    deal = deals.select_related("seller_account").filter(pk=deal_id).first()
    if deal is None:
        raise NotFound(f"escrow deal {deal_id} does not exist", details={"deal_id": deal_id})
    return deal


def _transition(deal_pk: int, sources: Iterable[str], target: str, **fields: Any) -> bool:
    """Move a deal from any of `sources` to `target` in one conditional update; False if it was elsewhere."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    wrong = [source for source in sources if target not in EscrowDeal.TRANSITIONS[source]]
    if wrong:
        raise ValueError(f"{wrong} -> {target} is not in EscrowDeal.TRANSITIONS")
    now = timezone.now()
    if target in EscrowDeal.IN_PROGRESS and "next_sync_at" not in fields:
        # the sweeper's safety net: should this process die mid-call, the sync sends the same request again
        fields |= {"next_sync_at": now + SYNC_SCHEDULE[0], "sync_attempts": 0}
    moved = EscrowDeal.objects.filter(pk=deal_pk, status__in=sources).update(status=target, updated_at=now, **fields)
    return moved == 1


def _refused(deal_pk: int, action: str) -> InvalidStateTransition:
    status = EscrowDeal.objects.filter(pk=deal_pk).values_list("status", flat=True).first()
    return InvalidStateTransition(
        f"escrow deal {deal_pk} is {status}; cannot {action}",
        user_message=f"This deal is {str(status).replace('_', ' ')}, so it cannot be {action}d now.",
        action_required="Reload the deal to see its current state; someone or something else acted on it first.",
        details={"deal_id": deal_pk, "status": status},
    )


@contextmanager
def _deal_lock(deal_pk: int, holder: str, reason: str) -> Iterator[None]:
    """The deal's processing lock around provider calls: a concurrent actor gets 423 'already processing'."""
    with processing_lock(key=f"escrow-deal:{deal_pk}", holder=holder, reason=reason):
        yield


def _holder(actor: AbstractBaseUser | None, job: str) -> str:
    return actor.get_username() if actor is not None else job


def _stripe_call(operation: str, call: Any) -> ProviderResult:
    stripe = stripe_client()
    return call_provider(PROVIDER, f"escrow.{operation}", lambda: call(stripe), idempotent=True)


# --- creating and holding -------------------------------------------------------------------------


def hold_mode_for(deadline: datetime, *, now: datetime | None = None) -> str:
    """A card authorization lapses after about 7 days: a deal that may outlive the safe part of that
    (ESCROW_AUTHORIZATION_WARN_AFTER) is captured at once into escrow instead."""
    settles_by = deadline + settings.ESCROW_TIMEOUT_GRACE
    if settles_by - (now or timezone.now()) > settings.ESCROW_AUTHORIZATION_WARN_AFTER:
        return EscrowDeal.HoldMode.CAPTURED
    return EscrowDeal.HoldMode.AUTHORIZATION


def _invalid(message: str, field_name: str, action: str) -> InvalidRequest:
    return InvalidRequest(message, user_message=message, action_required=action, details={"field": field_name})


def _validate_create(amount: Money, deadline: datetime, timeout_policy: str, payment_method: str) -> None:
    if amount.minor <= 0:
        raise _invalid("The amount must be more than zero.", "amount_minor", "Enter a positive amount in minor units.")
    if timezone.is_naive(deadline) or deadline <= timezone.now():
        raise _invalid("The deadline must be a time in the future.", "deadline", "Give a future time with a zone.")
    if timeout_policy not in EscrowDeal.TimeoutPolicy.values:
        raise _invalid("Unknown timeout policy.", "timeout_policy", "Use 'refund' or 'release'.")
    if not payment_method:
        raise _invalid("A payment method is required.", "payment_method", "Send the buyer's Stripe pm_... id.")


def _seller(stripe_account_id: str, buyer: AbstractBaseUser) -> SellerAccount:
    seller = SellerAccount.objects.select_related("commission_tier").filter(stripe_account_id=stripe_account_id).first()
    if seller is None:
        raise NotFound(
            f"no seller account {stripe_account_id}",
            user_message="This seller cannot take escrow deals.",
            action_required="Check the seller's account id (acct_...).",
            details={"seller_account": stripe_account_id},
        )
    if seller.user_id == buyer.pk:
        raise _invalid("You cannot buy from yourself.", "seller_account", "Choose another seller.")
    return seller


def deal_create(
    *,
    buyer: AbstractBaseUser,
    seller_account: str,
    amount: Money,
    deadline: datetime,
    timeout_policy: str,
    payment_method: str,
    client_key: str,
) -> EscrowDeal:
    """Record the deal (and its spend reservation), then hold the buyer's money; once per client key."""
    existing = EscrowDeal.objects.filter(buyer=buyer, client_key=client_key).first()
    if existing is not None:
        return _same_deal_or_mismatch(existing, seller_account, amount)
    _validate_create(amount, deadline, timeout_policy, payment_method)
    seller = _seller(seller_account, buyer)
    rate = seller.commission_tier.rate_bps
    try:
        with transaction.atomic():
            deal = EscrowDeal.objects.create(
                buyer=buyer, seller_account=seller, amount_minor=amount.minor, currency=amount.currency,
                commission_bps=rate, commission_minor=percent_of(amount.minor, rate), deadline=deadline,
                timeout_policy=timeout_policy, hold_mode=hold_mode_for(deadline), client_key=client_key,
                payment_method=payment_method, next_sync_at=timezone.now() + SYNC_SCHEDULE[0],
            )  # fmt: skip
            deal.transfer_group = f"escrow-{deal.pk}"
            deal.save(update_fields=["transfer_group"])
            spend_reserve(user=buyer, amount=amount, reference=f"escrow:{deal.pk}")
            audit_record(actor=buyer, action="escrow.deal.create", obj=deal, after=_snapshot(deal))
    except IntegrityError:  # the same client key raced us: one deal, the other request gets it
        existing = EscrowDeal.objects.filter(buyer=buyer, client_key=client_key).first()
        if existing is None:
            raise
        return _same_deal_or_mismatch(existing, seller_account, amount)
    return _hold_place(deal)


def _snapshot(deal: EscrowDeal) -> dict[str, Any]:
    return {
        "amount_minor": deal.amount_minor,
        "currency": deal.currency,
        "commission_bps": deal.commission_bps,
        "commission_minor": deal.commission_minor,
        "seller_account": deal.seller_account.stripe_account_id,
        "hold_mode": deal.hold_mode,
        "deadline": deal.deadline.isoformat(),
        "timeout_policy": deal.timeout_policy,
    }


def _same_deal_or_mismatch(existing: EscrowDeal, seller_account: str, amount: Money) -> EscrowDeal:
    same = (existing.amount_minor, existing.currency, existing.seller_account.stripe_account_id) == (
        amount.minor,
        amount.currency,
        seller_account,
    )
    if not same:
        raise IdempotencyMismatch(
            f"client key {existing.client_key!r} already made escrow deal {existing.pk} with other terms",
            details={"deal_id": existing.pk},
        )
    return existing


def _hold_place(deal: EscrowDeal, *, replay_of: datetime | None = None) -> EscrowDeal:
    capture = "manual" if deal.hold_mode == EscrowDeal.HoldMode.AUTHORIZATION else "automatic"
    request = {
        "amount_minor": deal.amount_minor,
        "currency": deal.currency,
        "payment_method": deal.payment_method,
        "idempotency_key": f"escrow:{deal.pk}:hold",
        "capture": capture,
        "metadata": {"escrow_deal": str(deal.pk)},
        "transfer_group": deal.transfer_group,
    }
    if replay_of is None:
        result = _stripe_call("hold", lambda stripe: stripe.create_payment_intent(**request))
    else:
        result = _stripe_call("hold", lambda stripe: stripe.sync_payment_intent(first_attempt_at=replay_of, **request))
    return _hold_record(deal.pk, result)


def _hold_record(deal_pk: int, result: ProviderResult) -> EscrowDeal:
    if isinstance(result, Succeeded) and result.status in ("requires_capture", "succeeded"):
        deal_hold_succeeded(deal_id=deal_pk, payment_intent_id=result.reference, captured=result.status == "succeeded")
    elif isinstance(result, Declined) and not result.retryable and result.code != "idempotency_error":
        deal_hold_failed(deal_id=deal_pk, reason=result.reason)
    else:  # unknown, waiting on the buyer, or not sent: the sync asks again with the same key
        reference = getattr(result, "reference", "")
        if reference:
            EscrowDeal.objects.filter(pk=deal_pk, payment_intent_id="").update(payment_intent_id=reference)
        _schedule_sync(deal_pk, _reason(result))
    return deal_get(deal_id=deal_pk)


def _reason(result: ProviderResult) -> str:
    if isinstance(result, Declined | Unknown):
        return f"{type(result).__name__.lower()}: {result.reason}"[:500]
    return f"{type(result).__name__.lower()}: {getattr(result, 'status', '')}"


def deal_hold_succeeded(*, deal_id: int, payment_intent_id: str, captured: bool) -> bool:
    """The buyer's money is held (authorized, or captured into escrow); posted once. False if already known."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.status != Status.CREATED:
            return False
        now = timezone.now()
        fields: dict[str, Any] = {"payment_intent_id": payment_intent_id, "authorized_at": now, "next_sync_at": None}
        if captured:
            fields["captured_at"] = now
        _transition(deal.pk, Status.CREATED, Status.HELD, failure_reason="", **fields)
        if captured:
            _post(
                deal,
                "capture",
                [("clearing", "held", deal.amount_minor), ("fees", "clearing", _fee(deal))],
                payment_intent_id,
            )
        else:
            _post(deal, "authorize", [("authorized", "held", deal.amount_minor)])
    log.info("escrow.deal.held", deal=deal_id, captured=captured)
    return True


def deal_hold_failed(*, deal_id: int, reason: str) -> bool:
    """The hold was declined: no money moved, the spend reservation is given back."""
    with transaction.atomic():
        if not _transition(deal_id, Status.CREATED, Status.FAILED, failure_reason=reason[:500], next_sync_at=None):
            return False
        spend_release(reference=f"escrow:{deal_id}")
    log.info("escrow.deal.hold_failed", deal=deal_id, reason=reason)
    return True


# --- release -----------------------------------------------------------------------------------------


def _is_party(actor: AbstractBaseUser, deal: EscrowDeal) -> bool:
    return actor.pk in (deal.buyer_id, deal.seller_account.user_id)


def deal_release(*, deal_id: int, actor: AbstractBaseUser) -> EscrowDeal:
    """The buyer (or finance staff) releases the money to the seller; above the threshold it waits for approval."""
    deal = deal_get(deal_id=deal_id)
    if actor.pk != deal.buyer_id:
        require_permission(actor, "escrow.release_escrowdeal")
    with _deal_lock(deal.pk, actor.get_username(), "releasing escrow to the seller"):
        if deal.amount_minor > settings.ESCROW_APPROVAL_THRESHOLD_MINOR:
            with transaction.atomic():
                if not _transition(deal.pk, Status.HELD, Status.AWAITING_APPROVAL, release_requested_by=actor):
                    raise _refused(deal.pk, "release")
                audit_record(actor=actor, action="escrow.deal.release_requested", obj=deal, after=_snapshot(deal))
            return deal_get(deal_id=deal.pk)
        with transaction.atomic():
            if not _transition(deal.pk, Status.HELD, Status.RELEASING, release_requested_by=actor):
                raise _refused(deal.pk, "release")
            audit_record(actor=actor, action="escrow.deal.release", obj=deal, before={"status": Status.HELD})
        return _release_run(deal.pk)


def deal_release_approve(*, deal_id: int, approver: AbstractBaseUser) -> EscrowDeal:
    """A second staff user approves a large release (maker-checker), which then runs."""
    require_permission(approver, "escrow.approve_escrowdeal")
    deal = deal_get(deal_id=deal_id)
    if approver.pk == deal.release_requested_by_id or _is_party(approver, deal):
        raise DealMakerCheckerViolation(f"{approver.get_username()} asked for or is a party to deal {deal.pk}")
    with _deal_lock(deal.pk, approver.get_username(), "approving an escrow release"):
        with transaction.atomic():
            if not _transition(deal.pk, Status.AWAITING_APPROVAL, Status.RELEASING, approved_by=approver):
                raise _refused(deal.pk, "approve")
            audit_record(actor=approver, action="escrow.deal.release_approve", obj=deal, after=_snapshot(deal))
        return _release_run(deal.pk)


def _release_run(deal_pk: int) -> EscrowDeal:
    """Capture if needed, split held funds into seller payable and commission, then transfer."""
    deal = deal_get(deal_id=deal_pk)
    if deal.status == Status.RELEASING and not deal.captured:
        result = _stripe_call(
            "capture",
            lambda stripe: stripe.capture(
                payment_intent_id=deal.payment_intent_id, idempotency_key=f"escrow:{deal_pk}:capture"
            ),
        )
        if not _capture_outcome(deal, result):
            return deal_get(deal_id=deal_pk)
    deal = deal_get(deal_id=deal_pk)
    if deal.status == Status.RELEASING:
        _release_split(deal)
    deal = deal_get(deal_id=deal_pk)
    if deal.status in (Status.RELEASED, Status.TRANSFER_FAILED):
        return _transfer_attempt(deal)
    return deal


def _capture_outcome(deal: EscrowDeal, result: ProviderResult) -> bool:
    """True when captured; otherwise records what happened (and raises when the caller must know)."""
    if isinstance(result, Succeeded) and result.status == "succeeded":
        deal_capture_recorded(deal_id=deal.pk, payment_intent_id=result.reference)
        return True
    intent_status = _intent_status(deal) if isinstance(result, Declined) and not result.retryable else ""
    if intent_status == "succeeded":  # captured already (another request, or by hand at Stripe)
        deal_capture_recorded(deal_id=deal.pk, payment_intent_id=deal.payment_intent_id)
        return True
    if intent_status == "canceled":
        deal_authorization_lapsed(deal_id=deal.pk)
        raise InvalidStateTransition(
            f"escrow deal {deal.pk}: the authorization {deal.payment_intent_id} was canceled at Stripe",
            user_message="The card authorization lapsed before the money was captured; nothing was paid.",
            action_required="Ask the buyer to start a new deal.",
            details={"deal_id": deal.pk},
        )
    if isinstance(result, Declined):
        _declined_back_to_held(
            deal, result, Status.RELEASING, "capture", "capture the held money", "Try the release again later"
        )
    _schedule_sync(deal.pk, _reason(result))
    return False


def _declined_back_to_held(
    deal: EscrowDeal, result: Declined, from_status: str, step: str, refused_to: str, retry: str
) -> NoReturn:
    """Stripe refused a step (known not done): the deal is held again and the caller is told why."""
    _transition(deal.pk, from_status, Status.HELD, failure_reason=_reason(result))
    error_type = ProviderUnavailable if result.retryable else Conflict
    raise error_type(
        f"escrow deal {deal.pk}: {step} declined: {result.reason}",
        user_message=f"Stripe refused to {refused_to}; nothing moved and the deal is held again.",
        action_required=f"{retry}; if it keeps failing, check the payment in Stripe.",
        details={"deal_id": deal.pk, "code": result.code},
    )


def _intent_status(deal: EscrowDeal) -> str:
    result = _stripe_call(
        "retrieve", lambda stripe: stripe.retrieve_payment_intent(payment_intent_id=deal.payment_intent_id)
    )
    return getattr(result, "status", "")


def deal_capture_recorded(*, deal_id: int, payment_intent_id: str) -> bool:
    """The authorized money was captured: it is now at Stripe (clearing). Posted once."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.captured or deal.status not in (
            Status.HELD, Status.AWAITING_APPROVAL, Status.RELEASING, Status.REFUNDING,
        ):  # fmt: skip
            return False
        EscrowDeal.objects.filter(pk=deal.pk).update(captured_at=timezone.now(), updated_at=timezone.now())
        _post(
            deal,
            "capture",
            [("clearing", "authorized", deal.amount_minor), ("fees", "clearing", _fee(deal))],
            payment_intent_id,
        )
    return True


def _release_split(deal: EscrowDeal) -> None:
    with transaction.atomic():
        now = timezone.now()
        # next_transfer_at: the hourly job's safety net should this process die before the transfer is sent
        retry_at = now + UNKNOWN_TRANSFER_RETRY
        if not _transition(
            deal.pk, Status.RELEASING, Status.RELEASED, released_at=now, next_sync_at=None, next_transfer_at=retry_at
        ):
            return
        _post(
            deal, "release", [("held", "payable", deal.seller_net_minor), ("held", "commission", deal.commission_minor)]
        )
    log.info("escrow.deal.released", deal=deal.pk, net=deal.seller_net_minor, commission=deal.commission_minor)


# --- transfer and its retries ---------------------------------------------------------------------


def _transfer_attempt(deal: EscrowDeal) -> EscrowDeal:
    """Send the seller's share under the deal's one transfer key, and record the outcome."""
    if deal.seller_net_minor == 0:  # a 100% commission: nothing to send
        deal_transfer_succeeded(deal_id=deal.pk, transfer_id="")
        return deal_get(deal_id=deal.pk)
    if deal.transfer_attempts and _transfer_already_made(deal):
        return deal_get(deal_id=deal.pk)
    result = _stripe_call(
        "transfer",
        lambda stripe: stripe.create_transfer(
            amount_minor=deal.seller_net_minor,
            currency=deal.currency,
            destination=deal.seller_account.stripe_account_id,
            idempotency_key=f"escrow:{deal.pk}:transfer",
            transfer_group=deal.transfer_group,
            metadata={"escrow_deal": str(deal.pk)},
        ),
    )
    if isinstance(result, Succeeded):
        deal_transfer_succeeded(deal_id=deal.pk, transfer_id=result.reference)
    else:
        _transfer_not_done(deal, result)
    return deal_get(deal_id=deal.pk)


def _transfer_already_made(deal: EscrowDeal) -> bool:
    """Before sending again: did an earlier attempt move the money after all? Stripe forgets our key after
    24 h, so a late retry (staff, after an unknown answer) is checked against the deal's transfer group."""
    found = stripe_client().transfers_in_group(transfer_group=deal.transfer_group)
    if isinstance(found, Unknown):
        _transfer_not_done(deal, found)  # cannot tell: send nothing now, look again later
        return True
    if found:
        deal_transfer_succeeded(deal_id=deal.pk, transfer_id=found[-1].reference)  # the oldest: the first one sent
        return True
    return False


def deal_transfer_succeeded(*, deal_id: int, transfer_id: str) -> bool:
    """The seller has the money: seller payable leaves through clearing. Posted once."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        moved = _transition(
            deal.pk, (Status.RELEASED, Status.TRANSFER_FAILED), Status.TRANSFERRED, transfer_id=transfer_id,
            transferred_at=timezone.now(), next_transfer_at=None, failure_reason="",
        )  # fmt: skip
        if not moved:
            return False
        _post(deal, "transfer", [("payable", "clearing", deal.seller_net_minor)], transfer_id)
    log.info("escrow.deal.transferred", deal=deal_id, transfer=transfer_id)
    return True


def transfer_retry_delay(attempts: int) -> timedelta:
    """After the n-th failed attempt: 1 h, 2 h, 4 h, ... (ESCROW_TRANSFER_RETRY_BASE doubled)."""
    return settings.ESCROW_TRANSFER_RETRY_BASE * 2 ** (attempts - 1)


def _transfer_not_done(deal: EscrowDeal, result: ProviderResult) -> None:
    """Declined: `transfer_failed` with a retry time. Unknown: stays as it is and the same key is sent again."""
    attempts = deal.transfer_attempts + 1
    last = attempts >= settings.ESCROW_TRANSFER_MAX_ATTEMPTS
    reason = _reason(result)
    if isinstance(result, Declined):
        delay = transfer_retry_delay(attempts)
        status = Status.TRANSFER_FAILED
    else:
        delay, status = UNKNOWN_TRANSFER_RETRY, deal.status
    EscrowDeal.objects.filter(pk=deal.pk, status__in=(Status.RELEASED, Status.TRANSFER_FAILED)).update(
        status=status, transfer_attempts=attempts, failure_reason=reason,
        next_transfer_at=None if last else timezone.now() + delay, updated_at=timezone.now(),
    )  # fmt: skip
    log.warning("escrow.deal.transfer_not_done", deal=deal.pk, attempts=attempts, reason=reason)
    if last:
        alert_raise(
            key=f"escrow:deal:{deal.pk}:transfer",
            title=f"Escrow deal {deal.pk}: transfer to {deal.seller_account.stripe_account_id} failed {attempts} times",
            detail=reason,
            action_required="Check the seller's Stripe account, then use 'Retry transfer now' on the deal (admin).",
            severity=Alert.Severity.CRITICAL,
        )


def deal_transfer_retry(*, deal_id: int, actor: AbstractBaseUser | None = None) -> EscrowDeal:
    """Send the transfer again with the same key: the hourly job (actor None) or staff ('retry now')."""
    if actor is not None:
        require_permission(actor, "escrow.retry_transfer_escrowdeal")
    deal = deal_get(deal_id=deal_id)
    with _deal_lock(deal.pk, _holder(actor, "escrow.retry_transfers"), "retrying an escrow transfer"):
        deal = deal_get(deal_id=deal_id)
        if deal.status not in (Status.RELEASED, Status.TRANSFER_FAILED):
            raise _refused(deal.pk, "retry the transfer of")
        if actor is not None:
            before = {"status": deal.status, "transfer_attempts": deal.transfer_attempts}
            audit_record(actor=actor, action="escrow.deal.transfer_retry", obj=deal, before=before)
        return _transfer_attempt(deal)


def deal_transfers_retry_due(*, now: datetime | None = None, limit: int = 200) -> int:
    """The hourly job: retry every transfer whose time has come; returns how many were sent."""
    due = EscrowDeal.objects.filter(
        status__in=(Status.RELEASED, Status.TRANSFER_FAILED), next_transfer_at__lte=now or timezone.now()
    ).order_by("next_transfer_at", "pk")
    sent = 0
    for deal_id in list(due.values_list("pk", flat=True)[:limit]):
        try:
            deal_transfer_retry(deal_id=deal_id)
        except (ResourceLocked, InvalidStateTransition):
            continue  # someone else is on it
        sent += 1
    return sent


# --- cancel and refund ----------------------------------------------------------------------------


def deal_cancel(*, deal_id: int, actor: AbstractBaseUser, reason: str = "") -> EscrowDeal:
    """Give the buyer the money back before release: void the authorization, or refund the capture.

    The seller (who gives up the deal) or finance staff with escrow.refund_escrowdeal may cancel; the buyer
    cannot take back money promised to the seller on their own.
    """
    deal = deal_get(deal_id=deal_id)
    if actor.pk != deal.seller_account.user_id:
        require_permission(actor, "escrow.refund_escrowdeal")
    with _deal_lock(deal.pk, actor.get_username(), "refunding an escrow deal"):
        with transaction.atomic():
            if not _transition(deal.pk, EscrowDeal.CANCELABLE, Status.REFUNDING):
                raise _refused(deal.pk, "cancel")
            audit_record(actor=actor, action="escrow.deal.cancel", obj=deal, before={"status": deal.status},
                         after={"reason": reason})  # fmt: skip
        return _refund_run(deal.pk)


def _refund_run(deal_pk: int) -> EscrowDeal:
    deal = deal_get(deal_id=deal_pk)
    if deal.status != Status.REFUNDING:
        return deal
    if not deal.captured:
        result = _stripe_call(
            "void",
            lambda stripe: stripe.cancel(
                payment_intent_id=deal.payment_intent_id, idempotency_key=f"escrow:{deal_pk}:void", reason="abandoned"
            ),
        )
        if isinstance(result, Succeeded):
            deal_voided(deal_id=deal_pk, target=Status.REFUNDED)
        elif isinstance(result, Declined) and not result.retryable and _intent_status(deal) == "canceled":
            deal_voided(deal_id=deal_pk, target=Status.EXPIRED)
        else:
            _refund_not_done(deal, result)
        return deal_get(deal_id=deal_pk)
    if deal.refund_id:  # a refund Stripe accepted earlier is still pending: look it up
        result = _stripe_call("refund", lambda stripe: stripe.retrieve_refund(refund_id=deal.refund_id))
    else:
        result = _stripe_call(
            "refund",
            lambda stripe: stripe.refund(
                payment_intent_id=deal.payment_intent_id, idempotency_key=f"escrow:{deal_pk}:refund",
                amount_minor=deal.amount_minor, metadata={"escrow_deal": str(deal_pk)},
            ),
        )  # fmt: skip
    if isinstance(result, Succeeded):
        deal_refunded(deal_id=deal_pk, refund_id=result.reference)
    else:
        _refund_not_done(deal, result)
    return deal_get(deal_id=deal_pk)


def _refund_not_done(deal: EscrowDeal, result: ProviderResult) -> None:
    if isinstance(result, Declined):
        _declined_back_to_held(
            deal, result, Status.REFUNDING, "refund or void", "give the money back", "Try again later"
        )
    if isinstance(result, Pending):
        EscrowDeal.objects.filter(pk=deal.pk).update(refund_id=result.reference)
    _schedule_sync(deal.pk, _reason(result))


def deal_voided(*, deal_id: int, target: str = Status.REFUNDED) -> bool:
    """The authorization is gone (voided by us: refunded; lapsed at Stripe: expired). No money moved."""
    sources = [s for s in (Status.HELD, Status.AWAITING_APPROVAL, Status.RELEASING, Status.REFUNDING)
               if target in EscrowDeal.TRANSITIONS[s]]  # fmt: skip
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.captured or not _transition(deal.pk, sources, target, refunded_at=timezone.now(), next_sync_at=None):
            return False
        _post(deal, "void", [("held", "authorized", deal.amount_minor)])
        spend_release(reference=f"escrow:{deal.pk}")
    log.info("escrow.deal.voided", deal=deal_id, status=target)
    return True


def deal_authorization_lapsed(*, deal_id: int) -> bool:
    return deal_voided(deal_id=deal_id, target=Status.EXPIRED)


def deal_refunded(*, deal_id: int, refund_id: str) -> bool:
    """The captured money went back to the buyer's card. Posted once."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if not _transition(deal.pk, Status.REFUNDING, Status.REFUNDED, refund_id=refund_id,
                           refunded_at=timezone.now(), next_sync_at=None):  # fmt: skip
            return False
        _post(deal, "refund", [("held", "clearing", deal.amount_minor)], refund_id)
    log.info("escrow.deal.refunded", deal=deal_id, refund=refund_id)
    return True


# --- reversals after the transfer (webhooks) -------------------------------------------------------


def deal_transfer_reversed(*, deal_id: int, reversals: list[tuple[str, int]], amount_reversed: int) -> bool:
    """Money taken back from the seller: each reversal posted once, back into seller payable."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.status not in (Status.TRANSFERRED, Status.REVERSED):
            raise InvalidStateTransition(  # too early (the transfer is not recorded yet): the sweeper retries
                f"escrow deal {deal.pk} is {deal.status}; its transfer reversal cannot be applied yet"
            )
        for reversal_id, amount in reversals:
            _post(deal, f"transfer-reversal:{reversal_id}", [("clearing", "payable", amount)], reversal_id)
            EscrowTransferReversal.objects.get_or_create(
                reversal_id=reversal_id, defaults={"deal": deal, "amount_minor": amount}
            )
        _transition(deal.pk, Status.TRANSFERRED, Status.REVERSED)
        EscrowDeal.objects.filter(pk=deal.pk, reversed_minor__lt=amount_reversed).update(
            reversed_minor=amount_reversed, failure_reason="transfer reversed at Stripe"
        )
    _alert_reversed(deal, f"{amount_reversed} {deal.currency} of transfer {deal.transfer_id} reversed")
    return True


def deal_transfer_failed_after(*, deal_id: int, transfer_id: str, reason: str) -> bool:
    """A transfer Stripe accepted failed later: the whole net amount is back in seller payable."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.status != Status.TRANSFERRED:
            if deal.status in (Status.RELEASED, Status.TRANSFER_FAILED):
                raise InvalidStateTransition(f"escrow deal {deal.pk}: transfer not recorded yet")
            return False
        _post(deal, "transfer-failed", [("clearing", "payable", deal.seller_net_minor)], transfer_id)
        _transition(deal.pk, Status.TRANSFERRED, Status.REVERSED, reversed_minor=deal.seller_net_minor,
                    failure_reason=f"transfer failed: {reason}"[:500])  # fmt: skip
    _alert_reversed(deal, f"transfer {transfer_id} failed after it was made: {reason}")
    return True


def _alert_reversed(deal: EscrowDeal, detail: str) -> None:
    alert_raise(
        key=f"escrow:deal:{deal.pk}:reversed",
        title=f"Escrow deal {deal.pk}: money came back from seller {deal.seller_account.stripe_account_id}",
        detail=detail,
        action_required="Decide with the seller and buyer; the money is in escrow seller payable.",
        severity=Alert.Severity.CRITICAL,
    )


# --- timeouts ---------------------------------------------------------------------------------------


@dataclass
class TimeoutRun:
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    stopped_by: str = ""  # "", "count" or "amount": the circuit breaker tripped
    amounts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def deal_timeout_apply(*, deal_id: int, now: datetime | None = None) -> EscrowDeal:
    """Apply a held deal's timeout policy after deadline + grace (the timeout job; no actor)."""
    now = now or timezone.now()
    with _deal_lock(deal_id, "escrow.timeouts", "deadline passed"):
        deal = deal_get(deal_id=deal_id)
        if deal.status != Status.HELD or deal.deadline + settings.ESCROW_TIMEOUT_GRACE > now:
            raise _refused(deal_id, "time out")
        release = deal.timeout_policy == EscrowDeal.TimeoutPolicy.RELEASE
        if release and deal.amount_minor > settings.ESCROW_APPROVAL_THRESHOLD_MINOR:
            target = Status.AWAITING_APPROVAL
        else:
            target = Status.RELEASING if release else Status.REFUNDING
        with transaction.atomic():
            if not _transition(deal.pk, Status.HELD, target, timed_out_at=now):
                raise _refused(deal_id, "time out")
            audit_record(actor=None, action="escrow.deal.timeout", obj=deal, after={"status": target})
        if target == Status.RELEASING:
            return _release_run(deal.pk)
        if target == Status.REFUNDING:
            return _refund_run(deal.pk)
        return deal_get(deal_id=deal.pk)


def deal_timeouts_run(*, now: datetime | None = None) -> TimeoutRun:
    """Every minute: apply the policy of held deals past deadline + grace, within the per-run breaker."""
    now = now or timezone.now()
    run = TimeoutRun()
    due = EscrowDeal.objects.filter(status=Status.HELD, deadline__lte=now - settings.ESCROW_TIMEOUT_GRACE)
    max_deals, max_amount = settings.ESCROW_TIMEOUT_MAX_DEALS_PER_RUN, settings.ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR
    for deal_id, amount_minor, currency in due.order_by("deadline", "pk").values_list("pk", "amount_minor", "currency"):
        if run.processed >= max_deals:
            run.stopped_by = "count"
        elif run.amounts[currency] + amount_minor > max_amount:
            run.stopped_by = "amount"
        if run.stopped_by:
            _alert_breaker(run, deal_id, max_deals, max_amount, currency)
            break
        try:
            deal_timeout_apply(deal_id=deal_id, now=now)
        except (ResourceLocked, InvalidStateTransition):
            run.skipped += 1  # a person or a webhook got there first
            continue
        except AppError as error:
            run.failed += 1
            log.warning("escrow.timeout_failed", deal=deal_id, error=error.message)
            continue
        run.processed += 1
        run.amounts[currency] += amount_minor
    run.amounts = dict(run.amounts)
    deal_authorizations_flag_expiring(now=now)
    return run


def _alert_breaker(run: TimeoutRun, next_deal: int, max_deals: int, max_amount: int, currency: str) -> None:
    limit = f"{max_deals} deals" if run.stopped_by == "count" else f"{Money(max_amount, currency)} in {currency}"
    alert_raise(
        key="escrow:timeouts:breaker",
        title=f"Escrow timeout run stopped at its limit of {limit} ({run.processed} deals processed)",
        detail=f"Processed {run.processed} deals ({dict(run.amounts)}); next due deal {next_deal} and later wait.",
        action_required="Check why so many deals timed out at once; the next run continues, or act in the admin.",
        severity=Alert.Severity.CRITICAL,
    )


def deal_authorizations_flag_expiring(*, now: datetime | None = None) -> int:
    """Flag (once) card authorizations placed more than ESCROW_AUTHORIZATION_WARN_AFTER ago, before they lapse."""
    now = now or timezone.now()
    expiring = EscrowDeal.objects.filter(
        hold_mode=EscrowDeal.HoldMode.AUTHORIZATION, captured_at__isnull=True, authorization_warned_at__isnull=True,
        authorized_at__lte=now - settings.ESCROW_AUTHORIZATION_WARN_AFTER,
        status__in=(Status.HELD, Status.AWAITING_APPROVAL, Status.RELEASING, Status.REFUNDING),
    )  # fmt: skip
    deal_ids = list(expiring.values_list("pk", flat=True)[:500])
    if not deal_ids:
        return 0
    EscrowDeal.objects.filter(pk__in=deal_ids).update(authorization_warned_at=now, updated_at=now)
    alert_raise(
        key="escrow:authorizations:expiring",
        title=f"{len(deal_ids)} escrow card authorization(s) will lapse soon",
        detail=f"Deals: {', '.join(map(str, deal_ids))}",
        action_required="Release or cancel these deals before Stripe voids the authorizations (about 7 days).",
    )
    return len(deal_ids)


# --- finding out: sync of unknown outcomes -------------------------------------------------------------


def _schedule_sync(deal_pk: int, reason: str) -> None:
    deal = EscrowDeal.objects.filter(pk=deal_pk).values("sync_attempts", "status").first()
    if deal is None:
        return
    attempts = deal["sync_attempts"]
    if attempts >= len(SYNC_SCHEDULE):
        EscrowDeal.objects.filter(pk=deal_pk).update(next_sync_at=None, failure_reason=reason)
        alert_raise(
            key=f"escrow:deal:{deal_pk}:unknown",
            title=f"Escrow deal {deal_pk} is stuck {deal['status']}: Stripe's answer is still unknown",
            detail=reason,
            action_required="Look the deal up in Stripe by its transfer group escrow-<id> and resolve it by hand.",
            severity=Alert.Severity.CRITICAL,
        )
        return
    EscrowDeal.objects.filter(pk=deal_pk).update(
        next_sync_at=timezone.now() + SYNC_SCHEDULE[attempts], sync_attempts=attempts + 1, failure_reason=reason
    )
    log.warning("escrow.deal.outcome_unknown", deal=deal_pk, status=deal["status"], reason=reason)


def deal_sync(*, deal_id: int) -> EscrowDeal:
    """Ask Stripe again, with the same keys, what became of an in-progress deal."""
    with _deal_lock(deal_id, "escrow.sync_deals", "finding out an unknown outcome"):
        deal = deal_get(deal_id=deal_id)
        if deal.status == Status.CREATED:
            if deal.payment_intent_id:  # created but waiting (e.g. 3-D Secure): read its state
                result = _stripe_call(
                    "hold", lambda stripe: stripe.retrieve_payment_intent(payment_intent_id=deal.payment_intent_id)
                )
                return _hold_record(deal.pk, result)
            return _hold_place(deal, replay_of=deal.created_at)
        if deal.status == Status.RELEASING:
            return _release_run(deal.pk)
        if deal.status == Status.REFUNDING:
            return _refund_run(deal.pk)
        return deal


def deals_sync_due(*, now: datetime | None = None, limit: int = 200) -> int:
    due = EscrowDeal.objects.filter(status__in=EscrowDeal.IN_PROGRESS, next_sync_at__lte=now or timezone.now())
    synced = 0
    for deal_id in list(due.order_by("next_sync_at").values_list("pk", flat=True)[:limit]):
        try:
            deal_sync(deal_id=deal_id)
        except AppError as error:
            log.warning("escrow.sync_failed", deal=deal_id, error=error.message)
            continue
        synced += 1
    return synced


# --- sellers ------------------------------------------------------------------------------


def seller_account_updated(*, stripe_account_id: str, transfers: str, event_at: datetime) -> bool:
    """Stripe's account.updated: keep `can_receive_transfers` current, ignoring events older than the last one
    applied. When transfers become possible, failed transfers still on automatic retry are retried soon."""
    with transaction.atomic():
        seller = SellerAccount.objects.select_for_update().filter(stripe_account_id=stripe_account_id).first()
        if seller is None or (seller.account_updated_at and event_at < seller.account_updated_at):
            return False
        was, seller.can_receive_transfers = seller.can_receive_transfers, transfers == "active"
        seller.account_updated_at = event_at
        seller.save(update_fields=["can_receive_transfers", "account_updated_at", "updated_at"])
        if seller.can_receive_transfers and not was:
            EscrowDeal.objects.filter(
                seller_account=seller, status=Status.TRANSFER_FAILED, next_transfer_at__isnull=False
            ).update(next_transfer_at=timezone.now())
    log.info("escrow.seller.updated", account=stripe_account_id, transfers=transfers)
    return True


def money_of(*, amount_minor: object, currency: object) -> Money:
    """Money from API input, or InvalidRequest saying what is wrong."""
    try:
        return Money(amount_minor, validate_currency(currency))  # type: ignore[arg-type]
    except MoneyError as error:
        raise InvalidRequest(
            str(error),
            user_message=f"The amount is not valid: {error}.",
            action_required="Send the amount as integer minor units with an ISO 4217 currency such as USD.",
            details={"amount_minor": str(amount_minor), "currency": str(currency)},
        ) from error
