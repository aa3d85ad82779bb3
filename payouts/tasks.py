"""Celery entry points for payouts: thin and re-entrant. Money movements are followed by the protocol's
sweeper (providers.sweep_money_movements); these only follow item statuses and start unclaimed cancels."""

from celery import shared_task

from payouts.services import batch_sync, batches_sync_due, items_cancel_unclaimed_due


@shared_task(name="payouts.sync_batches")
def sync_batches_task() -> int:
    """Follow the items of every batch still being paid (PayPal reads; no money moves)."""
    return batches_sync_due()


@shared_task(name="payouts.sync_batch_items", acks_late=True)
def sync_batch_items_task(batch_pk: int) -> str:
    """A nudge (a batch webhook): follow this batch's items now."""
    return batch_sync(batch_id=batch_pk).status


@shared_task(name="payouts.cancel_unclaimed_items")
def cancel_unclaimed_items_task() -> int:
    """Cancel PayPal items left unclaimed for settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS (payout.cancel_unclaimed)."""
    return items_cancel_unclaimed_due()
