"""Retry and cancel: pay again the winners a batch is known not to have paid; take back unclaimed payouts.

Invariants kept:
- a retry batch holds only winners whose item ended unpaid (UNPAID_FINAL) and who are not being paid again;
  it has its own deterministic sender_batch_id (its content names the batch it retries). A batch whose money
  movement is open keeps its items NEW (live), so it can never be retried under a new id;
- an item left UNCLAIMED for settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS is cancelled through the protocol
  (payout.cancel_unclaimed), by staff or by the beat job `items_cancel_unclaimed_due`: one intent at a time per
  item; a new attempt (a new key) only after a known decline, and the job waits CANCEL_RETRY_AFTER for it;
- a cancelled item turns RETURNED and its hold is voided (track.py); nothing else is posted here;
- a retry batch deals with its batch's `denied` and `unpaid` staff alerts: they resolve (payouts.services.alerts).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from core.errors import AppError, Conflict, InvalidRequest, InvalidStateTransition, NotFound
from core.locks import processing_lock
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from payouts.models import OPERATION_CANCEL_UNCLAIMED, PayoutBatch, PayoutItem, WinnerSelection
from payouts.services.alerts import batch_alerts_resolve_retried
from payouts.services.operations import cancel_key_base
from payouts.services.prepare import batch_get, batches_prepare, unpaid_selections
from providers.models import MoneyMovement
from providers.protocol import movement_key, movement_latest, movement_record, movement_run, movement_sync

log = structlog.get_logger(__name__)

CANCEL_RETRY_AFTER = timedelta(days=1)  # the job's wait before a new attempt after PayPal refused a cancel


def batch_retry_failed(*, batch_id: int, actor: AbstractBaseUser) -> list[PayoutBatch]:
    """A new batch (its own deterministic id) for the winners this batch did not pay and nobody has since."""
    require_permission(actor, "payouts.prepare_payoutbatch")
    batch = batch_get(batch_id)
    with processing_lock(key=f"payout-cycle:{batch.cycle_id}", holder=actor.get_username(), reason="retrying"):
        failed = WinnerSelection.objects.filter(items__batch=batch, items__status__in=PayoutItem.UNPAID_FINAL)
        selections = unpaid_selections(WinnerSelection.objects.filter(pk__in=failed.values("pk")))
        if not selections:
            raise InvalidRequest(
                f"batch {batch.sender_batch_id} has no unpaid items left to retry",
                user_message="Every winner of this batch is paid or already being paid again.",
                action_required="Nothing to retry.",
            )
        retries = batches_prepare(batch.cycle, selections, actor, retry_of=batch)
    batch_alerts_resolve_retried(batch_id=batch.pk)
    return retries


# --- unclaimed items ----------------------------------------------------------------------------


def _unclaimed_for() -> timedelta:
    return timedelta(days=settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS)


def item_cancel_unclaimed(*, item_id: int, actor: AbstractBaseUser) -> PayoutItem:
    """Staff: take back a payout left unclaimed for the waiting period (again: look up an open cancel now)."""
    require_permission(actor, "payouts.execute_payoutbatch")
    item = PayoutItem.objects.filter(pk=item_id).first()
    if item is None:
        raise NotFound(f"payout item {item_id} does not exist", details={"item_id": item_id})
    waited = timezone.now() - item.updated_at
    if item.status != PayoutItem.Status.UNCLAIMED or waited < _unclaimed_for():
        raise InvalidStateTransition(
            f"item {item.sender_item_id} is {item.status}, unclaimed for {waited.days} day(s)",
            user_message="Only payouts left unclaimed for the waiting period can be cancelled.",
            action_required=f"Wait until it has been unclaimed for {settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS} days.",
        )
    movement = _cancel_intent(item.pk, actor=actor)
    if movement is not None:
        movement = movement_run(movement) if not movement.sends else movement_sync(movement_id=movement.pk, force=True)
        if movement.status == MoneyMovement.Status.DECLINED:
            raise Conflict(
                f"PayPal refused to cancel {item.sender_item_id}: {movement.failure_reason}",
                user_message=f"PayPal did not cancel this payout: {movement.failure_reason}",
                action_required="Reload the item: it may have been claimed meanwhile.",
            )
    item.refresh_from_db()
    return item


def _cancel_intent(item_pk: int, *, actor: AbstractBaseUser | None) -> MoneyMovement | None:
    """The item's open cancel, or a new one (committed) if it is still unclaimed; None when there is nothing to do."""
    with transaction.atomic():
        item = PayoutItem.objects.select_for_update().get(pk=item_pk)
        if item.status != PayoutItem.Status.UNCLAIMED or not item.provider_item_id:
            return None
        latest = movement_latest(operation=OPERATION_CANCEL_UNCLAIMED, subject_id=item.pk)
        if latest is not None and latest.status != MoneyMovement.Status.DECLINED:
            return latest  # open: follow it up; succeeded: the item turns RETURNED with it
        attempt = MoneyMovement.objects.filter(operation=OPERATION_CANCEL_UNCLAIMED, subject_id=item.pk).count() + 1
        movement = movement_record(
            operation=OPERATION_CANCEL_UNCLAIMED,
            subject_id=item.pk,
            key=movement_key(cancel_key_base(item.pk), attempt),
            amount=Money(item.amount_minor, item.currency),
        )
        audit_record(actor=actor, action="payouts.item.cancel_unclaimed", obj=item, after={"key": movement.key})
    return movement


def items_cancel_unclaimed_due(*, now: Any = None, limit: int = 200) -> int:
    """Beat job: cancel every PayPal item unclaimed for the waiting period that has no cancel under way.

    An item whose cancel PayPal refused is tried again (a new key) only CANCEL_RETRY_AFTER later."""
    now = now or timezone.now()
    blocking = MoneyMovement.objects.filter(operation=OPERATION_CANCEL_UNCLAIMED, subject_id=OuterRef("pk")).filter(
        ~Q(status=MoneyMovement.Status.DECLINED) | Q(resolved_at__gt=now - CANCEL_RETRY_AFTER)
    )
    due = (
        PayoutItem.objects.filter(
            status=PayoutItem.Status.UNCLAIMED,
            updated_at__lte=now - _unclaimed_for(),
            batch__provider=PayoutBatch.Provider.PAYPAL,
        )
        .exclude(provider_item_id="")
        .exclude(Exists(blocking))
        .order_by("updated_at")
    )
    started = 0
    for item_pk in list(due.values_list("pk", flat=True)[:limit]):
        try:
            movement = _cancel_intent(item_pk, actor=None)
            if movement is not None and not movement.sends:
                movement_run(movement)
                started += 1
        except AppError as error:
            log.error("payouts.cancel_unclaimed_failed", item=item_pk, error=error.message)
    return started
