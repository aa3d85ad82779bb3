"""Deciding what happened to the service: delivered, failed, cancelled or timed out. Decided once.

Invariants:
- `outcome` is set once, on the locked row, by a conditional update from the state read, so delivery,
  cancel and the timeout sweeper race with exactly one winner (the others get InvalidStateTransition);
- the money step the outcome calls for is recorded in the same transaction as the outcome itself, so
  nothing depends on this process surviving: delivered on a reserved purchase records the capture; failed,
  cancelled or timed out records the void (reserved) or a refund of the rest (captured); while the
  authorization is still in doubt only the outcome is set, and the authorization's own outcome records the
  void (escrow.purchases.create). The protocol sends what was recorded once the block has committed.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from core.errors import InvalidRequest, InvalidStateTransition, NotFound, PermissionDenied
from core.permissions import require_permission
from core.services import audit_record
from escrow.models import Purchase
from escrow.purchases.capture_void import capture_record, void_record
from escrow.purchases.common import (
    DELIVER_PERMISSION,
    REFUND_PERMISSION,
    O,
    S,
    movements_run,
    purchase_locked,
    purchase_reload,
)
from escrow.purchases.refunds import refund_rest_record
from providers.models import MoneyMovement

OPEN_STATES = (S.RESERVED, S.AUTHORIZING, S.AUTHORIZE_UNKNOWN)  # no outcome yet, no money taken


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


def _decide(
    purchase: Purchase, outcome: str, detail: str, actor: AbstractBaseUser | None = None
) -> list[MoneyMovement]:
    """On the locked row: set the outcome and record the money step it calls for, in this same transaction."""
    decided = {"outcome": outcome, "outcome_detail": detail[:500], "outcome_at": timezone.now()}
    if purchase.status == S.RESERVED:
        target = S.CAPTURING if outcome == O.DELIVERED else S.VOIDING
        if not Purchase.status_move(purchase.pk, target, sources=[S.RESERVED], **decided):
            raise _already(purchase, outcome)
        return [capture_record(purchase) if outcome == O.DELIVERED else void_record(purchase)]
    updated = Purchase.objects.filter(pk=purchase.pk, status=purchase.status, outcome=purchase.outcome).update(
        updated_at=timezone.now(), **decided
    )
    if not updated:
        raise _already(purchase, outcome)
    if purchase.status == S.CAPTURED:
        return refund_rest_record(purchase_pk=purchase.pk, actor=actor, reason=f"purchase {outcome}")
    return []  # in doubt (authorizing, or the capture in flight): that movement's outcome records the next step


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
        purchase = purchase_locked(purchase_id)
        if purchase.buyer_id == actor.pk:
            raise PermissionDenied(
                f"{actor.get_username()} bought purchase {purchase_id} and cannot confirm its delivery",
                user_message="A buyer cannot confirm the delivery of their own purchase.",
                action_required="The service back end reports the delivery.",
                details={"purchase": purchase_id},
            )
        if purchase.outcome == outcome:
            return purchase_reload(purchase_id)  # the same report again: nothing more to do
        _check_reportable(purchase, outcome)
        before = {"status": purchase.status, "outcome": purchase.outcome}
        movements = _decide(purchase, outcome, detail)
        audit_record(
            actor=actor, action=f"escrow.purchase.{outcome}", obj=purchase, before=before, after={"detail": detail}
        )
    movements_run(movements)
    return purchase_reload(purchase_id)


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
        if purchase.outcome or purchase.status not in OPEN_STATES:
            raise _already(purchase, outcome)


def purchase_cancel(*, purchase_id: int, actor: AbstractBaseUser) -> Purchase:
    """The buyer cancels a purchase not yet delivered (voided); finance staff may also cancel a delivered
    one, which refunds what is left of it."""
    is_finance = getattr(actor, "is_staff", False) and actor.has_perm(REFUND_PERMISSION)
    with transaction.atomic():
        purchase = purchase_locked(purchase_id)
        if purchase.buyer_id != actor.pk and not is_finance:
            if not (getattr(actor, "is_staff", False) and actor.has_perm("escrow.view_purchase")):
                raise NotFound(f"purchase {purchase_id} does not exist", details={"purchase": purchase_id})
            require_permission(actor, REFUND_PERMISSION)  # staff who can see it are told what they lack
        if purchase.outcome == O.CANCELLED:
            return purchase_reload(purchase_id)
        delivered = purchase.outcome == O.DELIVERED and purchase.status == S.CAPTURED
        open_ = not purchase.outcome and purchase.status in OPEN_STATES
        if not (open_ or (delivered and is_finance)):
            raise _already(purchase, O.CANCELLED)
        before = {"status": purchase.status, "outcome": purchase.outcome}
        refunder = actor if is_finance else None
        movements = _decide(purchase, O.CANCELLED, f"cancelled by {actor.get_username()}", actor=refunder)
        audit_record(actor=actor, action="escrow.purchase.cancel", obj=purchase, before=before)
    movements_run(movements)
    return purchase_reload(purchase_id)


def purchase_time_out(*, purchase_id: int, now: datetime | None = None) -> bool:
    """Void a purchase not delivered by its deadline (the sweeper's work); False if it is not due."""
    now = now or timezone.now()
    with transaction.atomic():
        purchase = purchase_locked(purchase_id)
        due = not purchase.outcome and purchase.deliver_by <= now
        if not (due and purchase.status in OPEN_STATES):
            return False
        movements = _decide(purchase, O.TIMED_OUT, f"not delivered by {purchase.deliver_by.isoformat()}")
        audit_record(actor=None, action="escrow.purchase.timeout", obj=purchase, before={"status": purchase.status})
    movements_run(movements)
    return True


def purchases_time_out_due(*, limit: int = 200) -> int:
    """Every purchase past its delivery deadline with no outcome yet; the beat job, every minute."""
    due = Purchase.objects.filter(outcome=O.NONE, status__in=OPEN_STATES, deliver_by__lte=timezone.now())
    pks = list(due.order_by("deliver_by").values_list("pk", flat=True)[:limit])
    return sum(purchase_time_out(purchase_id=pk) for pk in pks)
