"""Recording what Stripe did to a deal: called by the protocol's outcome hooks (escrow.deals.operations)
and by verified webhooks (escrow.deal_webhooks). No provider call is made here.

Each recorder locks the deal row, moves it with `EscrowDeal.status_move` (one conditional update along
`EscrowDeal.TRANSITIONS`) and posts the step's keyed ledger legs (escrow.deals.postings), so a replayed
outcome, a duplicate webhook or a race between them records the step once. Only a step known NOT done
(a Declined the protocol accepted as authoritative) may put a deal back to `held`; an unknown outcome only
notes its reason on the deal.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.alerts import alert_raise, alert_resolve
from core.errors import InvalidStateTransition
from core.models import Alert
from escrow.deals.common import Status, deal_get, declined_reason
from escrow.deals.postings import (
    post_authorize,
    post_capture,
    post_refund,
    post_transfer,
    post_transfer_failed,
    post_transfer_reversal,
    post_void,
)
from escrow.limits import spend_release
from escrow.models import EscrowDeal, EscrowTransferReversal, SellerAccount
from providers.base import Declined

log = structlog.get_logger(__name__)

BEFORE_CAPTURE = (Status.HELD, Status.AWAITING_APPROVAL, Status.RELEASING, Status.REFUNDING)


# --- the hold ------------------------------------------------------------------------------------------


def deal_hold_succeeded(*, deal_id: int, payment_intent_id: str, captured: bool) -> bool:
    """The buyer's money is held (authorized, or captured into escrow); posted once. False if already known."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        now = timezone.now()
        fields: dict[str, Any] = {"payment_intent_id": payment_intent_id, "authorized_at": now, "failure_reason": ""}
        if captured:
            fields["captured_at"] = now
        if not EscrowDeal.status_move(deal.pk, Status.HELD, sources=[Status.CREATED], **fields):
            return False
        if captured:
            post_capture(deal, payment_intent_id, at_hold=True)
        else:
            post_authorize(deal)
    log.info("escrow.deal.held", deal=deal_id, captured=captured)
    return True


def deal_hold_waiting(*, deal_id: int, payment_intent_id: str) -> None:
    """Stripe took the hold but waits on the buyer (e.g. 3-D Secure): the deal stays created."""
    EscrowDeal.objects.filter(pk=deal_id, payment_intent_id="").update(
        payment_intent_id=payment_intent_id, updated_at=timezone.now()
    )


def deal_hold_failed(*, deal_id: int, reason: str) -> bool:
    """The hold was declined: no money moved, the spend reservation is given back."""
    with transaction.atomic():
        if not EscrowDeal.status_move(deal_id, Status.FAILED, sources=[Status.CREATED], failure_reason=reason[:500]):
            return False
        spend_release(reference=f"escrow:{deal_id}")
    log.info("escrow.deal.hold_failed", deal=deal_id, reason=reason)
    return True


# --- capture, void, refund ------------------------------------------------------------------------------


def deal_capture_recorded(*, deal_id: int, payment_intent_id: str) -> bool:
    """The authorized money was captured: it is now at Stripe (clearing). Posted once."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.captured or deal.status not in BEFORE_CAPTURE:
            return False
        EscrowDeal.objects.filter(pk=deal.pk).update(captured_at=timezone.now(), updated_at=timezone.now())
        post_capture(deal, payment_intent_id, at_hold=False)
    return True


def deal_voided(*, deal_id: int, target: str = Status.REFUNDED) -> bool:
    """The authorization is gone (voided by us: refunded; lapsed at Stripe: expired). No money moved."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.captured or not EscrowDeal.status_move(deal.pk, target, refunded_at=timezone.now()):
            return False
        post_void(deal)
        spend_release(reference=f"escrow:{deal.pk}")
    log.info("escrow.deal.voided", deal=deal_id, status=target)
    return True


def deal_authorization_lapsed(*, deal_id: int) -> bool:
    return deal_voided(deal_id=deal_id, target=Status.EXPIRED)


def deal_refund_waiting(*, deal_id: int, refund_id: str) -> None:
    """Stripe accepted the refund and will say later how it went: the deal stays refunding."""
    EscrowDeal.objects.filter(pk=deal_id, status=Status.REFUNDING).update(
        refund_id=refund_id, updated_at=timezone.now()
    )


def deal_refunded(*, deal_id: int, refund_id: str) -> bool:
    """The captured money went back to the buyer's card. Posted once."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        moved = EscrowDeal.status_move(
            deal.pk, Status.REFUNDED, sources=[Status.REFUNDING], refund_id=refund_id, refunded_at=timezone.now()
        )
        if not moved:
            return False
        post_refund(deal, refund_id)
    log.info("escrow.deal.refunded", deal=deal_id, refund=refund_id)
    return True


def deal_step_declined(*, deal_id: int, source: str, step: str, result: Declined) -> bool:
    """Stripe refused a capture, void or refund, KNOWN not done: the deal is held again, and may be released
    or cancelled again (a new attempt, under a new key). A refusal that was only 'not sent' (Stripe down)
    also lets the timeout job apply the deal's policy again."""
    fields: dict[str, Any] = {"failure_reason": declined_reason(step, result)}
    if step == "refund":
        fields["refund_id"] = ""
    if result.retryable:
        fields["timed_out_at"] = None
    moved = EscrowDeal.status_move(deal_id, Status.HELD, sources=[source], **fields)
    log.warning("escrow.deal.step_declined", deal=deal_id, step=step, reason=result.reason, held_again=moved)
    return moved


def deal_outcome_unknown(*, deal_id: int, reason: str) -> None:
    """Sent, and Stripe's answer is not known: the deal stays where it is; the money movement is followed up."""
    EscrowDeal.objects.filter(pk=deal_id).update(failure_reason=reason[:500], updated_at=timezone.now())
    log.warning("escrow.deal.outcome_unknown", deal=deal_id, reason=reason)


# --- the transfer -----------------------------------------------------------------------------------------


def deal_transfer_succeeded(*, deal_id: int, transfer_id: str) -> bool:
    """The seller has the money: seller payable leaves through clearing. Posted once."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        moved = EscrowDeal.status_move(
            deal.pk, Status.TRANSFERRED, sources=[Status.RELEASED, Status.TRANSFER_FAILED], transfer_id=transfer_id,
            transferred_at=timezone.now(), next_transfer_at=None, failure_reason="",
        )  # fmt: skip
        if not moved:
            return False
        post_transfer(deal, transfer_id)
        if deal.status == Status.TRANSFER_FAILED:  # a retry got through: the out-of-retries alert is dealt with
            alert_resolve(key=transfer_alert_key(deal.pk), reason=f"transfer {transfer_id} succeeded")
    log.info("escrow.deal.transferred", deal=deal_id, transfer=transfer_id)
    return True


def transfer_alert_key(deal_id: int) -> str:
    return f"escrow:deal:{deal_id}:transfer"


def transfer_retry_delay(attempts: int) -> timedelta:
    """After the n-th declined attempt: 1 h, 2 h, 4 h, ... (ESCROW_TRANSFER_RETRY_BASE doubled)."""
    return settings.ESCROW_TRANSFER_RETRY_BASE * 2 ** (attempts - 1)


def deal_transfer_declined(*, deal_id: int, result: Declined) -> bool:
    """Stripe refused the transfer, known not done: `transfer_failed`, and the next attempt (a new key) is
    due after the business backoff; after ESCROW_TRANSFER_MAX_ATTEMPTS a staff alert waits for a person."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.status not in (Status.RELEASED, Status.TRANSFER_FAILED):
            return False
        attempts = max(deal.transfer_attempts, 1)
        last = attempts >= settings.ESCROW_TRANSFER_MAX_ATTEMPTS
        retry_at = None if last else timezone.now() + transfer_retry_delay(attempts)
        fields = {"failure_reason": declined_reason("transfer", result), "next_transfer_at": retry_at}
        if deal.status == Status.RELEASED:
            EscrowDeal.status_move(deal.pk, Status.TRANSFER_FAILED, sources=[Status.RELEASED], **fields)
        else:
            EscrowDeal.objects.filter(pk=deal.pk).update(updated_at=timezone.now(), **fields)
    log.warning("escrow.deal.transfer_declined", deal=deal_id, attempts=attempts, reason=result.reason)
    if last:
        alert_raise(
            key=transfer_alert_key(deal.pk),
            title=f"Escrow deal {deal.pk}: transfer to {deal.seller_account.stripe_account_id} failed {attempts} times",
            detail=fields["failure_reason"],
            action_required="Check the seller's Stripe account, then use 'Retry transfer now' on the deal (admin).",
            severity=Alert.Severity.CRITICAL,
        )
    return True


# --- after the transfer (webhooks) --------------------------------------------------------------------------


def deal_transfer_reversed(*, deal_id: int, reversals: list[tuple[str, int]], amount_reversed: int) -> bool:
    """Money taken back from the seller: each reversal posted once, back into seller payable."""
    with transaction.atomic():
        deal = deal_get(deal_id=deal_id, lock=True)
        if deal.status not in (Status.TRANSFERRED, Status.REVERSED):
            raise InvalidStateTransition(  # too early (the transfer is not recorded yet): the sweeper retries
                f"escrow deal {deal.pk} is {deal.status}; its transfer reversal cannot be applied yet"
            )
        for reversal_id, amount in reversals:
            post_transfer_reversal(deal, reversal_id, amount)
            EscrowTransferReversal.objects.get_or_create(
                reversal_id=reversal_id, defaults={"deal": deal, "amount_minor": amount}
            )
        EscrowDeal.status_move(deal.pk, Status.REVERSED, sources=[Status.TRANSFERRED])
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
        post_transfer_failed(deal, transfer_id)
        EscrowDeal.status_move(
            deal.pk, Status.REVERSED, sources=[Status.TRANSFERRED], reversed_minor=deal.seller_net_minor,
            failure_reason=f"transfer failed: {reason}"[:500],
        )  # fmt: skip
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


# --- sellers ---------------------------------------------------------------------------------------------------


def seller_account_updated(*, stripe_account_id: str, transfers: str, event_at: datetime) -> bool:
    """Stripe's account.updated: keep `can_receive_transfers` current, ignoring events older than the last one
    applied. When transfers become possible, declined transfers still on automatic retry are retried soon."""
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
