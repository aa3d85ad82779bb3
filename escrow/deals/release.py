"""Releasing a deal to the seller: capture (authorization mode), split, transfer.

- The buyer releases (or staff with escrow.release_escrowdeal). Above ESCROW_APPROVAL_THRESHOLD_MINOR the
  deal waits in `awaiting_approval` for a finance approver who neither asked for it nor is a party to the
  deal (maker-checker); that check reads the deal under its row lock, in the transaction that moves it.
- `held|awaiting_approval -> releasing` and the capture's intent (`escrow.capture`) commit together; the
  capture is sent after the commit. The capture's outcome hook posts it, splits the held funds into seller
  payable and commission (`releasing -> released`) and records the transfer's intent, which the protocol
  sends once that has committed. A captured-mode deal splits at once.
- A capture Stripe refused (known not done) puts the deal back to `held` and the caller is told; a release
  after that is a new attempt under a new key. An unknown capture keeps the deal `releasing` (sticky) until
  the protocol's look-up finds the PaymentIntent captured (or its authorization gone: `expired`).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from core.errors import InvalidStateTransition
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from escrow.deals.common import (
    CAPTURE,
    DealMakerCheckerViolation,
    Status,
    deal_get,
    deal_lock,
    declined_error,
    is_party,
    next_attempt_key,
    refused,
    snapshot,
)
from escrow.deals.postings import post_release
from escrow.deals.recorders import deal_transfer_succeeded
from escrow.deals.transfers import transfer_intent_record
from escrow.models import EscrowDeal
from providers.models import MoneyMovement
from providers.protocol import movement_record, movement_run


def deal_release(*, deal_id: int, actor: AbstractBaseUser) -> EscrowDeal:
    """The buyer (or finance staff) releases the money to the seller; above the threshold it waits for approval."""
    deal = deal_get(deal_id=deal_id)
    if actor.pk != deal.buyer_id:
        require_permission(actor, "escrow.release_escrowdeal")
    with deal_lock(deal.pk, actor.get_username(), "releasing escrow to the seller"):
        if deal.amount_minor > settings.ESCROW_APPROVAL_THRESHOLD_MINOR:
            with transaction.atomic():
                moved = EscrowDeal.status_move(
                    deal.pk, Status.AWAITING_APPROVAL, sources=[Status.HELD], release_requested_by=actor
                )
                if not moved:
                    raise refused(deal.pk, "release")
                audit_record(actor=actor, action="escrow.deal.release_requested", obj=deal, after=snapshot(deal))
            return deal_get(deal_id=deal.pk)
        with transaction.atomic():
            if not EscrowDeal.status_move(deal.pk, Status.RELEASING, sources=[Status.HELD], release_requested_by=actor):
                raise refused(deal.pk, "release")
            audit_record(actor=actor, action="escrow.deal.release", obj=deal, before={"status": Status.HELD})
            movement = release_begin(deal.pk)
        return release_run(deal.pk, movement)


def deal_release_approve(*, deal_id: int, approver: AbstractBaseUser) -> EscrowDeal:
    """A second staff user approves a large release (maker-checker), which then runs.

    Who asked and who the parties are is read under the deal's row lock, in the transaction that moves the
    deal: a release request committed while this approval waited cannot slip past the check."""
    require_permission(approver, "escrow.approve_escrowdeal")
    deal_get(deal_id=deal_id)
    with deal_lock(deal_id, approver.get_username(), "approving an escrow release"):
        with transaction.atomic():
            deal = deal_get(deal_id=deal_id, lock=True)
            if approver.pk == deal.release_requested_by_id or is_party(approver, deal):
                raise DealMakerCheckerViolation(f"{approver.get_username()} asked for or is a party to deal {deal.pk}")
            moved = EscrowDeal.status_move(
                deal.pk, Status.RELEASING, sources=[Status.AWAITING_APPROVAL], approved_by=approver
            )
            if not moved:
                raise refused(deal.pk, "approve")
            audit_record(actor=approver, action="escrow.deal.release_approve", obj=deal, after=snapshot(deal))
            movement = release_begin(deal.pk)
        return release_run(deal.pk, movement)


def release_begin(deal_pk: int) -> MoneyMovement | None:
    """In the transaction that moved the deal to `releasing`: the capture's intent, or (captured into escrow
    already) the split and the transfer's intent. None when nothing is left to send."""
    deal = deal_get(deal_id=deal_pk, lock=True)
    if deal.captured:
        return release_split(deal)
    _, key = next_attempt_key(deal.pk, CAPTURE)
    return movement_record(
        operation=CAPTURE, subject_id=deal.pk, key=key, amount=Money(deal.amount_minor, deal.currency)
    )


def release_split(deal: EscrowDeal) -> MoneyMovement | None:
    """Captured and releasing: held funds into seller payable and commission, then the transfer's intent.
    In the caller's transaction (the capture's outcome hook, or release_begin). None if already split."""
    if not EscrowDeal.status_move(deal.pk, Status.RELEASED, sources=[Status.RELEASING], released_at=timezone.now()):
        return None
    post_release(deal)
    if deal.seller_net_minor == 0:  # a 100% commission: nothing to send
        deal_transfer_succeeded(deal_id=deal.pk, transfer_id="")
        return None
    return transfer_intent_record(deal)


def release_run(deal_pk: int, movement: MoneyMovement | None) -> EscrowDeal:
    """Send the recorded step (its follow-ups run too); tell the caller when Stripe refused the capture."""
    if movement is not None:
        movement = movement_run(movement)
    deal = deal_get(deal_id=deal_pk)
    if movement is None or movement.operation != CAPTURE or movement.status != MoneyMovement.Status.DECLINED:
        return deal
    if deal.status == Status.EXPIRED:
        raise InvalidStateTransition(
            f"escrow deal {deal.pk}: the authorization {deal.payment_intent_id} was canceled at Stripe",
            user_message="The card authorization lapsed before the money was captured; nothing was paid.",
            action_required="Ask the buyer to start a new deal.",
            details={"deal_id": deal.pk},
        )
    if deal.status == Status.HELD:
        raise declined_error(deal, "capture", "capture the held money", "Try the release again later")
    return deal
