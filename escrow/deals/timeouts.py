"""Deadlines: the timeout job applies a held deal's policy (refund or release) after deadline + grace, and
flags card authorizations before they lapse.

- A run stops at ESCROW_TIMEOUT_MAX_DEALS_PER_RUN deals or, per currency, at
  ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR, and raises a staff alert; the rest waits for the next run.
- A single deal above the amount limit can never fit in a run: it is skipped (left `held`) with its own
  staff alert, and the deals behind it carry on.
- A timeout Stripe refused (known not done) leaves the deal `held` with `timed_out_at` set: the job does not
  try it again on its own (a staff alert says so); one that was only 'not sent' (Stripe down) is tried
  again by the next run, as a new attempt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.alerts import alert_raise
from core.errors import AppError, InvalidStateTransition, ResourceLocked
from core.models import Alert
from core.money import Money
from core.services import audit_record
from escrow.deals.cancel import refund_begin, refund_run
from escrow.deals.common import Status, deal_get, deal_lock, refused
from escrow.deals.release import release_begin, release_run
from escrow.models import EscrowDeal

log = structlog.get_logger(__name__)


@dataclass
class TimeoutRun:
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    stopped_by: str = ""  # "", "count" or "amount": the circuit breaker tripped
    oversized: list[int] = field(default_factory=list)  # deals above the amount limit on their own: skipped
    amounts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def deal_timeout_apply(*, deal_id: int, now: datetime | None = None) -> EscrowDeal:
    """Apply a held deal's timeout policy after deadline + grace (the timeout job; no actor)."""
    now = now or timezone.now()
    with deal_lock(deal_id, "escrow.timeouts", "deadline passed"):
        deal = deal_get(deal_id=deal_id)
        if deal.status != Status.HELD or deal.deadline + settings.ESCROW_TIMEOUT_GRACE > now:
            raise refused(deal_id, "time out")
        release = deal.timeout_policy == EscrowDeal.TimeoutPolicy.RELEASE
        if release and deal.amount_minor > settings.ESCROW_APPROVAL_THRESHOLD_MINOR:
            target = Status.AWAITING_APPROVAL
        else:
            target = Status.RELEASING if release else Status.REFUNDING
        movement = None
        with transaction.atomic():
            if not EscrowDeal.status_move(deal.pk, target, sources=[Status.HELD], timed_out_at=now):
                raise refused(deal_id, "time out")
            audit_record(actor=None, action="escrow.deal.timeout", obj=deal, after={"status": target})
            if target == Status.RELEASING:
                movement = release_begin(deal.pk)
            elif target == Status.REFUNDING:
                movement = refund_begin(deal.pk)
        if target == Status.RELEASING:
            return release_run(deal.pk, movement)
        if movement is not None:
            return refund_run(deal.pk, movement)
        return deal_get(deal_id=deal.pk)


def deal_timeouts_run(*, now: datetime | None = None) -> TimeoutRun:
    """Every minute: apply the policy of held deals past deadline + grace, within the per-run breaker."""
    now = now or timezone.now()
    run = TimeoutRun()
    due = EscrowDeal.objects.filter(
        status=Status.HELD, timed_out_at__isnull=True, deadline__lte=now - settings.ESCROW_TIMEOUT_GRACE
    )
    max_deals, max_amount = settings.ESCROW_TIMEOUT_MAX_DEALS_PER_RUN, settings.ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR
    for deal_id, amount_minor, currency in due.order_by("deadline", "pk").values_list("pk", "amount_minor", "currency"):
        if amount_minor > max_amount:
            _skip_oversized(run, deal_id, Money(amount_minor, currency), Money(max_amount, currency))
            continue
        if run.processed >= max_deals:
            run.stopped_by = "count"
        elif run.amounts[currency] + amount_minor > max_amount:
            run.stopped_by = "amount"
        if run.stopped_by:
            _alert_breaker(run, deal_id, max_deals, max_amount, currency)
            break
        if _apply_one(run, deal_id, now):
            run.processed += 1
            run.amounts[currency] += amount_minor
    run.amounts = dict(run.amounts)
    deal_authorizations_flag_expiring(now=now)
    return run


def _apply_one(run: TimeoutRun, deal_id: int, now: datetime) -> bool:
    try:
        deal_timeout_apply(deal_id=deal_id, now=now)
    except (ResourceLocked, InvalidStateTransition):
        run.skipped += 1  # a person or a webhook got there first
        return False
    except AppError as error:
        run.failed += 1
        log.warning("escrow.timeout_failed", deal=deal_id, error=error.message)
        if not error.retryable:
            alert_raise(
                key=f"escrow:deal:{deal_id}:timeout-refused",
                title=f"Escrow deal {deal_id}: Stripe refused its timeout policy",
                detail=error.message,
                action_required="Check the payment in Stripe, then release or cancel the deal in the admin.",
                severity=Alert.Severity.CRITICAL,
            )
        return False
    return True


def _skip_oversized(run: TimeoutRun, deal_id: int, amount: Money, limit: Money) -> None:
    """A deal larger than a whole run's amount limit would block every run: skip it and alert once."""
    run.oversized.append(deal_id)
    alert_raise(
        key=f"escrow:timeouts:oversized:{deal_id}",
        title=f"Escrow deal {deal_id} ({amount}) is above the timeout run's limit of {limit}",
        detail=f"The timeout job skips deal {deal_id}: its amount alone is over the per-run limit.",
        action_required="Apply the deal's timeout policy by hand (release or cancel it in the admin).",
        severity=Alert.Severity.CRITICAL,
    )


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
