"""Refunds of captured purchases, through the shared refund component (providers.protocol.refunds).

Invariants:
- succeeded plus in-flight refunds never exceed what was captured: each refund reserves its amount on the
  locked purchase (`refund_reserved_minor`) in the block that creates the refund row and records its
  `purchase.refund` movement (key `purchase:{purchase id}:refund:{refund id}`), before any call;
- once per (purchase, client key): a repeat returns the same refund, another amount is IdempotencyMismatch;
- the outcome is recorded once, from the movement's hooks: succeeded adds to `refunded_minor` and posts
  (below), the purchase is `refunded` once everything captured came back; known not refunded (failed)
  gives the reservation back; pending at Stripe is `waiting` (never success); unknown keeps the
  reservation (the money may have left) until Stripe's refund list says otherwise;
- money owed back after a failed, cancelled or timed-out purchase: a refund of the rest is recorded in the
  transaction that decided it (`refund_rest_record`); if Stripe declines it, the next one (client key
  `rest:{failed count}`) is recorded with that decline, for the sweeper, at most MAX_ATTEMPTS, then an alert.

Ledger posting, key `purchase:{id}:refund:{refund id}:settle`: debit `platform:revenue:services:{cur}`,
credit `provider:stripe:clearing:{cur}`, metadata provider_reference = Stripe's refund id (`re_...`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.errors import InvalidRequest, InvalidStateTransition
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from escrow.models import Purchase, PurchaseRefund
from escrow.purchases.common import (
    MAX_ATTEMPTS,
    REFUND,
    REFUND_PERMISSION,
    S,
    ledger_accounts,
    movements_run,
    purchase_alert,
    purchase_locked,
)
from ledger.services import credit, debit, transaction_post
from providers.base import Declined, Pending, Succeeded
from providers.models import MoneyMovement
from providers.protocol import FollowUps
from providers.protocol.refunds import (
    RefundBook,
    refund_mark_declined,
    refund_mark_succeeded,
    refund_mark_unknown,
    refund_mark_waiting,
    refund_reserve,
)

PURCHASE_REFUNDS = RefundBook(
    parent_model=Purchase,
    refund_model=PurchaseRefund,
    parent_field="purchase",
    refundable_field="captured_minor",
    reserved_field="refund_reserved_minor",
    refunded_field="refunded_minor",
    operation=REFUND,
    key=lambda refund: refund.idempotency_key,
)


def _require_captured(purchase: Purchase) -> None:
    if purchase.status != S.CAPTURED:
        raise InvalidStateTransition(
            f"purchase {purchase.pk} is {purchase.status}",
            user_message="Only a captured purchase can be refunded; nothing else has taken money.",
            action_required="Cancel the purchase instead if it is not delivered yet; reload it to see its state.",
            details={"purchase": purchase.pk, "status": purchase.status},
        )


def purchase_refund(
    *, purchase_id: int, amount: Money | None, actor: AbstractBaseUser, client_key: str, reason: str = ""
) -> PurchaseRefund:
    """Finance staff: refund part (or, with no amount, the rest) of a captured purchase, once per client key."""
    require_permission(actor, REFUND_PERMISSION)
    refund, movement = _refund_reserve(
        purchase_pk=purchase_id, amount=amount, client_key=client_key, actor=actor, reason=reason
    )
    movements_run([movement] if movement is not None else [])
    refund.refresh_from_db()
    return refund


@transaction.atomic
def _refund_reserve(
    *, purchase_pk: int, amount: Money | None, client_key: str, actor: AbstractBaseUser | None, reason: str
) -> tuple[PurchaseRefund, MoneyMovement | None]:
    fields: dict[str, Any] = {"requested_by": actor, "reason": reason[:255]}
    refund, movement = refund_reserve(
        PURCHASE_REFUNDS,
        parent_pk=purchase_pk,
        amount=amount,
        client_key=client_key,
        check_parent=_require_captured,
        fields=fields,
    )
    if movement is not None:
        audit_record(
            actor=actor,
            action="escrow.purchase.refund",
            obj=refund.purchase,
            after={"refund": refund.pk, "amount_minor": refund.amount_minor, "reason": reason},
        )
    return refund, movement


def refund_rest_record(
    *, purchase_pk: int, actor: AbstractBaseUser | None = None, reason: str = ""
) -> list[MoneyMovement]:
    """In the caller's transaction: reserve a refund of whatever is neither refunded nor being refunded.
    Nothing when the purchase is not captured or all of it is reserved already (another writer came first)."""
    purchase = Purchase.objects.get(pk=purchase_pk)
    if purchase.status != S.CAPTURED or purchase.refund_reserved_minor >= purchase.captured_minor:
        return []
    failed = purchase.refunds.filter(status=PurchaseRefund.Status.FAILED).count()
    try:
        _, movement = _refund_reserve(
            purchase_pk=purchase_pk, amount=None, client_key=f"rest:{failed}", actor=actor, reason=reason
        )
    except (InvalidRequest, InvalidStateTransition):
        return []
    return [movement] if movement is not None else []


# --- hooks of purchase.refund (the movement's subject is the PurchaseRefund) ------------------------------


def refund_succeeded(movement: MoneyMovement, result: Succeeded) -> FollowUps:
    refund = PurchaseRefund.objects.get(pk=movement.subject_id)
    purchase = purchase_locked(refund.purchase_id)
    if not refund_mark_succeeded(PURCHASE_REFUNDS, refund_pk=refund.pk, provider_reference=result.reference):
        return None
    purchase.refresh_from_db()
    if purchase.refunded_minor == purchase.captured_minor:
        Purchase.status_move(purchase.pk, S.REFUNDED, sources=[S.CAPTURED])
    accounts = ledger_accounts(purchase.currency)
    amount = Money(refund.amount_minor, purchase.currency)
    transaction_post(
        idempotency_key=f"{refund.idempotency_key}:settle",
        kind="service_purchase_refund",
        legs=[debit(accounts["revenue"], amount), credit(accounts["clearing"], amount)],
        description=f"Refund {refund.pk} of purchase {purchase.pk}",
        metadata={
            "provider": "stripe",
            "provider_reference": result.reference,
            "purchase": purchase.pk,
            "purchase_refund": refund.pk,
            "payment_intent": purchase.payment_intent_id,
        },
    )
    return None


def refund_declined(movement: MoneyMovement, result: Declined) -> FollowUps:
    """Known not refunded: the reservation goes back; money still owed back is asked for again, for the
    sweeper (not at once: whatever refused it may still refuse), at most MAX_ATTEMPTS, then an alert."""
    refund = PurchaseRefund.objects.get(pk=movement.subject_id)
    purchase = purchase_locked(refund.purchase_id)
    if not refund_mark_declined(PURCHASE_REFUNDS, refund_pk=refund.pk, reason=result.reason):
        return None
    if purchase.outcome not in Purchase.MONEY_BACK_OUTCOMES:
        return None
    failed = purchase.refunds.filter(status=PurchaseRefund.Status.FAILED).count()
    if failed >= MAX_ATTEMPTS:
        purchase_alert(purchase, f"automatic refund declined {failed} times", result.reason)
        return None
    refund_rest_record(purchase_pk=purchase.pk, reason=f"purchase {purchase.outcome}; refund {refund.pk} declined")
    return None


def refund_waiting(movement: MoneyMovement, result: Pending) -> FollowUps:
    refund_mark_waiting(PURCHASE_REFUNDS, refund_pk=movement.subject_id, provider_reference=result.reference)
    return None


def refund_unknown(movement: MoneyMovement, reason: str) -> None:
    refund_mark_unknown(PURCHASE_REFUNDS, refund_pk=movement.subject_id, reason=reason)
