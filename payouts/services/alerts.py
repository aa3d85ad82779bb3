"""Staff alerts for payouts, one per batch and cause (core.alerts; what to do: docs/runbook.md).

- `payout:batch:<id>:denied` (critical): the provider refused the whole batch (known not created): nobody in
  it was paid and every hold was released. Resolved when a retry batch is prepared for its winners.
- `payout:batch:<id>:unpaid` (warning): items of the batch ended unpaid (FAILED, BLOCKED, RETURNED); each
  one more counts one more occurrence. Resolved when a retry batch is prepared for them.
- `payout:batch:<id>:taken-back` (critical): paid items whose money came back (REFUNDED, REVERSED): the
  ledger reversed the payment; a person decides what the winner is owed. Resolved by staff.
A payout movement whose outcome cannot be found out has the protocol's own alert (`movement:<key>`).
"""

from __future__ import annotations

from core.alerts import alert_raise, alert_resolve
from core.models import Alert
from core.money import Money
from payouts.models import PayoutBatch, PayoutItem

UNPAID = (PayoutItem.Status.FAILED, PayoutItem.Status.BLOCKED, PayoutItem.Status.RETURNED)
TAKEN_BACK = PayoutItem.TAKEN_BACK


def batch_alert_key(batch_id: int, cause: str) -> str:
    return f"payout:batch:{batch_id}:{cause}"


def batch_denied_alert(*, batch_id: int, reason: str) -> None:
    batch = PayoutBatch.objects.get(pk=batch_id)
    alert_raise(
        key=batch_alert_key(batch.pk, "denied"),
        title=f"Payout batch {batch.sender_batch_id} ({Money(batch.total_minor, batch.currency)}, "
        f"{batch.item_count} payouts) was refused by {batch.get_provider_display()}",
        detail=f"Nothing was paid and every reservation was released. The provider said: {reason}",
        action_required=f"Fix the cause, then select batch {batch.sender_batch_id} in /admin/payouts/payoutbatch/ "
        "and run 'Retry the failed items of the selected batches' to pay its winners in a new batch.",
        severity=Alert.Severity.CRITICAL,
    )


def item_alert(item: PayoutItem) -> None:
    """An item that just ended unpaid or was taken back: count it on its batch's alert (in the caller's transaction)."""
    if item.status in UNPAID:
        _alert_unpaid(item)
    elif item.status in TAKEN_BACK:
        _alert_taken_back(item)


def _alert_unpaid(item: PayoutItem) -> None:
    batch = item.batch
    unpaid = PayoutItem.objects.filter(batch_id=batch.pk, status__in=UNPAID)
    alert_raise(
        key=batch_alert_key(batch.pk, "unpaid"),
        title=f"Payout batch {batch.sender_batch_id}: {unpaid.count()} payout(s) not paid",
        detail=f"Latest: {item.sender_item_id} to {item.receiver} ({Money(item.amount_minor, item.currency)}) is "
        f"{item.status}: {item.error or 'no reason given'}. Their reservations were released.",
        action_required=f"Check the items (/admin/payouts/payoutitem/?batch__id__exact={batch.pk}) and fix the "
        "receiver details if needed; then select the batch in /admin/payouts/payoutbatch/ and run 'Retry the "
        "failed items of the selected batches'.",
    )


def _alert_taken_back(item: PayoutItem) -> None:
    batch = item.batch
    alert_raise(
        key=batch_alert_key(batch.pk, "taken-back"),
        title=f"Payout batch {batch.sender_batch_id}: money came back from paid payouts",
        detail=f"Latest: {item.sender_item_id} to {item.receiver} ({Money(item.amount_minor, item.currency)}) was "
        f"paid, then {item.status}. The ledger reversed the payment; the winner is not paid.",
        action_required=f"Find out why at {batch.get_provider_display()} and decide what the winner is owed; "
        f"the items are in /admin/payouts/payoutitem/?batch__id__exact={batch.pk}. Resolve this alert when done.",
        severity=Alert.Severity.CRITICAL,
    )


def batch_alerts_resolve_retried(*, batch_id: int) -> None:
    """A retry batch now pays the winners this batch did not: its denied and unpaid alerts are dealt with."""
    for cause in ("denied", "unpaid"):
        alert_resolve(key=batch_alert_key(batch_id, cause), reason="a retry batch was prepared for its winners")
