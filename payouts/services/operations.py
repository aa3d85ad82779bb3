"""The payout recipes for the money-moving protocol (providers.protocol): what each call is, how it is looked up,
and what each outcome does to the batch, its items and the ledger. The engine does the rest: the send through
the breaker and the retry policy, recording the outcome once, the sweeper and the one staff alert.

| operation               | subject      | key                                | look-up                               |
|-------------------------|--------------|------------------------------------|---------------------------------------|
| payout.paypal_batch     | PayoutBatch  | sender_batch_id                    | none: PayPal has no GET by it (below) |
| payout.stripe_transfer  | PayoutItem   | payout-item:{id}:transfer          | find_transfer(transfer_group, key)    |
| payout.cancel_unclaimed | PayoutItem   | payout-item:{id}:cancel[:attempt]  | get_item: RETURNED done, UNCLAIMED not|

- PayPal batch: PayPal accepting the batch (201 Pending, or a re-used sender_batch_id answered with the batch it
  already has) is the movement's success: the batch exists at PayPal; its items are then followed by webhooks
  and the batch-items sync (payouts.services.track). Without a look-up the engine re-sends the same
  sender_batch_id only inside PayPal's 30-day window and trusts only a positive answer; past it nothing is sent
  and the movement ends in the staff alert. A refusal of a re-send (5xx, 429, a duplicate without a link, any
  4xx) never denies the batch; only a refusal of the first send (known not sent) does, and only then can a
  retry batch (a new sender_batch_id) pay its winners.
- Stripe transfer: an unknown transfer is found by its key in the batch's transfer group before anything is
  sent again; a refused re-send never makes the item FAILED.
- Unclaimed cancel: PayPal's cancel takes no idempotency key, so the engine never repeats it by itself
  (`retry_safe` is False); a later attempt always looks the item up first.

Ledger postings happen through the items (see settle.py): a transfer's success posts the item's hold, its
decline voids it; an accepted batch posts nothing until its items succeed; a denied batch voids every hold;
a cancelled unclaimed item (RETURNED before it was paid) voids its hold.
"""

from __future__ import annotations

import structlog
from django.utils import timezone

from payouts.models import (
    OPERATION_CANCEL_UNCLAIMED,
    OPERATION_PAYPAL_BATCH,
    OPERATION_STRIPE_TRANSFER,
    PayoutBatch,
    PayoutItem,
)
from payouts.services.alerts import batch_denied_alert
from payouts.services.settle import ItemUpdate, item_apply_status, items_apply_statuses
from payouts.services.track import batch_progress
from providers.base import Absent, Declined, LookupResult, Pending, ProviderResult, Succeeded, Unknown, found_failed
from providers.models import MoneyMovement
from providers.paypal.client import PayoutItemRequest, PayPalClient
from providers.protocol import FollowUps, Operation, operation_register
from providers.stripe.client import stripe_client

log = structlog.get_logger(__name__)

ALREADY_CANCELLED = "item_already_cancelled"  # PayPal's error name, lower-cased by the client


def transfer_key(item_pk: int) -> str:
    return f"payout-item:{item_pk}:transfer"


def cancel_key_base(item_pk: int) -> str:
    return f"payout-item:{item_pk}:cancel"


def _item(movement: MoneyMovement) -> PayoutItem:
    return PayoutItem.objects.select_related("batch").get(pk=movement.subject_id)


class PayPalBatchCreate(Operation):
    """Create the batch at PayPal under its sender_batch_id (the movement's key)."""

    name = OPERATION_PAYPAL_BATCH
    provider = "paypal"
    method = "payouts.create"

    def send(self, movement: MoneyMovement) -> ProviderResult:
        batch = PayoutBatch.objects.get(pk=movement.subject_id)
        fields = ("receiver", "amount_minor", "currency", "sender_item_id", "recipient_type")
        items = [
            PayoutItemRequest(**dict(zip(fields, row, strict=True)))
            for row in batch.items.order_by("id").values_list(*fields)
        ]
        with PayPalClient() as paypal:
            result = paypal.create_batch(sender_batch_id=movement.key, items=items)
        if isinstance(result, Pending):  # accepted now, or named as the batch PayPal already has: it exists
            return Succeeded(reference=result.reference, status=result.status, raw=result.raw)
        return result

    # look_up: None. PayPal has no GET by sender_batch_id; the engine re-sends the same id inside the window.

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        batch_id = movement.subject_id
        PayoutBatch.status_move(
            batch_id,
            PayoutBatch.Status.SUBMITTED,
            sources=[PayoutBatch.Status.SUBMITTING],
            provider_batch_id=result.reference,
            failure_reason="",
        )
        PayoutItem.objects.filter(batch_id=batch_id, status=PayoutItem.Status.NEW).update(
            status=PayoutItem.Status.PENDING, updated_at=timezone.now()
        )
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        """Known not created (the first send was refused): every item ends DENIED and its hold is released."""
        batch_id = movement.subject_id
        reason = result.reason[:255]
        if PayoutBatch.status_move(
            batch_id, PayoutBatch.Status.DENIED, sources=[PayoutBatch.Status.SUBMITTING], failure_reason=reason
        ):
            new_items = PayoutItem.objects.filter(batch_id=batch_id, status=PayoutItem.Status.NEW)
            denied = PayoutItem.Status.DENIED
            items_apply_statuses(
                updates=[ItemUpdate(pk, denied, error=reason) for pk in new_items.values_list("pk", flat=True)]
            )
            batch_denied_alert(batch_id=batch_id, reason=reason)
        return None

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        log.warning("payouts.batch_unknown", sender_batch_id=movement.key, reason=reason)

    def escalation_action(self, movement: MoneyMovement) -> str:
        return (
            f"PayPal cannot be asked by sender_batch_id: find batch {movement.key} in PayPal's Payouts activity. "
            "Whatever you find, never prepare a retry batch for these winners before this movement is resolved."
        )


class StripeTransfer(Operation):
    """One Connect transfer per item, in the batch's transfer group, keyed by the item."""

    name = OPERATION_STRIPE_TRANSFER
    provider = "stripe"
    method = "transfers.create"

    def send(self, movement: MoneyMovement) -> ProviderResult:
        item = _item(movement)
        return stripe_client().create_transfer(
            amount_minor=item.amount_minor,
            currency=item.currency,
            destination=item.receiver,
            idempotency_key=movement.key,
            transfer_group=item.batch.sender_batch_id,
        )

    def look_up(self, movement: MoneyMovement) -> LookupResult | None:
        item = _item(movement)
        return stripe_client().find_transfer(transfer_group=item.batch.sender_batch_id, idempotency_key=movement.key)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        item_apply_status(
            item_pk=movement.subject_id, status=PayoutItem.Status.SUCCESS, provider_item_id=result.reference
        )
        if result.status == "reversed":  # found already taken back: paid, then the money came back
            item_apply_status(item_pk=movement.subject_id, status=PayoutItem.Status.REVERSED)
        batch_progress(batch_id=_item(movement).batch_id)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        item_apply_status(item_pk=movement.subject_id, status=PayoutItem.Status.FAILED, error=result.reason)
        batch_progress(batch_id=_item(movement).batch_id)
        return None


class CancelUnclaimed(Operation):
    """Take back an item its receiver left unclaimed; PayPal returns the money to us (the item turns RETURNED)."""

    name = OPERATION_CANCEL_UNCLAIMED
    provider = "paypal"
    method = "payouts_item.cancel"

    def retry_safe(self, movement: MoneyMovement) -> bool:
        return False  # PayPal's cancel takes no idempotency key: never repeated without a look-up first

    def send(self, movement: MoneyMovement) -> ProviderResult:
        item = _item(movement)
        with PayPalClient() as paypal:
            result = paypal.cancel_item(item.provider_item_id)
        if isinstance(result, Declined) and result.code == ALREADY_CANCELLED:  # cancelled before: the money is back
            return Succeeded(reference=item.provider_item_id, status=PayoutItem.Status.RETURNED, raw=result.raw)
        if isinstance(result, Succeeded):
            return _cancel_outcome(result)
        return result

    def look_up(self, movement: MoneyMovement) -> LookupResult | None:
        item = _item(movement)
        with PayPalClient() as paypal:
            found = paypal.get_item(item.provider_item_id)
        if not isinstance(found, Succeeded):
            return Unknown(reason=f"PayPal could not show item {item.provider_item_id}: {found}")
        if found.status == PayoutItem.Status.UNCLAIMED:
            return Absent(reason=f"item {item.provider_item_id} is still unclaimed: not cancelled")
        return _cancel_outcome(found)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        item_apply_status(item_pk=movement.subject_id, status=PayoutItem.Status.RETURNED)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        status = str(result.raw.get("transaction_status", ""))
        if status:  # the item moved on at PayPal (claimed, say): follow it
            item_apply_status(item_pk=movement.subject_id, status=status)
        return None


def _cancel_outcome(found: Succeeded) -> Succeeded | Declined:
    """An item as PayPal shows it: RETURNED is cancelled; any other status (claimed, ...) is not and never will be."""
    if found.status == PayoutItem.Status.RETURNED:
        return found
    return found_failed(f"item {found.reference} is {found.status}, not cancelled", raw=found.raw)


def register_payout_operations() -> None:
    for operation in (PayPalBatchCreate(), StripeTransfer(), CancelUnclaimed()):
        operation_register(operation)
