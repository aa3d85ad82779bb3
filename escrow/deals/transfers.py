"""The seller's transfer (Stripe Connect, `transfer_group` escrow-<id>) and its retries.

- Each attempt is one money movement (`escrow.transfer`) under its own key: `escrow:{id}:transfer` first,
  then `escrow:{id}:transfer:{n}`. A new attempt only follows a KNOWN decline (`transfer_failed`), on the
  business schedule 1 h, 2 h, 4 h, ... (ESCROW_TRANSFER_RETRY_BASE, ESCROW_TRANSFER_MAX_ATTEMPTS), then a
  staff alert and 'Retry transfer now'.
- An attempt whose outcome is unknown is never replaced: the protocol's sweeper (or staff's retry, which
  then only asks) looks it up by `transfer_group` and key (find_transfer) before anything is sent again.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, ResourceLocked
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from escrow.deals.common import TRANSFER, Status, deal_get, deal_lock, holder, next_attempt_key, refused
from escrow.models import EscrowDeal
from providers.models import MoneyMovement
from providers.protocol import movement_latest, movement_record, movement_run, movement_sync


def transfer_intent_record(deal: EscrowDeal) -> MoneyMovement:
    """The next transfer attempt's intent; in the caller's transaction, with the deal locked."""
    attempt, key = next_attempt_key(deal.pk, TRANSFER)
    EscrowDeal.objects.filter(pk=deal.pk).update(
        transfer_attempts=attempt, next_transfer_at=None, updated_at=timezone.now()
    )
    deal.transfer_attempts = attempt
    amount = Money(deal.seller_net_minor, deal.currency)
    return movement_record(operation=TRANSFER, subject_id=deal.pk, key=key, amount=amount)


def deal_transfer_retry(*, deal_id: int, actor: AbstractBaseUser | None = None) -> EscrowDeal:
    """The hourly job (actor None) or staff ('retry now'): an attempt whose outcome is unknown is looked up
    (never replaced); after a known decline a new attempt is sent under a new key."""
    if actor is not None:
        require_permission(actor, "escrow.retry_transfer_escrowdeal")
    deal_get(deal_id=deal_id)
    with deal_lock(deal_id, holder(actor, "escrow.retry_transfers"), "retrying an escrow transfer"):
        deal = deal_get(deal_id=deal_id)
        if deal.status not in (Status.RELEASED, Status.TRANSFER_FAILED):
            raise refused(deal.pk, "retry the transfer of")
        if actor is not None:
            before = {"status": deal.status, "transfer_attempts": deal.transfer_attempts}
            audit_record(actor=actor, action="escrow.deal.transfer_retry", obj=deal, before=before)
        latest = movement_latest(operation=TRANSFER, subject_id=deal.pk)
        if latest is not None and latest.status in MoneyMovement.OPEN:
            movement_sync(movement_id=latest.pk, force=True)
            return deal_get(deal_id=deal.pk)
        with transaction.atomic():
            deal = deal_get(deal_id=deal_id, lock=True)
            if deal.status not in (Status.RELEASED, Status.TRANSFER_FAILED):
                raise refused(deal.pk, "retry the transfer of")
            movement = transfer_intent_record(deal)
        movement_run(movement)
        return deal_get(deal_id=deal.pk)


def deal_transfers_retry_due(*, now: datetime | None = None, limit: int = 200) -> int:
    """The hourly job: a new attempt for every declined transfer whose backoff is over; returns how many."""
    due = EscrowDeal.objects.filter(
        status=Status.TRANSFER_FAILED, next_transfer_at__lte=now or timezone.now()
    ).order_by("next_transfer_at", "pk")
    sent = 0
    for deal_id in list(due.values_list("pk", flat=True)[:limit]):
        try:
            deal_transfer_retry(deal_id=deal_id)
        except (ResourceLocked, Conflict):
            continue  # someone else is on it
        sent += 1
    return sent
