"""Cancelling a deal before release: the buyer gets the money back (void the authorization, or refund the
capture).

- The seller (who gives up the deal) or finance staff with escrow.refund_escrowdeal cancel; the buyer alone
  cannot take back money promised to the seller. A deal is released or refunded, never both: both leave
  `held` (or `awaiting_approval`) by one conditional update, and only one can win.
- `-> refunding` and the void's (`escrow.void`) or refund's (`escrow.refund`) intent commit together; it is
  sent after the commit. Stripe refusing it (known not done) puts the deal back to `held` and the caller is
  told; a deal whose refund failed can be cancelled again, as a new attempt under a new key. An unknown
  outcome keeps the deal `refunding` (sticky): a refusal of a re-send never makes it `held`.
- A void Stripe refuses because the PaymentIntent was captured after all records the capture and refunds it.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from escrow.deals.common import REFUND, VOID, Status, deal_get, deal_lock, declined_error, next_attempt_key, refused
from escrow.models import EscrowDeal
from providers.models import MoneyMovement
from providers.protocol import movement_record, movement_run


def deal_cancel(*, deal_id: int, actor: AbstractBaseUser, reason: str = "") -> EscrowDeal:
    """Give the buyer the money back before release: void the authorization, or refund the capture."""
    deal = deal_get(deal_id=deal_id)
    if actor.pk != deal.seller_account.user_id:
        require_permission(actor, "escrow.refund_escrowdeal")
    with deal_lock(deal.pk, actor.get_username(), "refunding an escrow deal"):
        with transaction.atomic():
            before = deal_get(deal_id=deal.pk, lock=True).status
            if not EscrowDeal.status_move(deal.pk, Status.REFUNDING, sources=EscrowDeal.CANCELABLE):
                raise refused(deal.pk, "cancel")
            audit_record(actor=actor, action="escrow.deal.cancel", obj=deal, before={"status": before},
                         after={"reason": reason})  # fmt: skip
            movement = refund_begin(deal.pk)
        return refund_run(deal.pk, movement)


def refund_begin(deal_pk: int) -> MoneyMovement:
    """In the transaction that moved the deal to `refunding`: the void's or the refund's intent."""
    deal = deal_get(deal_id=deal_pk, lock=True)
    operation = REFUND if deal.captured else VOID
    _, key = next_attempt_key(deal.pk, operation)
    return movement_record(
        operation=operation, subject_id=deal.pk, key=key, amount=Money(deal.amount_minor, deal.currency)
    )


def refund_intent_record(deal: EscrowDeal) -> MoneyMovement:
    """A refund of a deal found captured while refunding (its void was refused); in the caller's transaction."""
    _, key = next_attempt_key(deal.pk, REFUND)
    return movement_record(
        operation=REFUND, subject_id=deal.pk, key=key, amount=Money(deal.amount_minor, deal.currency)
    )


def refund_run(deal_pk: int, movement: MoneyMovement) -> EscrowDeal:
    """Send the recorded void or refund; tell the caller when Stripe refused it and the deal is held again."""
    movement = movement_run(movement)
    deal = deal_get(deal_id=deal_pk)
    if movement.status == MoneyMovement.Status.DECLINED and deal.status == Status.HELD:
        step = "refund" if movement.operation == REFUND else "void"
        raise declined_error(deal, step, "give the money back", "Try again later")
    return deal
