"""Finding and finishing purchases whose money is not known to be back, and staff's "sync now".

Invariants:
- finding out is the protocol's: `purchase_sync` asks for each open movement of the purchase now
  (`movement_sync(force=True)`: a look-up first, a re-send only under the same key when Stripe has no such
  object); it never takes a refusal as "not done" and never sends under a new key after an unknown outcome;
- money owed back (outcome failed, cancelled or timed out) is finished by recording the missing movement on
  the locked row: a void (reserved, or voiding with no open void), or a refund of the rest (captured); a
  delivered purchase whose capture attempts ran out gets one more capture. Keys stay deterministic, so a
  second run finds nothing left and moves nothing;
- `refunds_reconcile --dry-run` reads only: no call, no write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from core.errors import InvalidRequest
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from escrow.models import Purchase
from escrow.purchases.capture_void import capture_record, void_record
from escrow.purchases.common import (
    CAPTURE,
    SYNC_PERMISSION,
    VOID,
    O,
    S,
    movements_run,
    purchase_locked,
    purchase_movements,
    purchase_reload,
)
from escrow.purchases.refunds import refund_rest_record
from providers.models import MoneyMovement
from providers.protocol import movement_sync


def purchase_sync(*, purchase_id: int, actor: AbstractBaseUser | None = None) -> Purchase:
    """Staff (or reconciliation): look up every open money movement of this purchase now, then record and
    send whatever money is still owed back."""
    if actor is not None:
        require_permission(actor, SYNC_PERMISSION)
        audit_record(actor=actor, action="escrow.purchase.sync", obj=purchase_reload(purchase_id))
    for pk in purchase_movements(purchase_id).filter(status__in=MoneyMovement.OPEN).values_list("pk", flat=True):
        movement_sync(movement_id=pk, force=True)
    movements_run(money_back_record(purchase_id=purchase_id))
    return purchase_reload(purchase_id)


def _has_open(purchase: Purchase, operation: str) -> bool:
    return MoneyMovement.objects.filter(
        operation=operation, subject_id=purchase.pk, status__in=MoneyMovement.OPEN
    ).exists()


@transaction.atomic
def money_back_record(*, purchase_id: int) -> list[MoneyMovement]:
    """On the locked row: the movement a decided purchase still lacks (none if one is open or it is done)."""
    purchase = purchase_locked(purchase_id)
    owed = purchase.outcome in Purchase.MONEY_BACK_OUTCOMES
    if owed and purchase.status == S.RESERVED:  # decided by a release that did not record its void
        Purchase.status_move(purchase.pk, S.VOIDING, sources=[S.RESERVED])
        return [void_record(purchase)]
    if owed and purchase.status in (S.VOIDING, S.VOID_UNKNOWN):
        if purchase.payment_intent_id and not _has_open(purchase, VOID):
            return [void_record(purchase)]
        return []
    if owed and purchase.status == S.CAPTURED:
        return refund_rest_record(purchase_pk=purchase.pk, reason=f"purchase {purchase.outcome}")
    if purchase.outcome == O.DELIVERED and purchase.status in (S.CAPTURING, S.CAPTURE_UNKNOWN):
        if not _has_open(purchase, CAPTURE):
            return [capture_record(purchase)]
    return []


# --- reconciliation: money that should have gone back ---------------------------------------------


def purchases_owing_money_back(*, since: datetime) -> QuerySet[Purchase]:
    """Failed, cancelled or timed-out purchases since `since` whose money is not known to be back:
    an authorization not voided (or not known voided), or a capture not refunded in full."""
    not_final = (S.AUTHORIZING, S.AUTHORIZE_UNKNOWN, S.RESERVED, S.CAPTURING, S.CAPTURE_UNKNOWN, S.VOIDING,
                 S.VOID_UNKNOWN)  # fmt: skip
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
