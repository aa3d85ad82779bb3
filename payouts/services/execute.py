"""Execute: send an approved batch through the money-moving protocol, once.

Invariants kept (DESIGN.md section 5):
- the batch's move to `submitting` and the money movements' intents (the PayPal batch create keyed by its
  sender_batch_id, or one Stripe transfer per item keyed `payout-item:{id}:transfer`) commit together, under
  the cycle's processing lock, before any call; the calls are made by `movement_run` after that commit;
- the outcome is recorded by the operations' hooks (payouts.services.operations); while a movement is open the
  batch stays `submitting`, its items NEW, and nothing can prepare a retry of its winners;
- an open movement is followed by the protocol's sweeper alone: nothing here sends anything again.

Nothing is posted to the ledger here: see track.py for what each item's outcome posts.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.errors import InvalidStateTransition
from core.locks import processing_lock
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from payouts.models import OPERATION_PAYPAL_BATCH, OPERATION_STRIPE_TRANSFER, PayoutBatch, PayoutItem
from payouts.services.operations import transfer_key
from payouts.services.prepare import batch_get, cycle_prepare
from providers.models import MoneyMovement
from providers.protocol import movement_record, movement_run


def batch_execute(*, batch_id: int, actor: AbstractBaseUser) -> PayoutBatch:
    """Send an approved batch to its provider, once: record the intent, commit, then call."""
    require_permission(actor, "payouts.execute_payoutbatch")
    batch = batch_get(batch_id)
    with processing_lock(key=f"payout-cycle:{batch.cycle_id}", holder=actor.get_username(), reason="executing"):
        with transaction.atomic():
            if not PayoutBatch.status_move(
                batch.pk, PayoutBatch.Status.SUBMITTING, sources=[PayoutBatch.Status.APPROVED]
            ):
                batch.refresh_from_db()
                raise InvalidStateTransition(
                    f"batch {batch.sender_batch_id} is {batch.status}",
                    user_message=f"This batch is {batch.status}; it can only be sent once it is approved.",
                    action_required="Approve it first, or reload it: it may already have been sent.",
                    details={"status": batch.status},
                )
            movements = _record_intents(batch)
            audit_record(actor=actor, action="payouts.batch.execute", obj=batch)
        for movement in movements:
            movement_run(movement)
    batch.refresh_from_db()
    return batch


def _record_intents(batch: PayoutBatch) -> list[MoneyMovement]:
    if batch.provider == PayoutBatch.Provider.PAYPAL:
        amount = Money(batch.total_minor, batch.currency)
        movement = movement_record(
            operation=OPERATION_PAYPAL_BATCH, subject_id=batch.pk, key=batch.sender_batch_id, amount=amount
        )
        return [movement]
    items = batch.items.filter(status=PayoutItem.Status.NEW).order_by("pk")
    return [
        movement_record(
            operation=OPERATION_STRIPE_TRANSFER,
            subject_id=item.pk,
            key=transfer_key(item.pk),
            amount=Money(item.amount_minor, item.currency),
        )
        for item in items
    ]


def cycle_disburse(*, cycle_id: int, actor: AbstractBaseUser) -> list[PayoutBatch]:
    """Prepare the cycle, then send every batch that needs no further approval."""
    batches = cycle_prepare(cycle_id=cycle_id, actor=actor)
    return [
        batch_execute(batch_id=batch.pk, actor=actor) if batch.status == PayoutBatch.Status.APPROVED else batch
        for batch in batches
    ]
