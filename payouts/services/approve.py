"""Approve: maker-checker on a prepared batch.

Invariants kept: a batch above PAYOUT_APPROVAL_THRESHOLD_MINOR is prepared as `prepared` and needs a second
staff user; the approver is checked against the preparer under the batch's row lock, and the move to
`approved` is the model's one conditional status move. Nothing is posted to the ledger here.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.errors import InvalidStateTransition, PermissionDenied
from core.permissions import require_permission
from core.services import audit_record
from payouts.models import PayoutBatch
from payouts.services.prepare import batch_get


class MakerCheckerViolation(PermissionDenied):
    code = "maker_checker"
    default_user_message = "The person who prepared this batch cannot also approve it."
    default_action_required = "Ask another finance approver to approve the batch."


@transaction.atomic
def batch_approve(*, batch_id: int, approver: AbstractBaseUser) -> PayoutBatch:
    require_permission(approver, "payouts.approve_payoutbatch")
    batch = batch_get(batch_id, lock=True)
    if approver.pk == batch.prepared_by_id:
        raise MakerCheckerViolation(f"{approver.get_username()} prepared {batch.sender_batch_id}")
    moved = PayoutBatch.status_move(
        batch.pk, PayoutBatch.Status.APPROVED, sources=[PayoutBatch.Status.PREPARED], approved_by=approver
    )
    if not moved:
        raise InvalidStateTransition(
            f"batch {batch.sender_batch_id} is {batch.status}",
            user_message=f"This batch is {batch.status} and needs no approval.",
            action_required="Reload the batch to see its current state.",
        )
    batch.refresh_from_db()
    audit_record(actor=approver, action="payouts.batch.approve", obj=batch)
    return batch
